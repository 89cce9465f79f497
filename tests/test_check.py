"""`jcnn.check_vjp` catches and localises planted bugs in small custom_vjp rules, and passes
right ones. Each planted rule is a correct rule with one named mistake switched on."""
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jcnn import reference
import jcnn
from jcnn.check import MAX_JACOBIAN_ENTRIES, CheckFailed, check_vjp, kinked

NHWC = ("NHWC", "HWIO", "NHWC")


# --- planted rules ---------------------------------------------------------------------------

@partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv_same(x, w, bug=None):
    """3x3 stride-1 conv with padding 1; `bug` in {None, "unflipped", "pad"}."""
    return lax.conv_general_dilated(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def _conv_same_fwd(x, w, bug):
    return conv_same(x, w, bug), (x, w)


def _conv_same_bwd(bug, res, g):
    x, w = res
    # dX = G correlated with the kernel flipped in space and transposed in channels, padded
    # by kh - 1 - p = 1; the "pad" bug pads by 0 and zero-fills the lost border.
    kernel = jnp.swapaxes(w if bug == "unflipped" else w[::-1, ::-1], 2, 3)
    pad = 0 if bug == "pad" else 1
    dx = lax.conv_general_dilated(g, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                  dimension_numbers=NHWC)
    dx = jnp.pad(dx, ((0, 0), (1 - pad, 1 - pad), (1 - pad, 1 - pad), (0, 0)))
    # dW[i,j,c,o] = sum_{n,y,x} Xpad[n, y+i, x+j, c] G[n,y,x,o]: batch and channels swap roles
    dw = lax.conv_general_dilated(x, g, (1, 1), ((1, 1), (1, 1)),
                                  dimension_numbers=("CHWN", "IHWO", "HWNC"))
    return dx, dw


conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


def conv_same_ref(x, w):
    return reference.conv2d(x, w, padding=1)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def cross_entropy(logits, labels, bug=None):
    """Mean softmax cross-entropy; `bug="no_mean"` forgets the 1/N in the backward."""
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))


def _cross_entropy_fwd(logits, labels, bug):
    return cross_entropy(logits, labels, bug), (logits, labels)


def _cross_entropy_bwd(bug, res, g):
    logits, labels = res
    n = 1 if bug == "no_mean" else logits.shape[0]
    onehot = jax.nn.one_hot(labels, logits.shape[1], dtype=logits.dtype)
    return g * (jax.nn.softmax(logits) - onehot) / n, None


cross_entropy.defvjp(_cross_entropy_fwd, _cross_entropy_bwd)


CORNERS = ((0, 0), (0, 1), (1, 0), (1, 1))  # a 2x2 window in row-major order


def _windows(x):
    """(N, H, W, C) -> (N, H/2, W/2, C, 4): every 2x2 window's elements, in row-major order."""
    return jnp.stack([x[:, i::2, j::2] for i, j in CORNERS], axis=-1)


def _unwindows(win):
    """The inverse of `_windows`."""
    n, h2, w2, c, _ = win.shape
    out = jnp.zeros((n, 2 * h2, 2 * w2, c), win.dtype)
    for k, (i, j) in enumerate(CORNERS):
        out = out.at[:, i::2, j::2].set(win[..., k])
    return out


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def max_pool(x, bug=None):
    """2x2 max pool; the gradient goes to the first maximum, or (`bug="ties"`) to all."""
    return _windows(x).max(axis=-1)


def _max_pool_fwd(x, bug):
    return max_pool(x, bug), x


def _max_pool_bwd(bug, x, g):
    win = _windows(x)
    hit = win == win.max(axis=-1, keepdims=True)
    if bug != "ties":
        hit = jax.nn.one_hot(jnp.argmax(win, axis=-1), 4, dtype=bool)
    return (_unwindows(jnp.where(hit, g[..., None], 0).astype(x.dtype)),)


max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_ref(x):
    return reference.max_pool2d(x, 2)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def sigmoid(x, bug=None):
    """`bug="frozen"` computes s(1-s) under stop_gradient: first order right, second wrong;
    `bug="float32"` / `"float64"`: the cotangent comes back in that dtype, not the primal's."""
    return 1 / (1 + jnp.exp(-x))


def _sigmoid_fwd(x, bug):
    return sigmoid(x, bug), x


