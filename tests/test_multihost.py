"""`jcnn train --distributed` across two processes on this machine, as `mpirun -np 2` would
start it, reaches the losses of one process on the same four devices.

Each process gets 2 CPU devices (XLA_FLAGS), Open MPI's environment (world size, rank, local
rank, and the `OMPI_MCA_orte_hnp_uri` that tells JAX it runs under mpirun) and
JAX_COORDINATOR_ADDRESS / JAX_COORDINATOR_BIND_ADDRESS on 127.0.0.1, so
`jax.distributed.initialize()` needs no arguments. JAX's CPU collectives (gloo) carry the
all-reduces; gloo binds the address the host name resolves to, so the test runs only where
that is a loopback address."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["-m", "jcnn", "train", "--epochs", "1", "--batch-size", "64", "--lr", "0.003"]


def _env(devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "SLURM_", "JAX_"))}
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")  # conftest's, shared by the run
    return {**env, "PYTHONPATH": path, **({"JAX_COMPILATION_CACHE_DIR": cache} if cache else {}),
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
            "JAX_PLATFORMS": "cpu", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _start_two(args: list) -> list[subprocess.Popen]:
    """`python ARGS` as ranks 0 and 1 of a two-process job on 127.0.0.1, 2 devices each."""
    address = f"127.0.0.1:{_free_port()}"
    return [subprocess.Popen(
        [sys.executable, *args], cwd=ROOT,
        env=_env(2, OMPI_MCA_orte_hnp_uri="1.0;tcp://127.0.0.1:1", OMPI_COMM_WORLD_SIZE="2",
                 OMPI_COMM_WORLD_RANK=str(rank), OMPI_COMM_WORLD_LOCAL_RANK=str(rank),
                 JAX_COORDINATOR_ADDRESS=address, JAX_COORDINATOR_BIND_ADDRESS=address,
                 JAX_CPU_COLLECTIVES_IMPLEMENTATION="gloo"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]


def _finish(procs: list[subprocess.Popen]) -> list[str]:
    """Each process's stdout, once all have exited 0."""
    try:
        outputs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            p.kill()
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    return [out for out, _ in outputs]


loopback = pytest.mark.skipif(
    not socket.gethostbyname(socket.gethostname()).startswith("127."),
    reason="gloo would bind the host name's non-loopback address")

# Each process holds the same global batch 0..7 and puts only its own devices' slices; the
# jitted sum over the 4 devices then needs the other process's half.
SUM = ("import jax, jax.numpy as jnp, numpy as np; jax.distributed.initialize(); "
       "from jcnn.train.parallel import data_mesh, replicated, shard_batch; mesh = data_mesh(); "
       "x = shard_batch(np.arange(8.0), mesh); "
       "print(jax.process_count(), mesh.size, len(x.addressable_shards), "
       "float(jax.jit(jnp.sum, out_shardings=replicated(mesh))(x)))")


@loopback
def test_two_processes_sum_a_batch_split_across_them():
    outputs = _finish(_start_two(["-c", SUM]))  # gloo prints its own lines first
    assert [out.splitlines()[-1] for out in outputs] == ["2 4 2 28.0"] * 2


@loopback
@pytest.mark.slow
def test_two_processes_train_as_one_process_on_the_same_devices(tmp_path):
    procs = _start_two([*TRAIN, "--distributed", "--out", tmp_path / "multi"])
    single = subprocess.run([sys.executable, *TRAIN, "--out", tmp_path / "single"], cwd=ROOT,
                            env=_env(4), capture_output=True, text=True, timeout=300)
    for out in _finish(procs):
        assert "on 4 cpu device(s)" in out
    assert single.returncode == 0, single.stderr
    assert "on 4 cpu device(s)" in single.stdout
    (multi,), (one,) = _records(tmp_path / "multi"), _records(tmp_path / "single")
    assert multi["step"] == one["step"] == 1437 // 64
    for key in ("train_loss", "test_loss"):
        assert multi[key] == pytest.approx(one[key], rel=1e-5)
    assert abs(multi["test_accuracy"] - one["test_accuracy"]) <= 1 / 360
