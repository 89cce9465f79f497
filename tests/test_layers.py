"""The functional layer API: init/apply contracts, param naming, the ops switch, batch-norm
state, dropout modes and the two models' shapes."""
import ast
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jcnn
from jcnn import layers as L
from jcnn import models, reference


def _leaf_dict(tree):
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("model, shape, n_params", [
    (models.lenet(10), (2, 8, 8, 1), None),
    (models.lenet(10), (2, 28, 28, 1), None),
    # LeNet-5's sizes; "same" convs leave 8x8x16 = 1024 features for 32x32 inputs
    (models.lenet(10, channels=(6, 16), hidden=(120, 84)), (2, 32, 32, 3),
     456 + 2416 + 123000 + 10164 + 850),
    # the CIFAR ResNet-8: stem, three stages (the last two with 1x1 projections), classifier
    (models.resnet(10, depth=8), (2, 32, 32, 3), 464 + 4672 + 14528 + 57728 + 650),
], ids=["lenet-8x8", "lenet-28x28", "lenet5-32x32", "resnet8-32x32"])
def test_models_map_images_to_logits(model, shape, n_params, key):
    # traced, not run: shapes and dtypes without compiling anything
    params, state = jax.eval_shape(lambda k: model.init(k, shape), key)
    x = jax.ShapeDtypeStruct(shape, jnp.float32)
    for train in (True, False):
        y, new_state = jax.eval_shape(lambda p, s, x: model.apply(p, s, x, train=train),
                                      params, state, x)
        assert y.shape == (shape[0], 10) and y.dtype == jnp.float32
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    if n_params is not None:
        assert sum(p.size for p in jax.tree_util.tree_leaves(params)) == n_params


def test_resnet_depth_sets_the_blocks_per_stage():
    for depth, blocks in [(8, 3), (20, 9), (32, 15)]:
        names = [layer.name for layer in models.resnet(10, depth).layers]
        assert names == ["conv2d", "batch_norm", "relu"] + ["serial"] * blocks + [
            "global_avg_pool2d", "dense"]


def test_serial_keys_sort_in_layer_order_from_ten_layers_on(key):
    model = models.resnet(10, 20, width=2)
    params, _ = jax.eval_shape(lambda k: model.init(k, (1, 8, 8, 1)), key)
    assert list(params)[:3] == ["00_conv2d", "01_batch_norm", "02_relu"]
    assert list(params)[-1] == "13_dense"
    rebuilt = jax.tree_util.tree_map(lambda a: a, params)  # dict keys come back sorted
    assert list(rebuilt) == list(params)


def test_serial_keys_params_by_index_and_name_and_keeps_its_layers(key):
    model = models.lenet(10)
    params, state = jax.eval_shape(lambda k: model.init(k, (1, 8, 8, 1)), key)
    assert list(params) == ["0_conv2d", "1_relu", "2_max_pool2d", "3_conv2d", "4_relu",
                            "5_max_pool2d", "6_flatten", "7_dense", "8_relu", "9_dense"]
    assert [layer.name for layer in model.layers] == [k.split("_", 1)[1] for k in params]
    assert params["0_conv2d"]["w"].shape == (5, 5, 1, 16) and params["1_relu"] == {}
    assert params["9_dense"]["w"].shape == (64, 10)
    # each sub-layer runs on its own slice of the params
    x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
    y, _ = jax.eval_shape(lambda p, s, x: model.layers[0].apply(p, s, x, train=False),
                          params["0_conv2d"], state["0_conv2d"], x)
    assert y.shape == (1, 8, 8, 16)


def _small_resnet(num_classes, ops):
    """A stem and one downsampling basic block: conv, batch norm, a projected residual."""
    return L.serial(L.conv2d(4, 3, padding=1, ops=ops), models.basic_block(4, 8, 2, ops=ops),
                    L.global_avg_pool2d(ops=ops), L.dense(num_classes, ops=ops))