def _sigmoid_bwd(bug, x, g):
    s = 1 / (1 + jnp.exp(-x))
    slope = lax.stop_gradient(s * (1 - s)) if bug == "frozen" else s * (1 - s)
    dx = g * slope
    return (dx.astype(bug) if bug in ("float32", "float64") else dx,)


sigmoid.defvjp(_sigmoid_fwd, _sigmoid_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(1,))
def linear(x, bug=False):
    """x @ A for a fixed A (16, 256); `bug=True` perturbs one Jacobian entry, A[5, 37], by
    6 x rtol(float32) x max|A|: below what random cotangents resolve, above Jacobian mode."""
    return x @ LINEAR_A


def _linear_fwd(x, bug):
    return linear(x, bug), None


def _linear_bwd(bug, _, g):
    a = LINEAR_A.copy()
    if bug:
        a[5, 37] += 6 * 2e-4 * np.abs(LINEAR_A).max()
    return (g @ a.T,)


linear.defvjp(_linear_fwd, _linear_bwd)
LINEAR_A = np.random.default_rng(1).standard_normal((16, 256)).astype(np.float32)


# --- helpers ---------------------------------------------------------------------------------

def normal(rng, shape, dtype=jnp.float64):
    return jnp.asarray(rng.standard_normal(shape), dtype)


def conv_args(rng, dtype):
    return normal(rng, (2, 5, 5, 3), dtype), normal(rng, (3, 3, 3, 2), dtype)


def ce_args(rng, dtype):
    return normal(rng, (6, 4), dtype), jnp.asarray(rng.integers(0, 4, 6), jnp.int32)


def tied_input(rng, dtype):
    """(1, 4, 6, 2) with two windows whose maximum is tied."""
    x = rng.standard_normal((1, 4, 6, 2))
    x[0, 0, 0, 0] = x[0, 0, 1, 0] = 3.0  # window (0, 0), channel 0: both of its top row
    x[0, 2, 3, 1] = x[0, 3, 3, 1] = 2.5  # window (1, 1), channel 1: its right column
    return jnp.asarray(x, dtype)


def failed(call):
    """The report of a check that must fail."""
    with pytest.raises(CheckFailed) as info:
        call()
    return info.value.report


# planted first-order bugs: (id, rule with the bug, the same rule right, reference, args, arg)
FIRST_ORDER_BUGS = [
    ("unflipped-kernel", lambda x, w: conv_same(x, w, "unflipped"), conv_same, conv_same_ref,
     conv_args, "x"),
    ("padding-off-by-one", lambda x, w: conv_same(x, w, "pad"), conv_same, conv_same_ref,
     conv_args, "x"),
    ("missing-1/N", lambda logits, labels: cross_entropy(logits, labels, "no_mean"),
     cross_entropy, reference.softmax_cross_entropy, ce_args, "logits"),
]
DTYPES = [jnp.float64, jnp.float32]


# --- right rules pass ------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name, op, make", [
    ("conv2d-s2-same-bias",
     lambda x, w, b: reference.conv2d(x, w, b, stride=2, padding="SAME"),
     lambda r, d: (normal(r, (2, 6, 6, 3), d), normal(r, (3, 3, 3, 4), d), normal(r, (4,), d))),
    ("max_pool2d-3-2-1", lambda x: reference.max_pool2d(x, 3, 2, 1),
     lambda r, d: (normal(r, (2, 7, 7, 3), d),)),
    ("batch_norm", reference.batch_norm,
     lambda r, d: (normal(r, (4, 3, 3, 2), d), normal(r, (2,), d), normal(r, (2,), d))),
], ids=lambda v: v if isinstance(v, str) else "")
def test_reference_ops_pass_against_themselves(name, op, make, dtype, rng):
    report = check_vjp(op, op, *make(rng, dtype), order=2 if dtype == jnp.float64 else 1)
    assert report.ok and {r.check for r in report.rows} >= {"output", "vjp", "fd", "taylor"}


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_right_planted_rules_pass(dtype, rng):
    check_vjp(conv_same, conv_same_ref, *conv_args(rng, dtype))
    check_vjp(cross_entropy, reference.softmax_cross_entropy, *ce_args(rng, dtype))
    check_vjp(sigmoid, reference.sigmoid, normal(rng, (3, 4), dtype), order=2)


