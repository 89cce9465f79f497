"""The learner's guide (docs/backprop.md) is checked by running it:

* the tied-weights argument: conv2d IS a dense layer whose matrix repeats the filter entries
  (`docs/figures.py: tied_matrix`), and summing that dense layer's gradient over the entries
  tied to one filter weight gives conv2d's filter gradient;
* the worked example (examples/conv_backprop_by_hand.py): its printed sums are parsed and
  re-evaluated, and its numbers agree with loops, jcnn.naive, jcnn's rule and autodiff;
* the answer's 1-D numbers (docs/answer.md) are jcnn's;
* the figures script writes its PNGs;
* every function and test the guide, the answer, the exercises and benchmarks/NOTES.md cite
  exists, and every file they link to.
"""
import contextlib
import importlib
import io
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from learner_scripts import load

import jcnn
from jcnn import naive, reference

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "backprop.md"
ANSWER = ROOT / "docs" / "answer.md"
#: the learner's pages and the notes moved out of the guide: what they cite must exist
CITING = ("docs/backprop.md", "docs/answer.md", "docs/exercises.md", "benchmarks/NOTES.md",
          "README.md")


@pytest.fixture(scope="module")
def figures():
    return load("docs/figures.py")


@pytest.fixture(scope="module")
def example():
    return load("examples/conv_backprop_by_hand.py")


# ---- conv2d is a dense layer with tied weights ------------------------------------------------

# (x shape NHWC, w shape HWIO, conv2d keywords)
TIED = [
    pytest.param((2, 4, 4, 1), (2, 2, 1, 1), {}, id="4x4-2x2"),
    pytest.param((2, 5, 5, 1), (3, 2, 1, 2), dict(stride=2), id="stride2-1to2ch"),
    pytest.param((1, 4, 5, 2), (2, 3, 2, 1), dict(padding=1), id="pad1-2to1ch"),
    pytest.param((2, 4, 4, 2), (2, 2, 2, 2), dict(stride=2, padding=1), id="stride2-pad1-2ch"),
    pytest.param((1, 5, 4, 2), (2, 3, 2, 2), dict(padding=((0, 2), (1, 0))), id="pad-asym"),
    pytest.param((1, 5, 6, 2), (2, 2, 2, 2), dict(stride=(2, 1), padding=((1, 0), (0, 1)),
                                                  dilation=(1, 2)), id="stride-pad-dilation"),
    pytest.param((1, 4, 4, 4), (2, 2, 2, 2), dict(groups=2, padding=1), id="groups2"),
]


def _loss(y):
    """Any scalar of the output will do; a nonlinear one, so G varies from place to place."""
    return jnp.sum(jnp.sin(y) * jnp.arange(y.size, dtype=y.dtype).reshape(y.shape))


