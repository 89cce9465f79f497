"""`jcnn bench --smoke` runs and its rows and JSON carry every field; their times are not
checked (they are measurements of the machine, not properties of jcnn)."""
import json
from importlib.util import find_spec

import pytest

from jcnn.bench import harness as bench
from jcnn.cli import bench as command
from jcnn.cli import UsageError, main


def _check_rows(rows, impls, ops):
    assert {r["impl"] for r in rows} == set(impls)
    assert {r["op"] for r in rows} == set(ops)
    for r in rows:
        assert set(r) == set(bench.FIELDS), r
        assert r["note"] is None, r["note"]
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["runs"] == 3
        assert r["faults"] is None or r["faults"] >= 0
        assert r["flops"] > 0 and r["gflops"] == pytest.approx(r["flops"] / r["median_ms"] / 1e6)
    by_impl = {r["impl"]: r for r in rows}
    assert by_impl["autodiff"]["ratio"] == 1.0
    assert by_impl["jcnn"]["temp_bytes"] is not None and by_impl["jcnn"]["argument_bytes"] > 0


def test_smoke_step_writes_table_and_json(tmp_path, capsys):
    """The CLI end to end; with PyTorch's eager rows too where torch is installed."""
    torch = find_spec("torch") is not None
    argv = ["bench", "--smoke", "--json", str(tmp_path / "bench.json")]
    assert main(argv + (["--torch", "eager"] if torch else [])) == 0
    out = capsys.readouterr().out
    assert "train step" in out and "autodiff" in out and "temp MB" in out
    written = json.loads((tmp_path / "bench.json").read_text())
    assert {"device", "cores", "jax", "jaxlib", "date"} <= set(written["environment"])
    rows = written["rows"]
    assert all((r["model"], r["batch"], r["dtype"]) == ("lenet", 8, "float32") for r in rows)
    _check_rows([r for r in rows if r["impl"] != "torch-eager"], ["jcnn", "autodiff"],
                ["train step"])
    if torch:
        eager = next(r for r in rows if r["impl"] == "torch-eager")
        assert eager["note"] is None and eager["median_ms"] > 0 and eager["temp_bytes"] is None


def test_smoke_ops_times_every_lenet_op():
    rows = [r for case in bench.OP_CASES if case.model == "lenet"
            for r in bench.bench_op(case, 8, "float32", repeats=3, rounds=1)]
    _check_rows(rows, ["jcnn", "autodiff"],
                [c.name for c in bench.OP_CASES if c.model == "lenet"])


def test_ratios_are_to_autodiff_and_to_the_fastest_torch_variant():
    """ratio: median over autodiff's; torch_ratio (JAX rows only): median over the fastest
    PyTorch variant's median; temp_ratio: temp bytes over autodiff's."""
    times = {"jcnn": [0.002, 0.004, 0.003], "autodiff": [0.006, 0.008], "torch-eager": [0.005],
             "torch-compile": [0.0015, 0.0025]}
    memory = {"jcnn": {"temp_bytes": 10, "argument_bytes": 4, "flops": 3e6},
              "autodiff": {"temp_bytes": 40, "argument_bytes": 4, "flops": 5e6}}
    rows = {r["impl"]: r for r in bench._rows({"model": "lenet"}, times, memory, {})}
    # every row: the baseline's count, the same model's step (XLA counts a loop's body once)
    assert rows["jcnn"]["flops"] == 5e6
    assert rows["jcnn"]["gflops"] == pytest.approx(5e6 / 3e-3 / 1e9)
    assert rows["torch-eager"]["flops"] == 5e6
    assert rows["torch-eager"]["gflops"] == pytest.approx(5e6 / 5e-3 / 1e9)
    assert rows["jcnn"]["ratio"] == pytest.approx(3 / 7)
    assert rows["jcnn"]["torch_ratio"] == pytest.approx(3 / 2)
    assert rows["autodiff"]["torch_ratio"] == pytest.approx(7 / 2)
    assert rows["torch-eager"]["torch_ratio"] is None and rows["torch-eager"]["ratio"] == 5 / 7
    assert rows["jcnn"]["temp_ratio"] == 0.25 and rows["torch-compile"]["temp_ratio"] is None
    no_torch = bench._rows({}, {"jcnn": [1.0], "autodiff": [2.0]}, {}, {})
    assert all(r["torch_ratio"] is None for r in no_torch)


def test_round_ratios_pair_each_round_with_the_baseline_s_same_round():
    """Two rounds of two runs each: a slow second round (load from elsewhere) slows both paths,
    and its ratio is taken within it; ratio itself stays the ratio of whole-run medians."""
    times = {"jcnn": [1.0, 1.2, 3.0, 3.0], "autodiff": [2.0, 2.0, 4.0, 6.0]}
    case = {"model": "lenet", "op": "train step", "batch": 8, "dtype": "float32"}
    rows = {r["impl"]: r for r in bench._rows(case, times, {}, {}, rounds=2)}
    assert (rows["jcnn"]["ratio_lo"], rows["jcnn"]["ratio_hi"]) == pytest.approx((0.55, 0.6))
    assert rows["jcnn"]["ratio"] == pytest.approx(2.1 / 3.0)
    assert rows["autodiff"]["ratio_lo"] == rows["autodiff"]["ratio_hi"] == 1.0
    assert "0.55-0.60" in command.format_table(list(rows.values()))


def test_torch_modes_are_checked():
    with pytest.raises(UsageError, match="--torch takes none"):
        command._torch_modes("eager,jit", smoke=False)


