"""benchmarks/xla_cpu_flags.py: a --quick run's table and JSON, its equality check and its count
of library calls (the times are not checked: they are measurements of the machine)."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

_PATH = Path(__file__).resolve().parent.parent / "benchmarks" / "xla_cpu_flags.py"
_spec = importlib.util.spec_from_file_location("xla_cpu_flags", _PATH)
flags = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(flags)


@pytest.mark.slow  # 13-60 s of subprocesses; the unit tests below run by default
def test_quick_run_reports_each_setting(tmp_path, capsys, monkeypatch):
    """Default, fast-math (run and its difference reported, whatever it is) and a flag this
    jaxlib does not know (a row saying the subprocess failed), on a tiny LeNet step."""
    monkeypatch.setitem(flags.SETTINGS, "bogus", ("--xla_cpu_no_such_flag=true", "unknown"))
    out = tmp_path / "flags.json"
    assert flags.main(["--quick", "--cases", "lenet:8:float32", "--settings", "fast-math",
                       "bogus", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "jcnn ms" in table and "fast-math" in table and "bogus" in table
    rows = {r["setting"]: r for r in json.loads(out.read_text())["rows"]}
    assert list(rows) == ["default", "fast-math", "bogus"]
    for name in ("default", "fast-math"):
        r = rows[name]
        assert (r["model"], r["batch"], r["dtype"], r["note"]) == ("lenet", 8, "float32", None)
        for impl in ("jcnn", "autodiff"):
            assert r[f"{impl}_ms"] > 0 and r[f"{impl}_gflops"] > 0
            assert r[f"{impl}_lib"]["conv"] >= 2 and r[f"{impl}_lib"]["dot"] >= 3
            assert math.isfinite(r[f"{impl}_diff"])
            assert r[f"{impl}_same"] == (r[f"{impl}_diff"] <= flags.RTOL["float32"])
    assert rows["default"]["jcnn_diff"] == rows["default"]["autodiff_diff"] == 0.0
    assert rows["fast-math"]["flags"] == "--xla_cpu_enable_fast_math=true"
    # fast-math reassociates XLA's own loops: the outputs move by a few ulps, which shows
    assert rows["fast-math"]["jcnn_diff"] + rows["fast-math"]["autodiff_diff"] > 0
    bogus = rows["bogus"]
    assert "xla_cpu_no_such_flag" in bogus["note"] and bogus["jcnn_ms"] is None
    assert bogus["jcnn_same"] is None


def test_max_rel_diff_scales_by_each_arrays_largest_value():
    want = {"w": np.array([1.0, -4.0, 0.0]), "b": np.zeros(2)}
    assert flags.max_rel_diff(want, want) == 0.0
    assert flags.max_rel_diff({"w": np.array([1.0, -4.0, 0.002]), "b": np.zeros(2)},
                              want) == pytest.approx(0.002 / 4)
    assert flags.max_rel_diff({"w": want["w"], "b": np.array([0.0, 1e-3])},
                              want) == pytest.approx(1e-3)   # all zeros: absolute
    assert flags.max_rel_diff({"w": np.array([1.0, np.nan, 0.0]), "b": np.zeros(2)},
                              want) == math.inf
    assert flags.max_rel_diff({"w": want["w"][:2], "b": np.zeros(2)}, want) == math.inf
    assert flags.max_rel_diff({"w": want["w"]}, want) == math.inf


HLO = """HloModule jit_step, is_scheduled=true

%fused_computation (param_0: f32[4,8,8,32], param_1: f32[3,3,32,32]) -> f32[4,8,8,32] {
  %param_0 = f32[4,8,8,32]{3,2,1,0} parameter(0)
  %param_1 = f32[3,3,32,32]{3,2,1,0} parameter(1)
  ROOT %convolution.1 = f32[4,8,8,32]{3,2,1,0} convolution(%param_0, %param_1), window={size=3x3}
}

%fused_computation.1 (param_0.1: f32[4,32], param_1.1: f32[32,10]) -> f32[4,10] {
  %param_0.1 = f32[4,32]{1,0} parameter(0)
  %param_1.1 = f32[32,10]{1,0} parameter(1)
  ROOT %dot.0 = f32[4,10]{1,0} dot(%param_0.1, %param_1.1), lhs_contracting_dims={1}
}

ENTRY %main.2 (x: f32[4,8,8,32], w: f32[3,3,32,32], v: f32[32,10]) -> f32[4,10] {
  %x = f32[4,8,8,32]{3,2,1,0} parameter(0)
  %w = f32[3,3,32,32]{3,2,1,0} parameter(1)
  %v = f32[32,10]{1,0} parameter(2)
  %conv.2 = f32[4,8,8,32]{3,2,1,0} convolution(%x, %w), window={size=3x3}
  %ynn_fusion = f32[4,8,8,32] fusion(%conv.2, %w), calls=%fused_computation, YNN
  %cc = (f32[4,32], u8[0]) custom-call(%ynn_fusion), custom_call_target="__onednn$convolution"
  %gte = f32[4,32]{1,0} get-tuple-element(%cc), index=0
  ROOT %xnn_fusion = f32[4,10]{1,0} fusion(%gte, %v), calls=%fused_computation.1, XNN
}
""".replace("YNN", 'kind=kCustom, backend_config={"fusion_config":{"kind":"__ynn_fusion"}}') \
    .replace("XNN", 'kind=kCustom, backend_config={"fusion_config":{"kind":"__xnn_fusion"}}')


def test_library_calls_counts_ops_inside_library_fusions():
    calls = flags.library_calls(HLO)
    assert calls == {"conv": 3, "conv_lib": 2, "dot": 1, "dot_lib": 1, "onednn": 1, "xnn": 1,
                     "ynn": 1}
    assert flags.describe_library(calls) == "onednn 1 xnn 1 ynn 1; conv 2/3, dot 1/1"
    assert flags.describe_library(flags.library_calls(HLO.replace("__ynn_fusion", "x"))) \
        == "onednn 1 xnn 1; conv 1/3, dot 1/1"


def test_settings_and_cases_parse():
    assert flags.flags_of("default") == ""
    assert flags.flags_of("vector-512+fast-math") == \
        "--xla_cpu_prefer_vector_width=512 --xla_cpu_enable_fast_math=true"
    assert all(p in flags.SETTINGS for s in flags.COMBINATIONS for p in s.split("+"))
    assert flags.parse_case("resnet8:128:bfloat16") == ("resnet8", 128, "bfloat16")
    with pytest.raises(Exception, match="model:batch:dtype"):
        flags.parse_case("resnet9:128:float32")