def test_integer_labels_and_prng_keys_are_skipped(rng, key):
    report = check_vjp(cross_entropy, reference.softmax_cross_entropy, *ce_args(rng, jnp.float64))
    assert report.row("skip", "labels").note == "int32: held fixed"
    dropout = lambda x, key: reference.dropout(x, 0.5, key)  # noqa: E731
    report = check_vjp(dropout, dropout, normal(rng, (3, 4)), key)
    assert report.row("skip", "key").ok and [r.argument for r in report.rows if
                                             r.check == "vjp"] == ["x (arg 0)"]
    with pytest.raises(TypeError, match=r"labels \(arg 1\) is int32"):
        check_vjp(cross_entropy, None, *ce_args(rng, jnp.float64), argnums=(1,))


# --- planted bugs are caught and localised ---------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_unflipped_kernel_caught_on_x_only(dtype, rng):
    bad = lambda x, w: conv_same(x, w, "unflipped")  # noqa: E731
    report = failed(lambda: check_vjp(bad, conv_same_ref, *conv_args(rng, dtype)))
    assert {(r.check, r.argument) for r in report.failures} == {
        ("vjp", "x (arg 0)"), ("fd", "x (arg 0)"), ("taylor", "x (arg 0)")}
    assert "worst at cotangent" in report.row("vjp", "x").where


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_padding_off_by_one_localised_to_the_border(dtype, rng):
    bad = lambda x, w: conv_same(x, w, "pad")  # noqa: E731
    row = failed(lambda: check_vjp(bad, conv_same_ref, *conv_args(rng, dtype))).row("vjp", "x")
    assert "only at the border (rows 0, 4; columns 0, 4), interior clean" in row.where
    assert row.picture.splitlines()[1:] == ["  #####"] + ["  #...#"] * 3 + ["  #####"]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_missing_mean_caught_everywhere(dtype, rng):
    bad = lambda logits, labels: cross_entropy(logits, labels, "no_mean")  # noqa: E731
    report = failed(lambda: check_vjp(bad, reference.softmax_cross_entropy, *ce_args(rng, dtype)))
    assert "every element (24)" in report.row("vjp", "logits").where
    assert report.row("skip", "labels").ok
    assert report.row("vjp", "logits").max_rel == pytest.approx(5 / 6, rel=1e-3)  # 6x too big


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_double_counted_tie_localised_to_ties(dtype, rng):
    x = tied_input(rng, dtype)
    report = check_vjp(max_pool, max_pool_ref, x)  # the right rule passes, even at ties ...
    assert report.row("taylor", "x").note.endswith("kink")  # ... where only autodiff can judge
    bad = lambda x: max_pool(x, "ties")  # noqa: E731
    row = failed(lambda: check_vjp(bad, max_pool_ref, x)).row("vjp", "x")
    assert "2 of 48 elements beyond tolerance: only where the primal has tied values" in row.where


@pytest.mark.parametrize("primal, returned", [("float64", "float32"), ("float32", "float64")])
def test_wrong_cotangent_dtype_reported(primal, returned, rng):
    bad = lambda x: sigmoid(x, returned)  # noqa: E731
    row = failed(lambda: check_vjp(bad, reference.sigmoid, normal(rng, (3, 4), primal))).row(
        "vjp", "x")
    assert row.note == "wrong dtype"
    assert f"the backward rule returns {returned} for a {primal} argument" in row.where


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_wrong_second_order_caught_by_order_2_only(dtype, rng):
    bad = lambda x: sigmoid(x, "frozen")  # noqa: E731
    x = normal(rng, (3, 4), dtype)
    assert check_vjp(bad, reference.sigmoid, x).ok
    report = failed(lambda: check_vjp(bad, reference.sigmoid, x, order=2))
    assert {r.check for r in report.failures} == {"vjp2", "fd2", "taylor2"}
    assert report.row("taylor", "x").order > 1.8 and report.row("taylor2", "x").order < 1.3


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("name, bad, good, ref, make, arg", FIRST_ORDER_BUGS,
                         ids=[b[0] for b in FIRST_ORDER_BUGS])
def test_taylor_order_tells_right_from_wrong_without_a_reference(name, bad, good, ref, make,
                                                                 arg, dtype, rng):
    args = make(rng, dtype)
    right = check_vjp(good, None, *args).row("taylor", arg)
    wrong = failed(lambda: check_vjp(bad, None, *args)).row("taylor", arg)
    assert right.order > 1.8 and 0.8 < wrong.order < 1.3
    assert "shrinks like h^1." in wrong.where