@pytest.mark.parametrize("build", [
    lambda n, ops: models.lenet(n, channels=(4, 8), hidden=(16,), ops=ops), _small_resnet,
], ids=["lenet", "resnet-block"])
def test_both_ops_give_the_same_params_and_outputs(build, key, rng):
    hand, auto = build(10, ops=jcnn), build(10, ops=reference)
    init = [jax.jit(m.init, static_argnums=1) for m in (hand, auto)]
    (p1, s1), (p2, s2) = (f(key, (4, 8, 8, 1)) for f in init)
    assert _leaf_dict(p1).keys() == _leaf_dict(p2).keys()
    for a, b in zip(jax.tree_util.tree_leaves((p1, s1)), jax.tree_util.tree_leaves((p2, s2))):
        np.testing.assert_array_equal(a, b)
    x = jnp.asarray(rng.random((4, 8, 8, 1)))
    p64 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64), p1)
    for train in (True, False):
        y1, _ = jax.jit(hand.apply, static_argnames="train")(p64, s1, x, train=train)
        y2, _ = jax.jit(auto.apply, static_argnames="train")(p64, s1, x, train=train)
        assert bool(jnp.all(jnp.isfinite(y1)))
        np.testing.assert_allclose(y1, y2, rtol=1e-10, atol=1e-12)


def test_batch_norm_tracks_running_statistics_and_uses_them_in_evaluation(key, rng):
    layer = L.batch_norm(momentum=0.75, ops=reference)
    params, state = layer.init(key, (8, 3, 3, 2))
    params = {"scale": jnp.asarray([2.0, 0.5]), "bias": jnp.asarray([1.0, -1.0])}
    x = jnp.asarray(rng.standard_normal((8, 3, 3, 2)) * 3 + 5)
    y, new = layer.apply(params, state, x, train=True)
    flat = np.asarray(x).reshape(-1, 2)
    np.testing.assert_allclose(new["mean"], 0.25 * flat.mean(0), rtol=1e-6)
    np.testing.assert_allclose(new["var"], 0.75 + 0.25 * flat.var(0, ddof=1), rtol=1e-6)
    assert new["mean"].dtype == jnp.float32  # state keeps its dtype under float64 compute
    np.testing.assert_allclose(y.reshape(-1, 2).mean(0), [1.0, -1.0], atol=1e-10)
    y_eval, same = layer.apply(params, new, x, train=False)
    assert same is new
    expected = (flat - np.asarray(new["mean"])) / np.sqrt(np.asarray(new["var"]) + 1e-5)
    np.testing.assert_allclose(y_eval.reshape(-1, 2), expected * [2.0, 0.5] + [1.0, -1.0],
                               rtol=1e-5)


def test_dropout_needs_a_key_in_training_and_is_the_identity_in_evaluation(key):
    layer = L.dropout(0.5, ops=reference)
    params, state = layer.init(key, (4, 10))
    x = jnp.ones((4, 10), jnp.float32)
    assert layer.apply(params, state, x, train=False)[0] is x
    with pytest.raises(ValueError, match="key"):
        layer.apply(params, state, x, train=True)
    y, _ = layer.apply(params, state, x, train=True, key=key)
    assert set(np.unique(np.asarray(y))) <= {0.0, 2.0} and 0 < int(jnp.sum(y == 0)) < 40


def test_serial_splits_the_key_so_each_dropout_draws_its_own_mask(key):
    model = L.serial(L.dropout(0.5, ops=reference), L.dropout(0.5, ops=reference))
    params, state = model.init(key, (1, 1000))
    first = model.layers[0].apply({}, {}, jnp.ones((1, 1000)), train=True, key=key)[0]
    both, _ = model.apply(params, state, jnp.ones((1, 1000)), train=True, key=key)
    assert not np.array_equal(np.asarray(first) * 2, np.asarray(both))


