"""Checkpoints: exact round trip of params, state and optax state, JSON config, atomic writes,
no pickle, and clear errors when the tree does not match."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jcnn.train import checkpoint


@pytest.fixture
def tree():
    params = {"0_conv2d": {"w": jnp.arange(24, dtype=jnp.float32).reshape(2, 2, 2, 3),
                           "b": jnp.zeros(3, jnp.float32)}, "1_relu": {}}
    opt_state = optax.adam(1e-3).init(params)
    return {"params": params, "opt_state": opt_state, "step": jnp.asarray(7, jnp.int32),
            "key": jax.random.key_data(jax.random.key(3))}


def _assert_same(a, b):
    assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        assert np.asarray(x).dtype == np.asarray(y).dtype
        np.testing.assert_array_equal(x, y)


def test_round_trip_is_exact_and_keeps_the_config(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree, {"model": "lenet", "lr": 1e-3})
    _assert_same(checkpoint.load_checkpoint(path, like=tree), tree)
    assert checkpoint.read_config(path) == {"model": "lenet", "lr": 1e-3}
    # a template of shapes alone (jax.eval_shape) is enough to restore
    like = jax.eval_shape(lambda: tree)
    _assert_same(checkpoint.load_checkpoint(path, like=like), tree)


def test_arrays_are_named_by_key_path_and_nothing_is_pickled(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree)
    with np.load(path, allow_pickle=False) as data:  # would raise on an object array
        names = set(data.files)
        assert all(data[n].dtype != object for n in names)
    assert {"params/0_conv2d/w", "params/0_conv2d/b", "step", "key",
            "opt_state/0/mu/0_conv2d/w", "opt_state/0/count"} <= names


def test_a_failed_write_leaves_the_previous_checkpoint(tree, tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree, {"version": 1})
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        file.write(b"half a checkpoint")
        raise OSError("disk full")
    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        checkpoint.save_checkpoint(path, tree, {"version": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ckpt.npz"]  # no temporary file left behind
    assert checkpoint.read_config(path) == {"version": 1}


def test_bfloat16_leaves_round_trip_and_are_not_mistaken_for_float16(tmp_path):
    """.npy stores bfloat16 as raw bytes ("V2"); its name, saved beside them, brings it back,
    and a float16 template of the same size is refused rather than fed those bytes."""
    path = tmp_path / "c.npz"
    tree = {"w": jnp.asarray([1.5, -2.25, 3e38], jnp.bfloat16), "n": jnp.ones(2, jnp.float32)}
    checkpoint.save_checkpoint(path, tree)
    _assert_same(checkpoint.load_checkpoint(path, like=tree), tree)
    with pytest.raises(ValueError, match="w has shape \\(3,\\) dtype bfloat16, expected shape "
                                         "\\(3,\\) dtype float16"):
        checkpoint.load_checkpoint(path, like=dict(tree, w=tree["w"].astype(jnp.float16)))


@pytest.mark.parametrize("name", ["file", "allow_pickle", "__config__", "__dtypes__"])
def test_leaves_named_like_the_file_s_own_entries_are_refused(name, tmp_path):
    """numpy.savez takes leaf names as keywords: `file` clashed, `allow_pickle` vanished."""
    with pytest.raises(ValueError, match=f"may not be named '{name}'"):
        checkpoint.save_checkpoint(tmp_path / "c.npz", {name: jnp.ones(2), "b": jnp.ones(1)})
    assert not (tmp_path / "c.npz").exists()
    tree = {"nested": {name: jnp.ones(2)}}  # only the top level clashes
    checkpoint.save_checkpoint(tmp_path / "c.npz", tree)
    _assert_same(checkpoint.load_checkpoint(tmp_path / "c.npz", like=tree), tree)


def test_object_leaves_are_refused(tmp_path):
    with pytest.raises(TypeError, match="numeric"):
        checkpoint.save_checkpoint(tmp_path / "c.npz", {"a": np.array([{"x": 1}], dtype=object)})
    assert not (tmp_path / "c.npz").exists()


def test_a_mismatched_template_is_named(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree)
    wider = jax.tree_util.tree_map(lambda a: a, tree)
    wider["params"]["0_conv2d"]["b"] = jnp.zeros(4, jnp.float32)
    with pytest.raises(ValueError, match="params/0_conv2d/b has shape \\(3,\\)"):
        checkpoint.load_checkpoint(path, like=wider)
    extra = dict(tree, epoch=jnp.zeros((), jnp.int32))
    with pytest.raises(ValueError, match="missing \\['epoch'\\]"):
        checkpoint.load_checkpoint(path, like=extra)


def test_config_is_plain_json(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree, {"nested": {"a": [1, 2]}})
    with np.load(path, allow_pickle=False) as data:
        assert json.loads(str(data["__config__"])) == {"nested": {"a": [1, 2]}}