@pytest.mark.skipif(find_spec("resource") is None, reason="the OS counts no page faults")
def test_faults_per_call_counts_fresh_pages():
    """64 MiB written anew each call (malloc serves it with a fresh mmap) faults in about one
    page per 4 KiB; a call that allocates nothing faults in almost none."""
    pages = 64 * 2**20 // 4096
    assert bench.faults_per_call(lambda: bytearray(b"\x01") * (64 * 2**20), calls=3) > 0.9 * pages
    assert bench.faults_per_call(lambda: None, calls=3) < 0.01 * pages


def test_the_cpu_is_named_with_its_family_model_and_vector_extensions():
    amd = ("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 23\nmodel\t\t: 1\n"
           "model name\t: AMD EPYC\nflags\t\t: fpu sse avx fma avx2\n\nprocessor\t: 1\n"
           "model name\t: AMD EPYC\n")
    assert bench.describe_cpu(amd) == "AMD EPYC (family 23 model 1, AVX2)"
    intel = "cpu family\t: 6\nmodel\t\t: 143\nmodel name\t: Intel(R) Xeon(R)\nflags\t: avx2 avx512f"
    assert bench.describe_cpu(intel) == "Intel(R) Xeon(R) (family 6 model 143, AVX-512)"
    assert bench.describe_cpu("model name\t: Some CPU\n") == "Some CPU"
    # no model name: the caller falls back
    assert bench.describe_cpu("Features\t: fp asimd\n") is None



def test_step_flops_are_xla_s_count_of_a_matmul():
    import jax
    import jax.numpy as jnp
    m, k, n = 64, 32, 16
    compiled = jax.jit(jnp.matmul).lower(jnp.ones((m, k)), jnp.ones((k, n))).compile()
    assert bench.step_flops(compiled) == pytest.approx(2 * m * n * k)

    class Listed:  # older jax: a list with one dict per module
        def __init__(self, cost):
            self.cost = cost

        def cost_analysis(self):
            return self.cost
    assert bench.step_flops(Listed([{"flops": 8.0}])) == 8.0
    assert bench.step_flops(Listed([])) is None and bench.step_flops(Listed(None)) is None


def test_the_fma_peak_is_cores_times_clock_times_flops_per_cycle():
    zen5 = ("vendor_id\t: AuthenticAMD\ncpu family\t: 26\ncpu MHz\t\t: 2596.124\n"
            "flags\t\t: fpu avx fma avx2 avx512f avx512_bf16\n")
    peak, how = bench.fma_peak(zen5, 2)
    assert peak == pytest.approx(2 * 2.596124 * 64)
    assert "2 cores" in how and "cpu MHz" in how and "64 FLOP/cycle (avx512f" in how
    zen4 = zen5.replace("26", "25")
    assert bench.fma_peak(zen4, 4)[0] == pytest.approx(4 * 2.596124 * 32)
    intel = "vendor_id\t: GenuineIntel\ncpu family\t: 6\ncpu MHz\t: 3400.0\nflags\t: avx2 fma\n"
    peak, how = bench.fma_peak(intel, 8, base_khz="2100000")
    assert peak == pytest.approx(8 * 2.1 * 32) and "base_frequency" in how
    assert bench.fma_peak("cpu MHz\t: 1000\nflags\t: sse2\n", 2)[0] is None
    assert bench.fma_peak("flags\t: avx2 fma\n", 2)[0] is None
    peak, how = bench.cpu_peak()   # this machine: a figure and how, or None and why
    assert how and (peak is None or peak > 0)


def test_the_form_tables_name_every_form_with_its_ratio_to_the_base(monkeypatch, capsys):
    """benchmarks/*_forms.py print through these two: each form's median and its ratio to the
    base, from `interleaved`'s times (fixed here: the format and arithmetic are under test)."""
    runners = {"xla": lambda: None, "mine": lambda: None}
    monkeypatch.setattr(bench, "interleaved", lambda got, repeats, rounds: (
        {k: v for k, v in {"xla": [2e-3, 4e-3, 3e-3], "mine": [1e-3, 1.5e-3, 9e-3]}.items()
         if k in got}))
    bench.print_op_forms("B=8 conv", runners, repeats=3, base="xla")
    assert capsys.readouterr().out == "B=8 conv xla    3.00 ms (x1.00)  mine    1.50 ms (x0.50)\n"
    made = {"xla": (runners["xla"], {"temp_bytes": 2e6}),
            "mine": (runners["mine"], {"temp_bytes": 12.5e6})}
    bench.print_step_forms("lenet B=8", made, repeats=3, rounds=2, against=("xla",))
    assert capsys.readouterr().out.splitlines() == [
        "lenet B=8 xla      3.00 ms (min    2.00)  x1.000 xla  temp    2.0 MB",
        "lenet B=8 mine     1.50 ms (min    1.00)  x0.500 xla  temp   12.5 MB"]


def test_an_op_missing_from_the_rules_is_a_note_and_any_other_attribute_error_raises():
    import jcnn

    def missing_op(ops):
        return ops.conv4d  # in neither jcnn nor jcnn.reference

    runners, memory, notes = bench._jax_runners(jcnn, missing_op)
    assert not runners and notes == {"jcnn": "jcnn has no conv4d",
                                     "autodiff": "jcnn.reference has no conv4d"}

    def buggy(ops):
        return None.shape  # an AttributeError that is a bug, not a missing op

    with pytest.raises(AttributeError, match="shape"):
        bench._jax_runners(jcnn, buggy)


def test_no_import_cycle_among_jcnn_modules():
    """The torch twins and the harness once imported each other; their constants now live in
    jcnn.bench.models, which both import."""
    import subprocess
    import sys
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "scripts" / "import_cycles.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 cycles" in done.stdout
