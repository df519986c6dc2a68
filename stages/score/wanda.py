"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter; arXiv 2306.11695, locuslab/wanda).

Weight score [CODE, ``lib/prune.py::prune_wanda``, ``lib/layerwrapper.py``]:
``S_ij = |W_ij| * ||X_j||_2``, with ``||X_j||`` the norm of input feature ``j`` over the
calibration tokens (Linear) or, for a Conv2d, over batch x output positions of the unfolded
input tap ``(c, kh, kw)`` the weight multiplies (see :mod:`stages.model.calib`). The
authors keep a running *average over sequences* of per-sequence ``||X_j||^2``; we use the sum
over all samples, which differs by a constant factor per layer and ranks identically.

Forms:

- ``wanda`` (registered, granularity ``channel``) [RECON: the structured form is ours]: a
  channel's score is the sum of the Wanda scores of the consumer weights it feeds (see
  :func:`stages.model.calib.channel_scores` for why the consumer input columns). This is
  the "Wanda-sp" aggregation. Free parameter ``power`` (default 1): the sum is of ``S_ij **
  power``; with ``power=2`` a channel's score is ``||X_j||^2 ||W_:j||^2``, the squared output
  error of dropping it without compensation, which ranks exactly like structured STADE when
  the inputs are zero-mean (with ``power=1`` the two structured forms differ: L1 vs L2 of the
  weight column).
- :func:`wanda_masks`: unstructured per-output-row masks at sparsity ``s`` (each row prunes its
  ``int(cols * s)`` lowest, the authors' default) or N:M (the N lowest of every M consecutive
  inputs per row) [CODE]; other comparison groups via :class:`stages.model.masks.MaskSpec`.

No weight update: Wanda never compensates.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch
from torch import nn

from stages.model.calib import InputStats, channel_scores, per_weight
from stages.model.masks import MaskSpec, WeightMasks, build_masks
from stages.score.base import Needs, ScoreContext, register

POWER = 1.0  # channel form: sum of S_ij ** POWER over the consumer weights a channel feeds [RECON]
SOURCE = "Wanda, Sun et al., arXiv 2306.11695 / ICLR'24, code locuslab/wanda (methods.md §3)"


def weight_scores(name: str, layer: nn.Module, stats: InputStats) -> torch.Tensor:
    """``|W| * ||X_j||`` in the weight's shape (float64)."""
    return layer.weight.detach().to(torch.float64).abs() * per_weight(stats.norm, layer)


def wanda_masks(model: nn.Module, stats: Mapping[str, InputStats], spec: MaskSpec | str = "0.5",
                ignore: Collection[str] = ()) -> WeightMasks:
    """Weight masks (True = prune) by Wanda scores, for every layer in ``stats`` not ignored."""
    spec = MaskSpec.parse(spec) if isinstance(spec, str) else spec
    return build_masks(model, stats, spec, weight_scores, ignore)


@register("wanda", needs=Needs(forward=True), granularity="channel", source=SOURCE,
          summary="|W|*||X|| summed over the consumer input columns each channel feeds (structured Wanda)",
          params={"power": POWER}, weight_masks=wanda_masks)
@torch.no_grad()
def wanda(ctx: ScoreContext, power: float | None = None) -> dict[str, torch.Tensor]:
    power = float(ctx.options.get("power", POWER)) if power is None else power
    inputs = (x for x, _ in ctx.calib_batches())
    score = weight_scores if power == 1 else (lambda n, layer, st: weight_scores(n, layer, st) ** power)
    return channel_scores(ctx.model, ctx.graph.groups(), inputs, score)
