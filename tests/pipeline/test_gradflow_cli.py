"""End to end on the embedded default: `--criterion gradient-flow` with soft-mask recovery, then
`--resume` after losing pruned.pt reruns only recovery onward and rebuilds the same weights."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_YAML

SOFT_YAML = (FAST_YAML.replace("recovery: {steps: 60, tune_steps: 0, batch_size: 32}",
                               "recovery: {steps: 8, soft_steps: 4, tune_steps: 0, batch_size: 32}")
             .replace("max_candidates: 6", "max_candidates: 3")
             + "criterion_options: {batches: 1}\n")


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.slow
def test_gradient_flow_with_soft_masks_end_to_end_and_resume(cli, tmp_path):
    assert "soft_steps: 4" in SOFT_YAML and "batches: 1" in SOFT_YAML
    cfg = tmp_path / "c.yaml"
    cfg.write_text(SOFT_YAML)
    out = tmp_path / "r"
    code, _, err = cli("run", "--config", cfg, "--criterion", "gradient-flow", "--out", out, "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((out / "report.json").read_text())
    assert rep["criterion"] == "gradient-flow" and rep["final"]["macs"] < rep["baseline"]["macs"]
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    assert stages["score"]["metrics"]["passes"] == {"forward": 1, "backward": 2}
    rec = stages["recover"]["metrics"]
    assert rec["soft"]["steps"] == 4 and rec["soft"]["mask_max"][-1] == 0.0
    assert rec["soft"]["hard_removal_max_abs"] < 1e-4 and rec["plain"]["steps"] == 4
    blob = torch.load(out / "pruned.pt", weights_only=True)
    assert blob["format"] == "edge-pipeline/pruned-v1"
    first = _sha(out / "pruned.pt")

    (out / "pruned.pt").unlink()
    code2, _, err = cli("run", "--config", cfg, "--criterion", "gradient-flow", "--out", out, "-q", "--resume")
    assert code2 in (0, 1, 3), err
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    for name in ("baseline", "score", "tune", "prune"):
        assert stages[name]["metrics"].get("resumed") is True, name
    assert not stages["recover"]["metrics"].get("resumed")
    assert _sha(out / "pruned.pt") == first  # the soft phase is seeded: same weights again
