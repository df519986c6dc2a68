"""The report's plots: keep ratios per group (always) and the LUT calibration (when a LUT was used)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from pipeline.config import resolve_config
from pipeline.report import build_report, lut_caption, write_report
from stages.prune.plan import GroupPlan, PruningPlan

PNG = b"\x89PNG\r\n\x1a\n"
CONTRACT = {"target", "objective", "constraints", "baseline", "final", "speedup", "candidates", "stages", "versions"}


def measurement(ms: float, acc: float) -> dict:
    return {"latency_ms": {"median": ms, "p90": ms * 1.1, "p99": ms * 1.2, "mean": ms, "std": 0.01, "cv": 0.01},
            "throughput": 1000 / ms, "memory_mb": 5.0, "onnx_bytes": 1000, "engine_bytes": None, "params": 1000,
            "macs": 10 ** 6, "accuracy": acc, "accuracy_metric": "top1", "measured_on": "cpu: test"}


CAL = {"model": "interaction", "n": 4, "mean_abs_rel_err": 0.031, "max_abs_rel_err": 0.06,
       "raw": {"n": 4, "mean_abs_rel_err": 0.12, "max_abs_rel_err": 0.2},
       "additive_raw": {"n": 4, "mean_abs_rel_err": 0.4, "max_abs_rel_err": 0.5},
       "points": [{"predicted_ms": p, "raw_ms": r, "online_ms": p, "measured_ms": m}
                  for p, r, m in ((1.2, 1.25, 1.21), (1.0, 0.9, 0.97), (0.8, 0.7, 0.83), (0.6, 0.5, 0.61))]}


def state(tune: dict, run_dir) -> SimpleNamespace:
    plan = PruningPlan((GroupPlan("conv1", 32, tuple(range(16))), GroupPlan("layer1.0.conv1", 32, tuple(range(24))),
                        GroupPlan("layer2.0.conv1", 64, tuple(range(8)))))
    return SimpleNamespace(
        cfg=resolve_config(None, {}), final={"baseline": measurement(1.2, 98.0), "final": measurement(0.6, 97.5),
                                             "speedup": 2.0},
        tune={"stop_reason": "budget met", "budgets": {}, "candidates": [], "evaluations": 5, **tune},
        plan=plan, records=[], loaded=SimpleNamespace(spec="example:digits-resnet"), data=SimpleNamespace(name="digits"),
        run_dir=run_dir, pruned=None)


def test_report_writes_keep_ratio_and_lut_calibration_plots(tmp_path):
    rep = build_report(state({"lut_calibration": CAL, "uniform": False}, tmp_path))
    assert CONTRACT <= rep.keys()
    assert rep["tune"]["lut_calibration"]["mean_abs_rel_err"] == 0.031 and rep["tune"]["evaluations"] == 5
    assert rep["policy"]["groups"]["layer2.0.conv1"] == {"width": 64, "kept": 8, "keep_ratio": 0.125}
    write_report(tmp_path, rep)
    for name in ("pareto.png", "keep_ratios.png", "lut_calibration.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG), name
    md = (tmp_path / "report.md").read_text()
    assert "](keep_ratios.png)" in md and "](lut_calibration.png)" in md
    assert "leave-one-out error mean 3.1%" in md and "uncalibrated mean 12.0%" in md
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["plots"] == {"pareto": "pareto.png", "keep_ratios": "keep_ratios.png",
                              "lut_calibration": "lut_calibration.png"}


def test_report_without_a_lut_has_no_calibration_plot_and_drops_a_stale_one(tmp_path):
    (tmp_path / "lut_calibration.png").write_bytes(PNG)  # from an earlier run in this folder
    rep = build_report(state({"uniform": True}, tmp_path))
    write_report(tmp_path, rep)
    assert (tmp_path / "keep_ratios.png").read_bytes().startswith(PNG)
    assert not (tmp_path / "lut_calibration.png").exists()
    md = (tmp_path / "report.md").read_text()
    assert "lut_calibration.png" not in md and "Uniform widths" in md
    assert json.loads((tmp_path / "report.json").read_text())["plots"]["lut_calibration"] is None


@pytest.mark.parametrize("n", [1, 40])
def test_keep_ratio_plot_scales_with_the_number_of_groups(tmp_path, n):
    rep = build_report(state({}, tmp_path))
    rep["policy"]["groups"] = {f"features.{i}.conv": {"width": 64, "kept": 8 * (1 + i % 8)} for i in range(n)}
    write_report(tmp_path, rep)
    assert (tmp_path / "keep_ratios.png").stat().st_size > 1000


def test_lut_caption_says_which_error_it_is():
    text = lut_caption(CAL)
    assert "leave-one-out" in text and "4 full-model measurements" in text and "additive model" in text


def test_the_sensitivity_searchs_cost_model_is_named_as_such():
    from search.landing import CostModel

    cm = CostModel(10.0, 1000.0)
    for macs, ms in ((500.0, 6.0), (250.0, 3.4), (750.0, 8.1)):
        cm.observe(macs, ms)
    text = lut_caption(cm.report())
    assert text.startswith("MAC cost model (search: sensitivity) vs 3 full-model measurements")
    assert "additive" not in text and "n/a" not in text
