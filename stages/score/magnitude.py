"""Weight-magnitude baselines through Torch-Pruning's group importance (Li et al. 2017; DepGraph)."""

from __future__ import annotations

import torch

from stages.model.masks import magnitude_masks
from stages.score.base import Needs, ScoreContext, register

_SOURCE = "Torch-Pruning baseline: GroupMagnitudeImportance (Li et al., ICLR'17; Fang et al., DepGraph, CVPR'23)"


# Weight-level form: |W_ij| (an L1 and an L2 norm of one weight rank alike). ``magnitude`` is the
# name prune.sparsity_criterion has always taken for it: an alias of magnitude-l2.
@register("magnitude-l1", needs=Needs(), granularity="channel", source=_SOURCE,
          summary="L1 norm of each channel's weights, summed over the coupled layers of its group",
          weight_masks=magnitude_masks)
def magnitude_l1(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return ctx.graph.importance("magnitude", p=1)


@register("magnitude-l2", needs=Needs(), granularity="channel", source=_SOURCE,
          summary="L2 norm of each channel's weights, summed over the coupled layers of its group",
          weight_masks=magnitude_masks, aliases=("magnitude",))
def magnitude_l2(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    return ctx.graph.importance("magnitude", p=2)