# --- modes and precisions --------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: d.__name__)
def test_low_precision_compared_with_float64(dtype, rng):
    args = conv_args(rng, dtype)
    report = check_vjp(conv_same, conv_same_ref, *args)
    assert report.dtype == dtype.__name__ and "compared with the float64 computation" in str(report)
    assert {r.check for r in report.rows} == {"output", "vjp"}  # no FD, no Taylor
    bad = lambda x, w: conv_same(x, w, "pad")  # noqa: E731
    assert "only at the border" in failed(lambda: check_vjp(bad, conv_same_ref, *args)).row(
        "vjp", "x").where


@pytest.mark.parametrize("dtype", [jnp.float16, jnp.bfloat16], ids=lambda d: d.__name__)
def test_low_precision_without_a_reference_checks_the_rule_in_float64(dtype, rng):
    """With no reference, f's low-precision results can only be compared with f's own in
    float64, which a wrong rule passes; its rule is checked there by FD and Taylor instead."""
    args = conv_args(rng, dtype)
    bad = lambda x, w: conv_same(x, w, "unflipped")  # noqa: E731
    report = failed(lambda: check_vjp(bad, None, *args))
    assert report.row("vjp", "x").ok  # the float64 run of the same wrong rule agrees with it
    assert not report.row("fd (float64)", "x").ok and not report.row("taylor (float64)", "x").ok
    assert report.row("fd (float64)", "w").ok and report.row("taylor (float64)", "w").ok
    assert max(len(line) for line in str(report).splitlines()) <= 100
    right = check_vjp(conv_same, None, *args, order=2)
    assert {r.check for r in right.rows} >= {"fd (float64)", "taylor2 (float64)"}


@pytest.mark.parametrize("factor", [1.0, -1.0, 0.0])
def test_float32_round_off_that_drowns_the_step_is_inconclusive_and_float64_decides(factor, rng):
    """f = x + 1e6 in float32: an output ulp (0.0625) swallows the finite-difference step, so
    the FD row passes any rule (Taylor all but a sign flip); they say so, and with no
    reference the rule is checked in float64, where only the right one (factor 1) passes."""
    @jax.custom_vjp
    def shift(x):
        return x + 1e6
    shift.defvjp(lambda x: (x + 1e6, None), lambda _, g: (factor * g,))
    x = normal(rng, (3, 4), jnp.float32)
    report = check_vjp(shift, None, x, raise_on_failure=False)
    fd = report.row("fd", "x")
    assert fd.ok and fd.note == "inconclusive: round-off"
    if factor != -1.0:  # -g doubles the remainder, which the Taylor test sees in float32 too
        assert report.row("taylor", "x").note == "inconclusive: round-off"
    assert any(n.startswith("inconclusive: ") for n in report.notes)
    assert report.ok == (factor == 1.0) == report.row("fd (float64)", "x").ok
    with_ref = check_vjp(shift, lambda x: x + 1e6, x, raise_on_failure=False)
    assert with_ref.ok == (factor == 1.0) and "fd (float64)" not in {r.check for r in with_ref.rows}


def test_numpy_float64_scalars_are_differentiated_like_other_numpy_scalars(rng):
    """np.float64 is a subclass of Python's float: it is an array here all the same."""
    @jax.custom_vjp
    def scale(x, a):
        return x * a
    scale.defvjp(lambda x, a: (x * a, (x, a)), lambda r, g: (g * r[1], -jnp.sum(g * r[0])))
    x = normal(rng, (3, 4))
    for a in (np.float64(2.0), np.float32(2.0)):
        report = failed(lambda: check_vjp(scale, lambda x, a: x * a, x.astype(a.dtype), a))
        assert not report.row("vjp", "a").ok


