"""BN-scale baseline (Network Slimming, Liu et al. ICCV'17) through Torch-Pruning."""

from __future__ import annotations

import torch

from stages.score.base import Needs, ScoreContext, register


@register("bn-scale", needs=Needs(), granularity="channel",
          source="Torch-Pruning baseline: BNScaleImportance (Liu et al., Network Slimming, ICCV'17)",
          summary="|gamma| of the BatchNorm after each channel (0 for groups without BN)")
def bn_scale(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return ctx.graph.importance("bn_scale")
