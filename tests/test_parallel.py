"""Data parallelism: on 4 (fake) CPU devices the batch is split four ways, params stay
replicated, and the losses equal a 1-device run's. XLA fixes the device count at start-up, so
this runs in a subprocess."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import contextlib, io, json
from itertools import islice

import jax, numpy as np, optax
from jcnn import layers as L
from jcnn.cli import main
from jcnn.train.data import batches, load_dataset
from jcnn.train.parallel import check_batch_size, data_mesh, put, replicated, shard_batch
from jcnn.train.step import init_train_state, make_train_step

digits = load_dataset("digits")
builds = {
    # conv, dense, pooling, and batch norm, whose statistics must be the global batch's, not
    # each shard's
    "conv-bn": lambda: L.serial(L.conv2d(4, 3, padding=1), L.batch_norm(), L.relu(),
                                L.max_pool2d(2), L.flatten(), L.dense(10)),
}

def losses(build, mesh):
    model, optimizer = build(), optax.sgd(0.05, momentum=0.9)
    ts = init_train_state(model, optimizer, jax.random.key(0), (16, 8, 8, 1))
    ts = put(jax.tree_util.tree_map(
        lambda a: a.astype(np.float64) if a.dtype == np.float32 else a, ts), replicated(mesh))
    step = make_train_step(model, optimizer, mesh=mesh)
    out = []
    for x, y in islice(batches(digits.train_images, digits.train_labels, 16), 4):
        x, y = shard_batch((x.astype(np.float64), y), mesh)
        ts, loss = step(ts, x, y)
        out.append(float(loss))
    return out, sorted({s.data.shape for s in x.addressable_shards}), ts.params

result = {"devices": jax.device_count(), "runs": {}}
for name, build in builds.items():
    four, shard, p4 = losses(build, data_mesh())
    one, _, p1 = losses(build, data_mesh(jax.devices()[:1]))
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
               zip(jax.tree_util.tree_leaves(p4), jax.tree_util.tree_leaves(p1)))
    result["runs"][name] = {"four": four, "one": one, "shard": shard, "param_diff": diff}
try:
    check_batch_size(6, data_mesh())
except ValueError as e:
    result["error"] = str(e)
err = io.StringIO()
with contextlib.redirect_stderr(err):
    result["cli_code"] = main(["train", "--batch-size", "30", "--epochs", "1"])
result["cli_error"] = err.getvalue()
print(json.dumps(result))
"""


def test_four_devices_give_the_single_device_losses():
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_ENABLE_X64": "1",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert result["devices"] == 4
    for name, run in result["runs"].items():
        assert run["shard"] == [[4, 8, 8, 1]], name  # each device holds a quarter of the batch
        assert len(set(run["four"])) == len(run["four"]), name  # the params do move
        for a, b in zip(run["four"], run["one"]):
            assert abs(a - b) <= 1e-12 * abs(b), (name, run["four"], run["one"])
        assert run["param_diff"] < 1e-12, name
    assert result["error"] == ("batch size 6 is not divisible by the 4 devices JAX sees; "
                               "use a multiple of 4")
    assert "--batch-size 30" in result["cli_error"] and "multiple of 4" in result["cli_error"]
    assert result["cli_code"] == 2 and len(result["cli_error"].splitlines()) == 1
