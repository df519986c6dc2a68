"""First-order Taylor baseline (Molchanov et al. CVPR'19) through Torch-Pruning."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from stages.score.base import Needs, ScoreContext, register


@register("taylor", needs=Needs(forward=True, labels=True, gradients=True), granularity="channel",
          source="Torch-Pruning baseline: GroupTaylorImportance (Molchanov et al., CVPR'19)",
          summary="|w * dL/dw| per channel, gradients of the cross-entropy over calibration batches")
def taylor(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    model = ctx.model
    was_training = model.training
    model.eval()
    model.zero_grad(set_to_none=True)
    for x, y in ctx.calib_batches():
        out = model(x)
        target = y if (y >= 0).all() else out.argmax(1).detach()
        F.cross_entropy(out, target).backward()
    try:
        return ctx.graph.importance("taylor")
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
