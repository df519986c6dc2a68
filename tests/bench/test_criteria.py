"""bench/criteria.py: a --quick smoke run, pass counting, merging and the honest summary."""

from __future__ import annotations

import copy
import json
from argparse import Namespace
from pathlib import Path

import torch
from torch import nn

from bench import criteria as bench


def _row(model, crit, setting, value, metric="top1"):
    return {"model": model, "criterion": crit, "setting": setting, "metric": metric, "value": value,
            "status": "ok" if value is not None else "n/a", "reason": None if value is not None else "why",
            "score_s": 0.1, "passes": {"forward": 1, "forward_samples": 8, "backward": 0, "backward_samples": 0,
                                       "notes": []}, "reported_passes": None}


def _run(i: int) -> dict:
    return {"id": f"run-{i}", "date": f"2026-01-0{i}", "machine": bench.machine()}


def test_quick_smoke_on_the_default_model(tmp_path: Path):
    rc = bench.main(["--quick", "--in-process", "--only", "default", "--criteria", "magnitude-l2",
                     "--out", str(tmp_path)])
    assert rc == 0
    report = json.loads((tmp_path / "criteria.quick.json").read_text())
    assert report["quick"] is True and not (tmp_path / "criteria.json").exists()
    rows = {(r["criterion"], r["setting"]): r for r in report["rows"]}
    assert set(rows) == {("magnitude-l2", "channels 50% one-shot"), ("magnitude-l2", "channels 50% + KD 2")}
    one = rows[("magnitude-l2", "channels 50% one-shot")]
    assert one["status"] == "ok" and 10.0 < one["value"] <= 100.0
    assert one["passes"]["forward"] == 0  # magnitude reads weights only
    assert report["models"]["default"]["dense"] > 95.0
    assert report["runs"][0]["finished"] and report["runs"][0]["machine"]["torch"] == torch.__version__
    md = (tmp_path / "criteria.quick.md").read_text()
    assert "| criterion | setting | metric |" in md and "| magnitude-l2 | channels 50% one-shot |" in md


def test_pass_counter_counts_forward_and_backward_also_on_copies():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with bench.PassCounter(model) as c:
        model(torch.randn(5, 4)).sum().backward()
        twin = copy.deepcopy(model)
        with torch.no_grad():
            twin(torch.randn(7, 4))
    rec = c.record()
    assert (rec["forward"], rec["forward_samples"], rec["backward"], rec["backward_samples"]) == (2, 12, 1, 5)
    model(torch.randn(2, 4))  # after the context: not counted
    assert c.forward == 2


def test_rows_merge_per_model_criterion_setting(tmp_path: Path):
    bench.write(tmp_path, False, [_row("default", "wanda", "channels 50% one-shot", 70.0)], {}, _run(1))
    bench.write(tmp_path, False, [_row("default", "wanda", "channels 50% one-shot", 71.0),
                                  _row("default", "magnitude-l2", "channels 50% one-shot", 80.0)], {}, _run(2))
    report = json.loads((tmp_path / "criteria.json").read_text())
    assert len(report["rows"]) == 2 and len(report["runs"]) == 2
    wanda = next(r for r in report["rows"] if r["criterion"] == "wanda")
    assert wanda["value"] == 71.0 and wanda["run"] == "run-2"


def test_markdown_says_when_a_seed_method_loses_to_magnitude():
    rows = [_row("default", "magnitude-l2", "channels 50% one-shot", 80.0),
            _row("default", "wanda", "channels 50% one-shot", 70.0),
            _row("default", "stade", "channels 50% one-shot", 85.0),
            _row("default", "taylor", "channels 50% one-shot", None),
            _row("minilm", "magnitude", "weights 2:4", 0.6, "cosine"),
            _row("minilm", "wanda", "weights 2:4", 0.7, "cosine")]
    report = {"rows": rows, "runs": [_run(1)], "machine": bench.machine(), "updated": "now",
              "models": {"default": {"dense": 99.0, "recovery": {"steps": 20}}, "minilm": {}}}
    md = bench.markdown(report)
    assert "| wanda | channels 50% one-shot | 70.00 | -10.00 |" in md
    assert "| taylor | channels 50% one-shot | n/a |" in md
    assert "best **stade** 85.00; magnitude 80; seed methods below magnitude: wanda (70.00)" in md
    assert "minilm / weights 2:4: best **wanda** 0.7000; magnitude 0.6; no seed method below magnitude" in md


def test_criteria_filter_takes_globs_and_adds_the_random_reference():
    names = bench.criterion_names(["magnitude*", "random"])
    assert names == ["magnitude-l1", "magnitude-l2", "random"]
    assert bench.parse_args(["--criteria", "wanda, stade"]).criteria == ["wanda", "stade"]
    assert isinstance(bench.parse_args([]), Namespace)
