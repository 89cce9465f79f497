"""`jcnn bench --smoke` runs and its rows and JSON carry every field; their times are not
checked (they are measurements of the machine, not properties of jcnn)."""
import json
from importlib.util import find_spec

import pytest

from jcnn import bench
from jcnn.cli import main


def _check_rows(rows, impls, ops):
    assert {r["impl"] for r in rows} == set(impls)
    assert {r["op"] for r in rows} == set(ops)
    for r in rows:
        assert set(r) == set(bench.FIELDS), r
        assert r["note"] is None, r["note"]
        assert r["median_ms"] > 0 and r["min_ms"] <= r["median_ms"] and r["runs"] == 3
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


def test_torch_modes_are_checked():
    with pytest.raises(SystemExit, match="--torch takes none"):
        bench._torch_modes("eager,jit", smoke=False)