@pytest.mark.parametrize("kwargs, error, says", [
    (dict(rtol=-1.0), ValueError, "rtol must be finite and >= 0"),
    (dict(atol=float("nan")), ValueError, "atol must be finite and >= 0"),
    (dict(rtol="1e-3"), TypeError, "rtol must be a float or None"),
    (dict(argnums=(0, 0)), ValueError, "argnums names a position twice"),
    (dict(argnums="x"), TypeError, "argnums must hold ints"),
    (dict(argnums=1.0), TypeError, "argnums must be an int or a sequence of ints"),
    (dict(order=True), ValueError, "order must be 1 or 2"),
    (dict(samples=1.5), ValueError, "samples must be an int >= 1"),
])
def test_bad_options_are_refused_naming_them(kwargs, error, says, rng):
    x = normal(rng, (3,))
    with pytest.raises(error, match=f"^check_vjp: {says}"):
        check_vjp(sigmoid, reference.sigmoid, x, **kwargs)


def test_argnums_may_be_one_int_as_in_jax_grad(rng):
    x, y = normal(rng, (3,)), normal(rng, (3,))
    report = check_vjp(lambda x, y: sigmoid(x) * y, lambda x, y: reference.sigmoid(x) * y, x, y,
                       argnums=1)
    assert report.row("skip", "x").ok and report.row("vjp", "y").ok


def test_jacobian_mode_catches_one_wrong_entry_random_cotangents_miss(rng):
    x = normal(rng, (1, 16), jnp.float32)
    bad = lambda x: linear(x, True)  # noqa: E731
    assert check_vjp(bad, lambda x: x @ LINEAR_A, x).ok
    row = failed(lambda: check_vjp(bad, lambda x: x @ LINEAR_A, x, jacobian=True)).row(
        "jacobian", "x")
    assert "worst at output element 0, 37 -> x[0, 5]" in row.where
    assert "a single element" in row.where


def test_jacobian_mode_refuses_large_inputs(rng):
    x, w = normal(rng, (8, 32, 32, 3)), normal(rng, (3, 3, 3, 8))
    with pytest.raises(ValueError, match=f"more than MAX_JACOBIAN_ENTRIES = "
                                         f"{MAX_JACOBIAN_ENTRIES:,}. Use smaller inputs"):
        check_vjp(conv_same, conv_same_ref, x, w, jacobian=True)


def test_forward_mode_refused_with_the_reverse_over_reverse_recipe(rng):
    with pytest.raises(ValueError, match="defines reverse mode only") as info:
        check_vjp(sigmoid, reference.sigmoid, normal(rng, (3,)), mode="fwd")
    assert "hvp = lambda x, v: jax.grad(lambda x: jnp.vdot(grad(x), v))(x)" in str(info.value)


# --- plain errors ----------------------------------------------------------------------------

@pytest.mark.parametrize("ref, says", [
    (lambda x: x[1:], "f returns float64[3] but reference returns float64[2]"),
    (lambda x: x.astype(jnp.float32), "f returns float64[3] but reference returns float32[3]"),
])
def test_different_outputs_said_plainly(ref, says):
    assert says in failed(lambda: check_vjp(lambda x: x, ref, jnp.ones(3))).row(
        "output", "output").where


def test_non_array_argument_named(rng):
    with pytest.raises(TypeError, match=r"w \(arg 1\) is a str, not an array"):
        check_vjp(conv_same, conv_same_ref, normal(rng, (1, 3, 3, 1)), "SAME")


def test_backward_rule_that_raises_becomes_a_failing_row(rng):
    @jax.custom_vjp
    def short(x):
        return 2 * x
    short.defvjp(lambda x: (2 * x, None), lambda _, g: (2 * g[1:],))
    row = failed(lambda: check_vjp(short, lambda x: 2 * x, normal(rng, (3,)))).failures[0]
    assert row.note == "raised ValueError" and "bwd rule" in row.where


# --- the report ------------------------------------------------------------------------------

def test_report_reads_in_100_columns_and_serialises(rng):
    bad = lambda x, w: conv_same(x, w, "pad")  # noqa: E731
    error = pytest.raises(CheckFailed, check_vjp, bad, conv_same_ref, *conv_args(rng, jnp.float64),
                          order=2)
    assert isinstance(error.value, AssertionError) and str(error.value) == str(error.value.report)
    report = error.value.report
    assert max(len(line) for line in str(report).splitlines()) <= 100
    assert json.loads(json.dumps(report.to_dict(), allow_nan=False))["ok"] is False
    with pytest.raises(AttributeError):
        report.ok = True


