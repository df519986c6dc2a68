"""`prune.sparsity`: weight masks on top of the channel plan, held through recovery, kept by export, reported."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory):
    import subprocess
    import sys

    from tests.conftest import FAST_YAML

    d = tmp_path_factory.mktemp("sparse")
    cfg = d / "c.yaml"
    cfg.write_text(FAST_YAML.replace("steps: 60", "steps: 10").replace("max_candidates: 6", "max_candidates: 2")
                   + "prune: {sparsity: '2:4', sparsity_criterion: wanda}\n")
    out = d / "r"
    p = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--out", str(out), "-q"],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode in (0, 1, 3), p.stderr
    return out


def test_masks_hold_through_recovery_and_export(sparse_run):
    import torch

    masks = torch.load(sparse_run / "masks.pt", weights_only=True)
    assert masks["pattern"] == "2:4" and masks["pruned"]
    pruned = torch.load(sparse_run / "pruned.pt", weights_only=True)  # after recovery
    state = pruned["state_dict"]
    for name, mask in masks["pruned"].items():
        w = state[f"{name}.weight"]
        assert mask.shape == w.shape and bool((w[mask] == 0).all()), f"zeros regrew in {name} during recovery"
        # 2:4 along input channels: exactly 2 of every 4 masked
        per_block = mask.permute(0, 2, 3, 1).reshape(-1, 4).sum(1) if mask.dim() == 4 else mask.reshape(-1, 4).sum(1)
        assert bool((per_block == 2).all())
    model = onnx.load(str(sparse_run / "model.onnx"))
    zeros = sum(int((numpy_helper.to_array(t) == 0).sum()) for t in model.graph.initializer
                if np.issubdtype(numpy_helper.to_array(t).dtype, np.floating))
    assert zeros >= sum(int(m.sum()) for m in masks["pruned"].values())


def test_report_states_sparsity_and_no_dense_speedup(sparse_run):
    rep = json.loads((sparse_run / "report.json").read_text())
    sp = rep["sparsity"]
    assert sp["pattern"] == "2:4" and 0.3 < sp["sparsity"] <= 0.5
    assert sp["dense_layers"]  # the classifier head stays dense
    md = (sparse_run / "report.md").read_text()
    assert "no speedup" in md and "SPARSE_WEIGHTS" in md
