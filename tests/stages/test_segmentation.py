"""torchvision segmentation models (dict outputs) through load → prune → export → parity, the seg-agreement
evaluator, and the one-line refusal of torchvision's detection models. Random weights: structure only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import SpecError
from stages.evaluate import EVALUATORS
from stages.export import ExportSettings, check_parity, export_onnx
from stages.load.models import ModelRequest, load_model
from stages.model.graph import PruneGraph
from stages.prune.plan import apply_plan, make_plan, uniform_ratios

SHAPE = (3, 96, 96)


@pytest.mark.parametrize("arch", ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"])
def test_segmentation_model_prunes_and_exports_its_out_logits(arch, tmp_path):
    from targets import get_target
    from targets.base import build_engine

    lm = load_model(ModelRequest(f"torchvision:{arch}", input_shape=SHAPE))
    assert lm.metric == "seg-agreement" and lm.task == "segmentation"
    ex = torch.zeros(2, *SHAPE)
    graph = PruneGraph(lm.module, ex)
    groups = graph.groups()
    plan = make_plan(groups, graph.importance("magnitude", p=2), uniform_ratios(groups, 0.4), 8)
    pruned = apply_plan(lm.module, ex, plan)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        assert pruned(x).shape == lm.module(x).shape == (2, 21, 96, 96)
    path = tmp_path / "m.onnx"
    export_onnx(pruned, SHAPE, path, ExportSettings())
    target = get_target("cpu", {})
    with target.runner(build_engine(target, path, SHAPE, tmp_path)) as r:
        check_parity(pruned, r, x, 1e-3, 1e-3)


def test_seg_agreement_counts_pixels():
    class Runner:
        def run(self, x):
            out = np.zeros((len(x), 3, 4, 4), dtype=np.float32)
            out[:, 1] = 1.0
            out[:, 2, 0, :] = 2.0  # the first row says class 2
            return out

    y = torch.ones(2, 4, 4, dtype=torch.long)
    data = torch.utils.data.TensorDataset(torch.zeros(2, 3, 4, 4), y)
    assert EVALUATORS.get("seg-agreement")(Runner(), data) == pytest.approx(75.0)


@pytest.mark.parametrize("arch", ["fasterrcnn_mobilenet_v3_large_320_fpn", "ssdlite320_mobilenet_v3_large", "raft_small"])
def test_torchvision_detection_models_are_refused_in_one_line(arch):
    with pytest.raises(SpecError, match="list of per-image results"):
        load_model(ModelRequest(f"torchvision:{arch}"))
