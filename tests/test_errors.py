"""Bad input raises ValueError/TypeError at call time, and the message names the argument.

One table, run against the hand-ruled ops and their autodiff twins (validation is shared, so
both must refuse the same calls with the same words)."""
import jax
import jax.numpy as jnp
import pytest

import jcnn
from jcnn import reference

f32 = jnp.float32
X = jnp.zeros((2, 6, 6, 4), f32)
W = jnp.zeros((3, 3, 4, 8), f32)
WT = jnp.zeros((3, 3, 2, 4), f32)  # conv_transpose2d: (kh, kw, out // groups, in)
X1, W1 = jnp.zeros((2, 6, 4), f32), jnp.zeros((3, 4, 8), f32)  # conv1d: NWC, WIO
X3, W3 = jnp.zeros((1, 4, 4, 4, 2), f32), jnp.zeros((2, 2, 2, 2, 3), f32)  # conv3d
KEY = jax.random.key(0)

# (id, op name, args, kwargs, exception, words the message must contain)
CASES = [
    ("conv-x-rank3", "conv2d", (jnp.zeros((6, 6, 4), f32), W), {}, ValueError, ["x", "rank 4"]),
    ("conv-w-rank3", "conv2d", (X, jnp.zeros((3, 4, 8), f32)), {}, ValueError, ["w", "rank 4"]),
    ("conv-channels", "conv2d", (X, jnp.zeros((3, 3, 3, 8), f32)), {}, ValueError,
     ["channels", "w"]),
    ("conv-groups-x", "conv2d", (X, jnp.zeros((3, 3, 1, 9), f32)), {"groups": 3}, ValueError,
     ["groups"]),
    ("conv-groups-out", "conv2d", (X, jnp.zeros((3, 3, 2, 7), f32)), {"groups": 2}, ValueError,
     ["groups", "output channels"]),
    ("conv-groups-zero", "conv2d", (X, W), {"groups": 0}, ValueError, ["groups"]),
    ("conv-groups-float", "conv2d", (X, W), {"groups": 1.5}, TypeError, ["groups"]),
    ("conv-stride-0", "conv2d", (X, W), {"stride": 0}, ValueError, ["stride"]),
    ("conv-stride-triple", "conv2d", (X, W), {"stride": (1, 1, 1)}, TypeError, ["stride"]),
    ("conv-dilation-0", "conv2d", (X, W), {"dilation": (1, 0)}, ValueError, ["dilation"]),
    ("conv-padding-neg", "conv2d", (X, W), {"padding": -1}, ValueError, ["padding"]),
    ("conv-padding-neg-pairs", "conv2d", (X, W), {"padding": ((0, -1), (0, 0))}, ValueError,
     ["padding"]),
    ("conv-padding-string", "conv2d", (X, W), {"padding": "FULL"}, ValueError, ["padding", "SAME"]),
    ("conv-padding-type", "conv2d", (X, W), {"padding": 1.5}, TypeError, ["padding"]),
    ("conv-kernel-too-big", "conv2d", (X, jnp.zeros((7, 3, 4, 8), f32)), {}, ValueError,
     ["kernel", "padded input", "empty"]),
    ("conv-dilated-too-big", "conv2d", (X, W), {"dilation": 3}, ValueError, ["kernel", "dilation"]),
    ("conv-bias-shape", "conv2d", (X, W, jnp.zeros((4,), f32)), {}, ValueError, ["b", "(8,)"]),
    ("conv-dtype-mismatch", "conv2d", (X, W.astype(jnp.float64)), {}, TypeError,
     ["dtype", "x", "w"]),
    ("conv-int-x", "conv2d", (X.astype(jnp.int32), W), {}, TypeError, ["x", "floating"]),
    ("convT-channels", "conv_transpose2d", (X, jnp.zeros((3, 3, 2, 5), f32)), {}, ValueError,
     ["channels", "w.shape[3]"]),
    ("convT-padding-string", "conv_transpose2d", (X, WT), {"padding": "SAME"}, TypeError,
     ["padding"]),
    ("convT-output-padding", "conv_transpose2d", (X, WT), {"stride": 2, "output_padding": 2},
     ValueError, ["output_padding"]),
    ("convT-output-padding-neg", "conv_transpose2d", (X, WT), {"output_padding": -1}, ValueError,
     ["output_padding"]),
    ("convT-bias", "conv_transpose2d", (X, WT, jnp.zeros((4,), f32)), {}, ValueError,
     ["b", "(2,)"]),
    ("convT-empty", "conv_transpose2d",
     (jnp.zeros((1, 1, 1, 4), f32), jnp.zeros((1, 1, 2, 4), f32)), {"padding": 1}, ValueError,
     ["empty"]),
    ("dense-features", "dense", (jnp.zeros((3, 5), f32), jnp.zeros((4, 2), f32)), {}, ValueError,
     ["features", "x", "w"]),
    ("dense-w-rank", "dense", (jnp.zeros((3, 5), f32), jnp.zeros((5,), f32)), {}, ValueError,
     ["w", "rank 2"]),
    ("dense-bias", "dense", (jnp.zeros((3, 5), f32), jnp.zeros((5, 2), f32), jnp.zeros((5,), f32)),
     {}, ValueError, ["b", "(2,)"]),
    ("dense-scalar", "dense", (jnp.zeros((), f32), jnp.zeros((1, 2), f32)), {}, ValueError, ["x"]),
    ("maxpool-rank", "max_pool2d", (jnp.zeros((6, 6, 4), f32), 2), {}, ValueError, ["x", "rank 4"]),
    ("maxpool-window-0", "max_pool2d", (X, 0), {}, ValueError, ["window"]),
    ("maxpool-window-big", "max_pool2d", (X, 7), {}, ValueError, ["window", "padded input"]),
    ("maxpool-stride-0", "max_pool2d", (X, 2), {"stride": 0}, ValueError, ["stride"]),
    ("maxpool-padding-neg", "max_pool2d", (X, 2), {"padding": (-1, 0)}, ValueError, ["padding"]),
    ("maxpool-int", "max_pool2d", (X.astype(jnp.int32), 2), {}, TypeError, ["x", "floating"]),
    ("avgpool-window-big", "avg_pool2d", (X, (2, 9)), {}, ValueError, ["window", "padded input"]),
    ("avgpool-only-padding", "avg_pool2d", (X, 2), {"padding": 2, "count_include_pad": False},
     ValueError, ["padding"]),
    ("gap-rank", "global_avg_pool2d", (jnp.zeros((2, 4), f32),), {}, ValueError, ["x", "rank 4"]),
    ("gap-no-pixels", "global_avg_pool2d", (jnp.zeros((2, 0, 3, 4), f32),), {}, ValueError,
     ["x", "no pixels", "(2, 0, 3, 4)"]),
    ("gap-int", "global_avg_pool2d", (jnp.zeros((2, 3, 3, 4), jnp.int32),), {}, TypeError,
     ["x", "floating"]),
    ("bn-scale-shape", "batch_norm", (X, jnp.ones((3,), f32), jnp.zeros((4,), f32)), {}, ValueError,
     ["scale", "(4,)"]),
    ("bn-bias-shape", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((2,), f32)), {}, ValueError,
     ["bias", "(4,)"]),
    ("bn-eps-neg", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)), {"eps": -1e-5},
     ValueError, ["eps"]),
    ("bn-rank1", "batch_norm", (jnp.zeros((4,), f32), jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {}, ValueError, ["x", "rank"]),
    ("bn-dtype", "batch_norm", (X, jnp.ones((4,), jnp.float64), jnp.zeros((4,), f32)), {},
     TypeError, ["dtype", "scale"]),
    ("dropout-rate-1", "dropout", (X, 1.0, KEY), {}, ValueError, ["rate"]),
    ("dropout-rate-neg", "dropout", (X, -0.1, KEY), {}, ValueError, ["rate"]),
    ("dropout-key", "dropout", (X, 0.5, jnp.zeros((3,), f32)), {}, TypeError, ["key"]),
    ("xent-float-labels", "softmax_cross_entropy", (jnp.zeros((3, 5), f32), jnp.zeros((3,), f32)),
     {}, TypeError, ["labels", "integer"]),
    ("xent-labels-shape", "softmax_cross_entropy",
     (jnp.zeros((3, 5), f32), jnp.zeros((3, 1), jnp.int32)), {}, ValueError, ["labels", "shape"]),
    ("xent-labels-range", "softmax_cross_entropy", (jnp.zeros((3, 5), f32), jnp.array([0, 5, 1])),
     {}, ValueError, ["labels", "[0, 5)"]),
    ("xent-int-logits", "softmax_cross_entropy",
     (jnp.zeros((3, 5), jnp.int32), jnp.zeros((3,), jnp.int32)), {}, TypeError, ["logits"]),
    ("logsoftmax-int", "log_softmax", (jnp.zeros((3, 5), jnp.int32),), {}, TypeError, ["x"]),
    ("relu-int", "relu", (jnp.zeros((3,), jnp.int32),), {}, TypeError, ["x"]),
    ("flatten-scalar", "flatten", (jnp.zeros((), f32),), {}, ValueError, ["x"]),
    # sizes XLA cannot represent: 2**31 aborted the process inside XLA, 2**40 hung its
    # compiler, 2**63 raised OverflowError
    ("conv-stride-2**31", "conv2d", (X, W), {"stride": 2 ** 31}, ValueError, ["stride", "2**31"]),
    ("conv-padding-2**31", "conv2d", (X, W), {"padding": 2 ** 31}, ValueError,
     ["padding", "2**31"]),
    ("conv-dilation-2**40", "conv2d", (X, W), {"dilation": 2 ** 40}, ValueError, ["dilation"]),
    ("conv-stride-2**63", "conv2d", (X, W), {"stride": (1, 2 ** 63)}, ValueError, ["stride"]),
    ("pool-padding-2**31", "max_pool2d", (X, 2), {"padding": ((0, 2 ** 31), (0, 0))}, ValueError,
     ["padding", "2**31"]),
    ("transpose-output-padding-2**31", "conv_transpose2d", (X, WT),
     {"stride": 2 ** 31, "output_padding": 1}, ValueError, ["stride", "2**31"]),
    ("conv-empty-kernel-axis", "conv2d", (X, jnp.zeros((0, 3, 4, 8), f32)), {}, ValueError,
     ["kernel", "empty"]),
    ("conv-x-list", "conv2d", ([[0.0] * 4] * 6, W), {}, TypeError, ["x", "list", "jnp.asarray"]),
    ("relu-list", "relu", ([0.0, 1.0],), {}, TypeError, ["x", "list"]),
    ("bn-eps-nan", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"eps": float("nan")}, ValueError, ["eps", "finite"]),
    ("leaky-slope-nan", "leaky_relu", (X,), {"negative_slope": float("nan")}, ValueError,
     ["negative_slope", "finite"]),
    ("leaky-slope-string", "leaky_relu", (X,), {"negative_slope": "0.1"}, TypeError,
     ["negative_slope"]),
    ("elu-alpha-nan", "elu", (X,), {"alpha": float("nan")}, ValueError, ["alpha", "finite"]),
    ("gn-groups-divide", "group_norm", (X, 3, jnp.ones((4,), f32), jnp.zeros((4,), f32)), {},
     ValueError, ["groups", "divide"]),
    ("gn-groups-zero", "group_norm", (X, 0, jnp.ones((4,), f32), jnp.zeros((4,), f32)), {},
     ValueError, ["groups"]),
    ("gn-groups-float", "group_norm", (X, 2.0, jnp.ones((4,), f32), jnp.zeros((4,), f32)), {},
     TypeError, ["groups"]),
    ("gn-rank1", "group_norm", (jnp.zeros((4,), f32), 2, jnp.ones((4,), f32),
                                jnp.zeros((4,), f32)), {}, ValueError, ["x", "rank"]),
    ("ln-scale-shape", "layer_norm", (X, jnp.ones((3,), f32), jnp.zeros((4,), f32)), {},
     ValueError, ["scale", "(4,)"]),
    ("ln-eps-neg", "layer_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)), {"eps": -1.0},
     ValueError, ["eps"]),
    ("ln-eps0-one-channel", "layer_norm", (jnp.zeros((3, 1), f32), jnp.ones((1,), f32),
                                           jnp.zeros((1,), f32)), {"eps": 0.0}, ValueError,
     ["eps", "channel"]),
    ("ln-scalar", "layer_norm", (jnp.zeros((), f32), jnp.ones((1,), f32), jnp.zeros((1,), f32)),
     {}, ValueError, ["x"]),
    ("xent-smoothing-above-1", "softmax_cross_entropy",
     (jnp.zeros((3, 5), f32), jnp.zeros((3,), jnp.int32)), {"label_smoothing": 1.5}, ValueError,
     ["label_smoothing", "[0, 1]"]),
    ("xent-smoothing-nan", "softmax_cross_entropy",
     (jnp.zeros((3, 5), f32), jnp.zeros((3,), jnp.int32)), {"label_smoothing": float("nan")},
     ValueError, ["label_smoothing", "finite"]),
    ("elu-int", "elu", (jnp.zeros((3,), jnp.int32),), {}, TypeError, ["x"]),
    ("silu-list", "silu", ([0.0, 1.0],), {}, TypeError, ["x", "list"]),
    ("softplus-int", "softplus", (jnp.zeros((3,), jnp.int32),), {}, TypeError, ["x"]),
    ("maxpool-ceil-string", "max_pool2d", (X, 2), {"ceil_mode": "True"}, TypeError,
     ["ceil_mode", "True or False"]),
    ("avgpool-ceil-int", "avg_pool2d", (X, 2), {"ceil_mode": 1}, TypeError, ["ceil_mode"]),
    ("maxpool-dilation-0", "max_pool2d", (X, 2), {"dilation": 0}, ValueError,
     ["dilation", ">= 1"]),
    ("maxpool-dilated-too-big", "max_pool2d", (X, 3), {"dilation": 3}, ValueError,
     ["window", "dilation", "padded input"]),
    ("adaptive-larger-than-input", "adaptive_avg_pool2d", (X, (2, 7)), {}, ValueError,
     ["output_size", "at most", "(6, 6)"]),
    ("adaptive-zero", "adaptive_avg_pool2d", (X, (0, 2)), {}, ValueError, ["output_size"]),
    ("adaptive-float", "adaptive_avg_pool2d", (X, 2.5), {}, TypeError, ["output_size"]),
    ("adaptive-rank", "adaptive_avg_pool2d", (jnp.zeros((6, 6, 4), f32), 2), {}, ValueError,
     ["x", "rank 4"]),
    ("upsample-float-scale", "upsample2d", (X, 1.5), {}, TypeError, ["scale", "int"]),
    ("upsample-scale-0", "upsample2d", (X, (2, 0)), {}, ValueError, ["scale", ">= 1"]),
    ("upsample-mode", "upsample2d", (X, 2), {"mode": "bicubic"}, ValueError,
     ["mode", "nearest", "bilinear"]),
    ("upsample-rank", "upsample2d", (jnp.zeros((6, 6, 4), f32), 2), {}, ValueError,
     ["x", "rank 4"]),
    ("upsample-int", "upsample2d", (X.astype(jnp.int32), 2), {}, TypeError, ["x", "floating"]),
    ("upsample-2**31", "upsample2d", (X, 2 ** 30), {}, ValueError, ["output", "2**31"]),
    ("bn-eval-mean-alone", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": jnp.zeros((4,), f32)}, ValueError, ["mean given without var", "both"]),
    ("bn-eval-var-alone", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"var": jnp.ones((4,), f32)}, ValueError, ["var given without mean", "both"]),
    ("bn-eval-mean-shape", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": jnp.zeros((3,), f32), "var": jnp.ones((4,), f32)}, ValueError, ["mean", "(4,)"]),
    ("bn-eval-var-rank2", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": jnp.zeros((4,), f32), "var": jnp.ones((1, 4), f32)}, ValueError, ["var", "(4,)"]),
    ("bn-eval-var-dtype", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": jnp.zeros((4,), f32), "var": jnp.ones((4,), jnp.float16)}, TypeError,
     ["dtype", "var float16"]),
    ("bn-eval-mean-int", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": jnp.zeros((4,), jnp.int32), "var": jnp.ones((4,), f32)}, TypeError,
     ["mean", "floating"]),
    ("bn-eval-mean-list", "batch_norm", (X, jnp.ones((4,), f32), jnp.zeros((4,), f32)),
     {"mean": [0.0] * 4, "var": jnp.ones((4,), f32)}, TypeError, ["mean", "list"]),
    # conv1d / conv3d / conv_transpose1d / conv_transpose3d and the padding modes
    ("conv1d-x-rank4", "conv1d", (X, W1), {}, ValueError, ["x", "rank 3", "NWC"]),
    ("conv3d-w-rank4", "conv3d", (X3, W), {}, ValueError, ["w", "rank 5", "DHWIO"]),
    ("conv3d-channels", "conv3d", (X3, jnp.zeros((2, 2, 2, 3, 3), f32)), {}, ValueError,
     ["x has 2 channels", "w expects 3"]),
    ("conv1d-stride-pair", "conv1d", (X1, W1), {"stride": (1, 1)}, TypeError,
     ["stride", "1-tuple"]),
    ("conv3d-padding-pair", "conv3d", (X3, W3), {"padding": (1, 1)}, TypeError,
     ["padding", "triple"]),
    ("conv1d-kernel-too-big", "conv1d", (X1, jnp.zeros((9, 4, 8), f32)), {}, ValueError,
     ["kernel", "in W"]),
    ("conv1d-padding-mode-unknown", "conv1d", (X1, W1), {"padding": 1, "padding_mode": "mirror"},
     ValueError, ["padding_mode", "'mirror'", "reflect"]),
    ("conv2d-padding-mode-none", "conv2d", (X, W), {"padding_mode": None}, TypeError,
     ["padding_mode", "None"]),
    ("conv1d-reflect-too-wide", "conv1d", (X1, W1), {"padding": 6, "padding_mode": "reflect"},
     ValueError, ["padding_mode='reflect'", "smaller", "W of size 6"]),
    ("conv2d-reflect-too-wide", "conv2d", (X, W), {"padding": ((0, 6), (0, 0)),
                                                    "padding_mode": "reflect"}, ValueError,
     ["padding_mode='reflect'", "H of size 6"]),
    ("conv3d-circular-too-wide", "conv3d", (X3, W3), {"padding": ((0, 0), (0, 0), (0, 5)),
                                                       "padding_mode": "circular"}, ValueError,
     ["padding_mode='circular'", "W of size 4"]),
    ("convT1d-padding-mode", "conv_transpose1d", (X1, jnp.zeros((3, 2, 4), f32)),
     {"padding_mode": "reflect"}, ValueError, ["padding_mode", "'zeros'"]),
    ("convT3d-output-padding", "conv_transpose3d", (X3, jnp.zeros((2, 2, 2, 1, 2), f32)),
     {"stride": 2, "output_padding": (0, 0, 2)}, ValueError, ["output_padding", "in W"]),
    ("convT1d-padding-string", "conv_transpose1d", (X1, jnp.zeros((3, 2, 4), f32)),
     {"padding": "SAME"}, TypeError, ["padding", "SAME"]),
]


@pytest.mark.parametrize("module", [jcnn, reference], ids=["jcnn", "reference"])
@pytest.mark.parametrize("op, args, kwargs, error, words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_message_naming_the_argument(module, op, args, kwargs,
                                                                 error, words):
    with pytest.raises(error) as raised:
        getattr(module, op)(*args, **kwargs)
    message = str(raised.value)
    assert message.startswith(op + ":"), message
    for word in words:
        assert word in message, f"{word!r} missing from: {message}"


def test_there_are_at_least_thirty_cases():
    assert len(CASES) >= 30


@pytest.mark.parametrize("module", [jcnn, reference], ids=["jcnn", "reference"])
def test_scalar_calls_numpy_would_take_work(module):
    """A Python float through dropout, and one unbatched example (logits (C,), an int label)
    through the loss: valid calls that raised AttributeError and TypeError."""
    y = module.dropout(1.0, 0.5, KEY)
    assert y.shape == () and float(y) in (0.0, 2.0)
    loss = module.softmax_cross_entropy(jnp.zeros(3, f32), 1)
    assert loss.shape == () and abs(float(loss) - float(jnp.log(3.0))) < 1e-6


def test_valid_calls_in_the_table_shapes_pass():
    """The fixtures the table breaks are themselves valid, so each case fails for its one fault."""
    for module in (jcnn, reference):
        assert module.conv2d(X, W).shape == (2, 4, 4, 8)
        assert module.conv_transpose2d(X, WT).shape == (2, 8, 8, 2)
        assert module.conv1d(X1, W1, padding=5, padding_mode="reflect").shape == (2, 14, 8)
        assert module.conv3d(X3, W3, padding=4, padding_mode="circular").shape == (1, 11, 11, 11,
                                                                                   3)
        assert module.max_pool2d(X, 2).shape == (2, 3, 3, 4)
        assert module.batch_norm(X, jnp.ones((4,), f32), jnp.zeros((4,), f32)).shape == X.shape