def test_classification_words():
    from jcnn.check.compare import compare
    want = np.ones((2, 6, 6, 4))
    column = want.copy()
    column[:, :, -1, :] += 1  # only the last column of every row
    channel = want.copy()
    channel[..., 2] *= -1  # one channel
    scattered = want.copy()
    scattered[0, 1, 4, 0] = scattered[1, 3, 0, 2] = scattered[0, 5, 2, 3] = 9
    cases = {"only column 5 (the last of 6)": column, "only channel 2 (1 of 4)": channel,
             "scattered": scattered, "every element (288)": 2 * want}
    for says, got in cases.items():
        assert says in compare(got, want, rtol=1e-9, name="y").where


# --- kinks: exact zeros and ties -------------------------------------------------------------

def test_kinked_rounds_to_a_power_of_two_grid_near_the_rms(rng):
    x = rng.standard_normal((4, 25))
    x /= np.sqrt(np.mean(x ** 2))  # rms 1: the grid is round(4x)/4
    np.testing.assert_array_equal(kinked(x), np.round(4 * x) / 4)
    small = kinked(jnp.asarray(x / 64, jnp.float32))  # rms 1/64: steps of 1/256
    assert small.dtype == jnp.float32
    np.testing.assert_array_equal(small, np.round(256 * (x / 64)) / 256)
    np.testing.assert_array_equal(kinked(np.zeros(3)), np.zeros(3))


@jax.custom_vjp
def relu_tie_half(x):
    """relu whose first-order rule is right (0 at x == 0) but whose forward rule is
    jnp.maximum, which autodiff differentiates as 1/2 at a tie: wrong second order at 0."""
    return jnp.maximum(x, 0.0)


relu_tie_half.defvjp(lambda x: (jnp.maximum(x, 0.0), x), lambda x, g: (g * (x > 0),))


def test_kinks_catch_a_forward_rule_that_is_wrong_at_ties_in_second_order(rng):
    x = jnp.asarray(rng.standard_normal((3, 7)))
    assert check_vjp(relu_tie_half, reference.relu, x, order=2, kinks=False).ok  # no zeros
    with pytest.raises(CheckFailed) as info:
        check_vjp(relu_tie_half, reference.relu, x, order=2, kinks=True)
    assert {(r.check, r.argument) for r in info.value.report.failures} == {
        ("vjp2 (kinks)", "x (arg 0)")}
    assert "tied values" in info.value.report.row("vjp2 (kinks)", "x").where
    # first order alone is right at the kinks
    assert check_vjp(relu_tie_half, reference.relu, x, kinks=True).ok


def test_second_order_differentiates_every_argument_jointly(rng):
    """The bug shows in jax.grad of jax.grad(lambda x, w: sum(relu(x) * w)) w.r.t. (x, w):
    the case check_vjp's second order runs for a two-argument f."""
    x = kinked(rng.standard_normal((3, 7)))
    w = jnp.asarray(rng.standard_normal((3, 7)))
    with pytest.raises(CheckFailed, match="vjp2"):
        check_vjp(lambda x, w: relu_tie_half(x) * w, lambda x, w: reference.relu(x) * w, x, w,
                  order=2, taylor_test=False)


@pytest.mark.parametrize("op, bound", [
    ("relu", lambda ops: ops.relu),
    ("leaky_relu", lambda ops: lambda x: ops.leaky_relu(x, 0.1)),
    ("max_pool2d", lambda ops: lambda x: ops.max_pool2d(x, 2)),
    ("max_pool2d overlapping", lambda ops: lambda x: ops.max_pool2d(x, 3, 2, 1)),
])
def test_jcnn_ops_are_right_at_kinks_to_second_order(op, bound, rng):
    """Fails where an op's forward rule differentiates differently from its backward rule at
    a kink (known for relu at 0 until its forward rule is fixed)."""
    x = jnp.asarray(rng.standard_normal((2, 6, 6, 3)))
    report = check_vjp(bound(jcnn), bound(reference), x, order=2, kinks=True,
                       taylor_test=False, raise_on_failure=False)
    assert report.ok, str(report)
    assert {r.check for r in report.rows} >= {"vjp (kinks)", "vjp2 (kinks)"}


def test_kinks_need_a_reference(rng):
    with pytest.raises(ValueError, match="kinks=True compares with the reference"):
        check_vjp(jnp.tanh, None, jnp.ones(3), kinks=True)
