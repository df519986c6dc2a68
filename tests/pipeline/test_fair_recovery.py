"""`recovery.loss: pw` through `pipeline run`, and the per-class section every labelled run reports."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow  # 65 s; the PW loss and the per-class report have fast unit tests (test_pw_loss, test_per_group)
def test_pw_recovery_runs_and_the_report_has_per_class_accuracy(cli, fast_config, tmp_path):
    out = tmp_path / "run"
    rc, text, err = cli("run", "--config", fast_config, "--recovery-loss", "pw", "--out", out)
    assert rc in (0, 1, 3), err
    cfg = json.loads((out / "manifest.json").read_text())["header"]["config"]
    assert cfg["recovery"]["loss"] == "pw"
    rep = json.loads((out / "report.json").read_text())
    pc = rep["per_class"]
    assert set(pc) == {"baseline", "final"} and len(pc["baseline"]["accuracy"]) == 10
    assert sum(pc["final"]["samples"].values()) == 450
    assert 0 <= pc["final"]["gap"] <= 100 and pc["final"]["worst"] <= rep["final"]["accuracy"] + 1e-9
    md = (out / "report.md").read_text()
    assert "## Per class" in md and "Worst class" in md
    assert "worst class" in text


def test_pw_needs_class_labels(cli, tmp_path):
    rc, _, err = cli("run", "--data", "random", "--recovery-loss", "pw", "--out", tmp_path / "r")
    assert rc == 2 and "recovery.loss pw needs class labels" in err and "Traceback" not in err