@pytest.mark.parametrize("x_shape, w_shape, kw", TIED)
def test_filter_gradient_is_the_sum_of_the_tied_dense_gradients(figures, x_shape, w_shape, kw,
                                                                 rng):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    matrix, which = figures.tied_matrix(w, x_shape[1:3], **kw)
    y = jcnn.conv2d(jnp.asarray(x), jnp.asarray(w), **kw)
    rows = x.reshape(x.shape[0], -1)  # one vec(X[n]) per image

    # the matrix is the convolution: Y[n].ravel() = M @ X[n].ravel()
    np.testing.assert_allclose(rows @ matrix.T, np.asarray(y).reshape(len(x), -1), rtol=1e-12,
                               atol=1e-12)
    # sparse: row (y, x, o) has at most kh*kw*C/groups non-zeros; tied: every filter entry
    # appears in the matrix (each of these configs uses every tap somewhere)
    assert (which >= 0).sum(axis=1).max() <= np.prod(w_shape[:3])
    assert set(np.unique(which[which >= 0])) == set(range(w.size))

    # treat every matrix entry as its own weight, as a dense layer would ...
    dense_grad = jax.grad(lambda m: _loss(jnp.asarray(rows) @ m.T))(jnp.asarray(matrix))
    # ... then tie them: a filter weight's gradient is the sum over every place it is used
    tied = np.zeros(w.size)
    np.add.at(tied, which[which >= 0], np.asarray(dense_grad)[which >= 0])

    def conv_loss(x, w):
        return _loss(jcnn.conv2d(x, w, **kw).reshape(len(x), -1))
    dx, dw = jax.grad(conv_loss, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(np.asarray(dw).ravel(), tied, rtol=1e-10, atol=1e-10)
    # and the input gradient is the dense layer's M^T G
    g = jax.grad(_loss)(jnp.asarray(rows @ matrix.T))
    np.testing.assert_allclose(np.asarray(dx).reshape(len(x), -1), np.asarray(g) @ matrix,
                               rtol=1e-10, atol=1e-10)


def test_the_matrix_drawn_in_the_guide_is_the_one_figures_computes(figures):
    _, which = figures.tied_matrix(np.arange(4.0).reshape(2, 2, 1, 1) + 1, (4, 4))
    assert figures.matrix_text(which) in GUIDE.read_text()


# ---- the worked example ---------------------------------------------------------------------

SUM = re.compile(r"dW\[(\d),(\d)\] = (?P<names>[^\n]+)\n\s+= (?P<values>[^\n]+)\n"
                 r"\s+= (?P<total>-?[\d.]+)")


def _run_main(example) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        example.main()
    return out.getvalue()


def test_example_prints_each_filter_gradient_as_a_sum_that_adds_up(example):
    text = _run_main(example)
    sections = text.split("=== ")[1:]
    assert len(sections) == len(example.CASES)
    for case, section in zip(example.CASES, sections):
        want = example.grads_four_ways(case)["custom_vjp"][1]
        sums = list(SUM.finditer(section))
        assert len(sums) == want.size
        for m in sums:
            i, j, total = int(m[1]), int(m[2]), float(m["total"])
            # the printed products, evaluated, give the printed total ...
            assert re.fullmatch(r"[\d.()*+ -]+", m["values"])
            assert eval(m["values"]) == pytest.approx(total)  # digits, + and * only
            # ... the named entries are those numbers ...
            named = eval(m["names"], {"x": example.X, "g": case.g})
            assert named == pytest.approx(total)
            # ... and the total is jcnn's filter gradient
            assert total == pytest.approx(want[i, j], abs=1e-12)
        w_new = example.sgd_update(example.W, want)
        for (i, j), v in np.ndenumerate(w_new):
            assert f"W[{i},{j}] = {example.W[i, j]:g} - {example.LEARNING_RATE} * " in section
            assert f"= {v:g}\n" in section


def test_example_numbers_agree_four_ways(example):
    for case in example.CASES:
        ways = example.grads_four_ways(case)
        assert list(ways) == ["loops", "naive", "custom_vjp", "autodiff"]
        dx0, dw0 = ways["loops"]
        for way, (dx, dw) in ways.items():
            np.testing.assert_allclose(dw, dw0, atol=1e-12, err_msg=f"dW {way}")
            np.testing.assert_allclose(dx, dx0, atol=1e-12, err_msg=f"dX {way}")
        np.testing.assert_allclose(
            example.input_grad_by_flipped_filter(example.X.shape, example.W, case.g, case.stride,
                                                 case.padding), dx0, atol=1e-12)
        y_loops, y_jcnn = example.forward_both(case)
        np.testing.assert_allclose(y_loops, y_jcnn, atol=1e-12)
        y_naive = naive.conv2d(example.X[None, :, :, None], example.W[:, :, None, None],
                               stride=case.stride, padding=case.padding)[0, :, :, 0]
        np.testing.assert_allclose(y_loops, y_naive, atol=1e-12)
    # the worked sums quoted in the guide
    first = example.grads_four_ways(example.CASES[0])["loops"][1]
    np.testing.assert_array_equal(first, [[4, 5], [3, 3]])
    second = example.grads_four_ways(example.CASES[1])["loops"][1]
    np.testing.assert_array_equal(second, [[0.25, 7.5], [3, 0.5]])


# ---- the answer's first pass in 1-D (docs/answer.md, section 2) -------------------------------

def _answer_lines(pattern: str) -> dict:
    """{name: the number after the last '=' of its line}, for the answer's lines `name = ...`."""
    found = re.findall(rf"^({pattern}) = .* = (-?[\d.]+)$", ANSWER.read_text(), re.MULTILINE)
    return {name: float(value) for name, value in found}


def test_the_answers_1d_numbers_are_jcnns(figures):
    """x, the filter [a, b, c] and g of the answer (and of conv1d_neurons.png) as a 1x5 image:
    every y, every filter-gradient sum and every input-gradient sum it writes out is jcnn's."""
    x, w, g = figures.CONV1D_X, figures.CONV1D_W, figures.CONV1D_G
    text = ANSWER.read_text()
    assert f"x = [{', '.join(f'{v:g}' for v in x)}]" in text
    assert f"[a, b, c] = [{', '.join(f'{v:g}' for v in w)}]" in text
    assert f"g = dL/dy = [{', '.join(f'{v:g}' for v in g)}]" in text

    def loss(x, w):
        return jnp.sum(jcnn.conv2d(x, w)[0, 0, :, 0] * g)
    x4, w4 = jnp.asarray(x)[None, None, :, None], jnp.asarray(w)[None, :, None, None]
    y = np.asarray(jcnn.conv2d(x4, w4))[0, 0, :, 0]
    dx, dw = (np.asarray(a).ravel() for a in jax.grad(loss, argnums=(0, 1))(x4, w4))

    assert _answer_lines(r"y\d") == {f"y{i}": v for i, v in enumerate(y)}
    assert _answer_lines(r"d[abc]") == dict(zip(("da", "db", "dc"), dw))
    assert _answer_lines(r"dx\d") == {f"dx{i}": v for i, v in enumerate(dx)}
    for name, old, grad in zip("abc", w, dw):
        step = f"({grad:g})" if grad < 0 else f"{grad:g}"
        assert f"`{name} ← {old:g} - 0.1·{step} = {old - 0.1 * grad:g}`" in text


# ---- the figures ----------------------------------------------------------------------------

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # 17-20 s of matplotlib; the figures themselves are committed under docs/
def test_figures_script_writes_every_png(figures, tmp_path, capsys):
    assert figures.main(["--out", str(tmp_path), "--steps", "25"]) == 0
    for name in figures.FIGURES:
        data = (tmp_path / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
        assert (ROOT / "docs" / name).read_bytes().startswith(PNG), f"docs/{name} not committed"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(figures.FIGURES)


def test_max_pool_routing_drawn_is_jcnns(figures):
    x = figures.MAXPOOL_X
    for k, s in ((2, 2), (3, 1)):
        g = np.arange(1.0, 5.0).reshape(2, 2)
        dx = figures.max_pool_routing(x, g, k, s)
        def routed(a, k=k, s=s, g=g):
            return jnp.sum(jcnn.max_pool2d(a, k, s) * g[None, :, :, None])
        got = jax.grad(routed)(jnp.asarray(x)[None, :, :, None])
        np.testing.assert_array_equal(np.asarray(got)[0, :, :, 0], dx)
    # the tie in the first window: 3 at (0, 1) and at (1, 0); the first in row-major order wins
    assert figures.max_pool_routing(x, np.ones((2, 2)), 2, 2)[0, 1] == 1
    assert figures.max_pool_routing(x, np.ones((2, 2)), 2, 2)[1, 0] == 0


# ---- batch norm (section 14) ------------------------------------------------------------------

def test_batch_norm_gradient_ignores_shift_and_scale(rng):
    """dx = r (gh - mean(gh) - xhat mean(gh xhat)), gh = scale * G, per channel; it is orthogonal
    to the two directions batch norm cannot see: a constant shift and a rescaling."""
    x = rng.standard_normal((4, 3, 3, 2)) * 3 + 1
    scale, bias, g = rng.standard_normal(2), rng.standard_normal(2), rng.standard_normal(x.shape)
    axes = (0, 1, 2)
    for eps, op in ((1e-5, jcnn.batch_norm), (0.0, jcnn.batch_norm), (1e-5, reference.batch_norm)):
        def loss(x, op=op, eps=eps):
            return jnp.vdot(op(x, scale, bias, eps=eps), g)
        dx = np.asarray(jax.grad(loss)(x))
        mu, var = x.mean(axis=axes), x.var(axis=axes)
        r = 1 / np.sqrt(var + eps)
        xhat, gh = (x - mu) * r, g * scale
        want = r * (gh - gh.mean(axis=axes) - xhat * (gh * xhat).mean(axis=axes))
        np.testing.assert_allclose(dx, want, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(dx.sum(axis=axes), 0, atol=1e-12)  # shift
        np.testing.assert_allclose((dx * xhat).sum(axis=axes), 0,  # scale, up to eps
                                   atol=1e-12 + 10 * eps * np.abs(dx).sum())


# ---- the guide cites what exists, and its code runs -------------------------------------------

def test_the_guides_code_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", GUIDE.read_text(), re.DOTALL)
    assert blocks
    for block in blocks:
        exec(compile(block, str(GUIDE), "exec"), {"__name__": "guide"})
    out = capsys.readouterr().out
    assert ": ok" in out and "FAILED" in out and "order 1.00" in out


@pytest.mark.parametrize("page", CITING)
def test_every_cited_test_and_function_exists(page):
    text = (ROOT / page).read_text()
    tests = set(re.findall(r"tests/(test_\w+\.py)::(test_\w+)", text))
    functions = set(re.findall(r"`(jcnn(?:\.\w+)+)", text))
    if page == "docs/backprop.md":
        assert len(tests) >= 10 and len(functions) >= 10
    for filename, name in sorted(tests):
        source = (ROOT / "tests" / filename).read_text()
        assert re.search(rf"^def {name}\(", source, re.MULTILINE), f"tests/{filename}::{name}"
    for dotted in sorted(functions):
        assert _resolve(dotted) is not None, dotted
    # every relative link and every script or test file named in backquotes is there
    here = (ROOT / page).parent
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):
        assert (here / target).exists(), f"{page} links to {target}"
    for named in re.findall(r"`(?:python )?((?:examples|docs|benchmarks|tests)/[\w/]+\.\w+)",
                            text):
        assert (ROOT / named).exists(), f"{page} names {named}"


def _resolve(dotted: str):
    """`jcnn.conv._conv2d_dw` -> the object: the longest importable module prefix, then
    attributes (`jcnn.dense` is both a module and, on the package, the function)."""
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:k]))
        except ModuleNotFoundError:
            continue
        for part in parts[k:]:
            obj = getattr(obj, part)
        return obj
    raise AssertionError(dotted)
