"""Strict JAX for every test: float64 available (finite differences need it), implicit rank
promotion is an error, and each test gets its own PRNG key.

The suite is compile-bound (on 2 cores most of its time is XLA compiling small programs), and
many tests compile the same program: a layer under check_vjp and in a model, a training step
in-process and again in a child process (the CLI, the examples). So one run shares one XLA
compilation cache between its xdist workers and the child processes they start (they inherit
the environment): a fresh directory per run, removed at its end. A hit is the same program:
the key holds the HLO, the compile options and the jax/jaxlib versions. Set
JAX_COMPILATION_CACHE_DIR yourself to keep a cache across runs."""
import os
import shutil
import tempfile
import zlib

if "JAX_COMPILATION_CACHE_DIR" not in os.environ:  # the first process of the run: make it
    os.environ.update(JAX_COMPILATION_CACHE_DIR=tempfile.mkdtemp(prefix="jcnn-xla-cache-"),
                      JCNN_TEST_CACHE_OWNER=str(os.getpid()))
# `jcnn train`/`bench` called in-process would set the test process's malloc for the rest of
# the run (`jcnn/cli/malloc.py`); tests/test_malloc.py checks it in subprocesses instead.
os.environ["JCNN_MALLOC"] = "system"
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # cache every compile
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")  # of any size
# No size bound: a bound makes every write list and stat the whole directory (quadratic: the
# run was slower than without the cache). Unlocked, a read racing a write of the same entry can
# see it half-written: jax then warns, and compiles as if it had missed.

import jax  # noqa: E402  (after the cache settings: jax reads them at import)
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

# Property-based tests are bounded in the default suite and run longer under --runslow.
settings.register_profile("default", max_examples=25, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("slow", max_examples=300, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_configure(config):
    settings.load_profile("slow" if config.getoption("--runslow") else "default")


def pytest_unconfigure(config):
    if os.environ.get("JCNN_TEST_CACHE_OWNER") == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


# Most tests compare the values of many small programs, each compiled once: LLVM's optimisation
# of them is much of their cost and changes none of their values (XLA's HLO passes, and with
# them the forms and fusions the HLO tests read, still run). They compile with
# `jax_disable_most_optimizations`; the modules that run long programs (training, benchmarks,
# the XLA flag sweep) keep the optimisations.
OPTIMISED = {"test_train", "test_trained", "test_norm_model", "test_parallel", "test_multihost",
             "test_bench", "test_xla_cpu_flags", "test_cli_faults", "test_model_check"}


@pytest.fixture(autouse=True)
def _unoptimised_compiles(request):
    if request.module.__name__ in OPTIMISED:
        yield
        return
    was = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", was)


@pytest.fixture
def key(request):
    """A PRNG key that differs per test but is fixed across runs."""
    return jax.random.key(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def rng(request):
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
