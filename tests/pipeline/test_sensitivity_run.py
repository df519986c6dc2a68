"""``pipeline run --search sensitivity`` end to end on a small CNN (random init: the search's plumbing, not quality)."""

from __future__ import annotations

import json
import textwrap

import yaml

from tests.conftest import FAST_YAML

_NET = """
    from torch import nn

    def build():
        return nn.Sequential(
            nn.Conv2d(3, 48, 3, padding=1), nn.BatchNorm2d(48), nn.ReLU(),
            nn.Conv2d(48, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
            nn.Conv2d(96, 96, 3, padding=1), nn.BatchNorm2d(96), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(96, 10))
"""


def _run(cli, tmp_path, monkeypatch, **over):
    (tmp_path / "sens_net.py").write_text(textwrap.dedent(_NET))
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = yaml.safe_load(FAST_YAML)
    cfg.update(model="python:sens_net:build", data="random", input_shape=[3, 48, 48],
               constraints={"speedup": 1.3, "max_accuracy_drop": None}, **over)
    cfg["tune"] = {**cfg["tune"], "lut_points": 2, "max_candidates": 8}
    cfg["recovery"] = {**cfg["recovery"], "steps": 10, "tune_steps": 2}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "r"
    rc, text, err = cli("run", "--config", path, "--out", out)
    assert rc in (0, 1), err
    return out


def test_sensitivity_search_runs_end_to_end_and_reports_its_paths(cli, tmp_path, monkeypatch):
    out = _run(cli, tmp_path, monkeypatch, search="sensitivity")
    rep = json.loads((out / "report.json").read_text())
    sens = rep["tune"]["sensitivity"]
    assert sens["chosen"] in ("uniform", "allocation") and set(sens["landings"]) == {"uniform", "allocation"}
    assert rep["tune"]["lut_calibration"]["model"] == "macs"
    cands = json.loads((out / "candidates.json").read_text())
    assert set(cands["sensitivity"]["damage"]) == set(rep["policy"]["groups"])  # a curve for every group
    assert all(len(c) <= 4 for c in cands["sensitivity"]["damage"].values())  # 2 * lut_points widths at most
    assert "MAC cost model" in (out / "report.md").read_text()


def test_aap_search_runs_end_to_end_with_aaps_own_score(cli, tmp_path, monkeypatch):
    out = _run(cli, tmp_path, monkeypatch, search="aap", criterion="aap")
    cands = json.loads((out / "candidates.json").read_text())
    assert cands["aap"]["states"] > 2 and set(cands["aap"]["share"]) == set(
        json.loads((out / "report.json").read_text())["policy"]["groups"])