def test_residual_adds_the_shortcut(key, rng):
    body = L.dense(3, ops=reference)
    x = jnp.asarray(rng.standard_normal((2, 3)), jnp.float32)
    identity = L.residual(body)
    params, state = identity.init(key, x.shape)
    assert list(params) == ["body"] and identity.layers == (body,)
    y, _ = identity.apply(params, state, x, train=False)
    np.testing.assert_allclose(y, reference.dense(x, params["body"]["w"], params["body"]["b"]) + x)
    projected = L.residual(body, L.dense(3, bias=False, ops=reference))
    params, state = projected.init(key, x.shape)
    assert list(params) == ["body", "shortcut"] and list(params["shortcut"]) == ["w"]


def test_output_shape_traces_without_running(key):
    layer = L.conv2d(4, 3, stride=2, padding="SAME", ops=reference)
    params, state = layer.init(key, (2, 9, 9, 3))
    assert L.output_shape(layer, params, state, (2, 9, 9, 3)) == (2, 5, 5, 4)


@pytest.mark.parametrize("make, match", [
    (lambda: L.conv2d(4, 3, groups=2).init(jax.random.key(0), (1, 8, 8, 3)), "groups=2"),
    (lambda: L.conv2d(4, 0), "kernel_size"),
    (lambda: models.resnet(10, depth=10), "6n \\+ 2"),
    (lambda: L.dropout(1.5), "dropout layer: rate must be in \\[0, 1\\)"),
], ids=["conv-groups", "conv-kernel", "resnet-depth", "dropout-rate"])
def test_bad_configurations_raise_with_a_fix(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_batch_norm_layer_on_an_empty_batch_keeps_its_running_statistics(key):
    """The mean of no elements is NaN: it must not enter the running averages (PyTorch leaves
    them too); and a layer of no channels runs."""
    bn = L.batch_norm()
    params, state = bn.init(key, (0, 4, 4, 3))
    y, new = bn.apply(params, state, jnp.zeros((0, 4, 4, 3), jnp.float32), train=True)
    assert y.shape == (0, 4, 4, 3)
    for k in ("mean", "var"):
        np.testing.assert_array_equal(new[k], state[k])
    params, state = bn.init(key, (2, 4, 4, 0))
    y, _ = bn.apply(params, state, jnp.zeros((2, 4, 4, 0), jnp.float32), train=True)
    assert y.shape == (2, 4, 4, 0)


def test_layers_and_models_take_their_default_ops_from_jcnn_ops_not_the_package():
    """`import jcnn` in layers.py or models.py would hand them the half-initialised package
    while jcnn/__init__.py runs, so they would depend on the order of its imports."""
    for module in (L, models):
        tree = ast.parse(inspect.getsource(module))
        bare = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Import)
                and any(a.name == "jcnn" for a in n.names)]
        assert not bare, f"{module.__name__} imports the jcnn package at lines {bare}"
    assert L.relu.__kwdefaults__["ops"] is jcnn.ops


@pytest.mark.parametrize("name, kwargs", [("silu", {}), ("elu", {"alpha": 0.3}), ("softplus", {})])
def test_activation_layers_apply_their_op_in_both_namespaces(name, kwargs, rng):
    x = jnp.asarray(rng.standard_normal((2, 3, 3, 4)))
    for ops in (jcnn, reference):
        layer = getattr(L, name)(**kwargs, ops=ops)
        params, state = layer.init(None, x.shape)
        y, _ = layer.apply(params, state, x, train=True)
        np.testing.assert_allclose(y, getattr(reference, name)(x, **kwargs), rtol=1e-12)


@pytest.mark.parametrize("name, args", [("layer_norm", ()), ("group_norm", (2,))])
def test_norm_layers_normalise_in_training_and_evaluation_alike(name, args, key, rng):
    x = jnp.asarray(rng.standard_normal((2, 3, 3, 4)), jnp.float32)  # the params' dtype
    for ops in (jcnn, reference):
        layer = getattr(L, name)(*args, ops=ops)
        params, state = layer.init(key, x.shape)
        assert state == {} and params["scale"].shape == params["bias"].shape == (4,)
        for train in (True, False):
            y, _ = layer.apply(params, state, x, train=train)
            want = getattr(reference, name)(x, *args, params["scale"], params["bias"])
            np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-6)
