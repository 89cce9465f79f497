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


# ---- damaged files: one CheckpointError naming the file and the reason ---------------------

def _npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _good(path, tree):
    checkpoint.save_checkpoint(path, tree, {"model": "lenet"})


def _truncated(path, tree):
    _good(path, tree)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])


def _flipped(path, tree):
    """One bit of params/0_conv2d/w's data flipped: the zip's CRC-32 no longer matches."""
    _good(path, tree)
    raw = bytearray(path.read_bytes())
    raw[raw.index(np.arange(24, dtype=np.float32).tobytes()) + 17] ^= 4
    path.write_bytes(bytes(raw))


DAMAGED = {
    "missing": (lambda p, t: None, "No such file or directory"),
    "empty": (lambda p, t: p.write_bytes(b""), "not an .npz file \\(empty\\)"),
    "truncated": (_truncated, "corrupt or not a checkpoint: .*zip"),
    "bit-flipped": (_flipped, "corrupt or not a checkpoint: Bad CRC-32"),
    "zero-filled": (lambda p, t: (_good(p, t), p.write_bytes(bytes(p.stat().st_size))),
                    "not an .npz file \\(it starts with neither a zip nor a .npy header\\)"),
    "garbage": (lambda p, t: p.write_bytes(bytes(range(7, 250)) * 5),
                "not an .npz file \\(it starts with neither a zip nor a .npy header\\)"),
    "text": (lambda p, t: p.write_text("model: lenet\n"),
             "not an .npz file \\(it starts with neither a zip nor a .npy header\\)"),
    "npy": (lambda p, t: np.save(open(p, "wb"), np.ones(3)), "a single .npy array"),
    "foreign npz": (lambda p, t: _npz(p, x=np.ones(2)), "no __config__ entry"),
    "config not JSON": (lambda p, t: _npz(p, __config__=np.asarray("{model")),
                        "__config__ is not valid JSON"),
    "config a list": (lambda p, t: _npz(p, __config__=np.asarray("[1]")),
                      "the config is a list, not a JSON object"),
    "directory": (lambda p, t: p.mkdir(), "is a directory, not a checkpoint file"),
    "fifo": (lambda p, t: os.mkfifo(p), "is not a regular file, not a checkpoint file"),
}


@pytest.mark.parametrize("damage", DAMAGED)
def test_a_damaged_checkpoint_raises_one_error_naming_the_file(damage, tree, tmp_path):
    make, says = DAMAGED[damage]
    path = tmp_path / "ckpt.npz"
    make(path, tree)
    read_config, read_tree = checkpoint.read_config, lambda p: checkpoint.load_checkpoint(p, tree)
    readers = {"config not JSON": [read_config], "config a list": [read_config],
               "foreign npz": [read_config], "bit-flipped": [read_tree]}  # the flip is in w
    for fn in readers.get(damage, [read_config, read_tree]):
        with pytest.raises(checkpoint.CheckpointError, match=f"^checkpoint {path}: {says}") as e:
            fn(path)
        assert "\n" not in str(e.value) and isinstance(e.value, ValueError)


def test_a_checkpoint_missing_arrays_is_named(tree, tmp_path):
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, {"params": tree["params"]}, {})
    with pytest.raises(checkpoint.CheckpointError, match="missing \\['key', 'opt_state/0/count'"):
        checkpoint.load_checkpoint(path, like=tree)
    # strict=False reads a part of what is stored, never less than the template
    part = checkpoint.load_checkpoint(tmp_path / "ckpt.npz", like={"params": tree["params"]})
    _assert_same(part, {"params": tree["params"]})
    full = tmp_path / "full.npz"
    checkpoint.save_checkpoint(full, tree)
    with pytest.raises(checkpoint.CheckpointError, match="unexpected \\['key', 'opt_state"):
        checkpoint.load_checkpoint(full, like={"params": tree["params"]})
    _assert_same(checkpoint.load_checkpoint(full, like={"params": tree["params"]}, strict=False),
                 {"params": tree["params"]})


def test_every_single_bit_flip_is_caught_or_harmless(tree, tmp_path, pytestconfig):
    """Flip one bit of each byte in turn (of every 4th byte unless --runslow): loading either
    raises CheckpointError or gives back exactly what was saved (a flip in a zip field nobody
    reads), never anything else, nor another exception (zipfile's RuntimeError for a flipped
    encryption flag, NotImplementedError for a compression method)."""
    path, bad = tmp_path / "ckpt.npz", tmp_path / "bad.npz"
    _good(path, tree)
    raw = path.read_bytes()
    caught = 0
    for i in range(0, len(raw), 1 if pytestconfig.getoption("--runslow") else 4):
        flipped = bytearray(raw)
        flipped[i] ^= 1 << (i % 8)
        bad.write_bytes(bytes(flipped))
        try:
            loaded, config = checkpoint.load_checkpoint(bad, like=tree), checkpoint.read_config(bad)
        except checkpoint.CheckpointError:
            caught += 1
            continue
        _assert_same(loaded, tree)
        assert config == {"model": "lenet"}
    assert caught > len(raw) // (2 if pytestconfig.getoption("--runslow") else 8)


# ---- a saved run config that `jcnn train --resume` would use ---------------------------------

@pytest.fixture
def train_options():
    import argparse

    from jcnn.cli import train as T
    parser = argparse.ArgumentParser()
    T.configure(parser)
    args = parser.parse_args([])
    return T, args.config_options, {**args.config_defaults, "lr": 0.003}


@pytest.mark.parametrize("change, says", [
    ({"model": "vgg"}, 'model = "vgg", which --model'),
    ({"lr": -1}, "lr = -1, which --lr"),
    ({"lr": "fast"}, 'lr = "fast", which --lr'),
    ({"batch_size": 2.5}, "batch_size = 2.5, which --batch-size"),
    ({"batch_size": True}, "batch_size = true, which --batch-size"),
    ({"seed": "5"}, 'seed = "5", which --seed'),
    ({"lr_decay": 0}, "lr_decay = 0, which --lr-decay"),
])
def test_a_tampered_run_config_is_named(change, says, train_options, tree, tmp_path):
    T, options, config = train_options
    path = tmp_path / "ckpt.npz"
    checkpoint.save_checkpoint(path, tree, config)
    T._check_saved(checkpoint.read_config(path), path, options)  # the untampered one passes
    checkpoint.save_checkpoint(path, tree, {**config, **change})
    with pytest.raises(ValueError, match=f"^{path}: its saved config has {says} does not accept"):
        T._check_saved(checkpoint.read_config(path), path, options)
