"""First-order Taylor baseline (Molchanov et al. CVPR'19) through Torch-Pruning."""

from __future__ import annotations

import torch

from stages.model.losses import task_loss
from stages.score.base import Needs, ScoreContext, register


@register("taylor", needs=Needs(forward=True, labels=True, gradients=True), granularity="channel",
          source="Torch-Pruning baseline: GroupTaylorImportance (Molchanov et al., CVPR'19)",
          summary="|w * dL/dw| per channel, gradients of the task loss (cross-entropy for classifiers) over "
                  "calibration batches")
def taylor(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    model = ctx.model
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in ctx.calib_batches():
        task_loss(ctx.loss, model(x), x, y).backward()
    try:
        return ctx.graph.importance("taylor")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
