"""STADE: standard-deviation-aware pruning (Coello de Portugal Mecke et al.; arXiv 2503.22451,
code Coello-dev/STADE, methods.md §2).

Weight score [CODE, ``lib/prune_zoo/stade.py``]: ``S_ij = W_ij^2 * Var(x_j)``, the unbiased
(n - 1) variance of input feature ``j`` over all calibration tokens (Conv2d: over batch x output
positions of each unfolded tap, see :mod:`stages.model.calib`). Rationale: after the bias
compensation ``b_i += sum_{j pruned} W_ij mu_j`` the expected squared error of output ``i`` is
``sum_{j pruned} W_ij^2 Var(x_j)`` for independent inputs; Wanda is the zero-mean case
(``||X_j||^2 / n = mu_j^2 + sigma_j^2``). **The score assumes the compensation is applied**:
use :func:`stages.model.masks.apply_masks` (weight level) or
:func:`stages.prune.compensate.apply_plan_compensated` (channels).

Differences from the authors' code, on purpose:

- the statistics are merged with Chan/Welford updates in float64; the authors' streaming update
  is the ``sum x^2 - n mean^2`` formula in float32 and counts ``inp.shape[1]`` (the sequence
  length) as the batch's samples, right only for batch size 1;
- the bias is computed from the weights **before** masking (their v2 HEAD zeroes first, so its
  compensation is always 0; their v1 ``std.py`` is right);
- their ``column`` comparison indexes with the row count and scatters along the wrong dimension;
  ours (``stages.model.masks``) prunes ``int(rows * s)`` per column.

Variants:

- ``stade``: STADE on every layer.
- ``stadew`` [CODE for LLMs, ``lib/prune_zoo/stadew.py``]: STADE (with compensation) on the
  output projections (``o_proj``, ``down_proj``, ``out_proj``, ``fc2``), Wanda (no compensation)
  on ``q/k/v/up/gate/fc1``. [RECON] beyond OPT/Llama: layers are matched by the glob patterns
  :data:`STADEW_PATTERNS` (BERT's ``attention.output.dense`` and ``output.dense`` added);
  every other layer is Wanda's, so on a CNN without such names ``stadew`` equals ``wanda``.
- The channel (structured) forms of both are ours [RECON]: the sum of the weight scores of the
  consumer input columns a channel feeds, which for STADE is exactly the expected squared
  output error after compensation.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn

from stages.model.calib import InputStats, channel_scores, matches, per_weight
from stages.model.masks import MaskSpec, WeightMasks, build_masks
from stages.score import wanda as _wanda
from stages.score.base import Needs, ScoreContext, register

SOURCE = "STADE, Coello de Portugal Mecke et al., arXiv 2503.22451, code Coello-dev/STADE (methods.md §2)"

# stadew: layers scored (and compensated) by STADE; the rest by Wanda. OPT/Llama names from the
# authors' stadew.py, BERT names added [RECON].
STADEW_PATTERNS: tuple[str, ...] = ("*o_proj", "*down_proj", "*out_proj", "*fc2", "*output.dense")


def weight_scores(name: str, layer: nn.Module, stats: InputStats) -> torch.Tensor:
    """``W^2 * Var(x_j)`` (unbiased variance) in the weight's shape (float64)."""
    return layer.weight.detach().to(torch.float64).square() * per_weight(stats.var, layer)


def stadew_weight_scores(patterns: Iterable[str] = STADEW_PATTERNS):
    """``stadew``'s per-layer choice: STADE where the name matches ``patterns``, else Wanda."""
    patterns = tuple(patterns)

    def score(name: str, layer: nn.Module, stats: InputStats) -> torch.Tensor:
        fn = weight_scores if matches(name, patterns) else _wanda.weight_scores
        return fn(name, layer, stats)

    return score


def stade_masks(model: nn.Module, stats: Mapping[str, InputStats], spec: MaskSpec | str = "0.5",
                ignore: Collection[str] = ()) -> WeightMasks:
    """STADE weight masks (True = prune); every masked layer is marked for compensation."""
    spec = MaskSpec.parse(spec) if isinstance(spec, str) else spec
    return build_masks(model, stats, spec, weight_scores, ignore, compensate=lambda n: True)


def stadew_masks(model: nn.Module, stats: Mapping[str, InputStats], spec: MaskSpec | str = "0.5",
                 ignore: Collection[str] = (), patterns: Iterable[str] = STADEW_PATTERNS) -> WeightMasks:
    """``stadew`` weight masks: only the STADE-scored layers are marked for compensation."""
    spec = MaskSpec.parse(spec) if isinstance(spec, str) else spec
    patterns = tuple(patterns)
    return build_masks(model, stats, spec, stadew_weight_scores(patterns), ignore,
                       compensate=lambda n: matches(n, patterns))


def _linear_and_conv(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def stadew_layers(model: nn.Module, patterns: Iterable[str] = STADEW_PATTERNS) -> list[str]:
    """The layers ``stadew`` scores (and compensates) by STADE: the output projections."""
    patterns = tuple(patterns)
    return [n for n in _linear_and_conv(model) if matches(n, patterns)]


@register("stade", needs=Needs(forward=True), granularity="channel", source=SOURCE,
          summary="W^2*Var(x) summed over the consumer input columns each channel feeds; "
                  "prune with bias compensation (apply_plan_compensated)",
          weight_masks=stade_masks, compensates=_linear_and_conv)
@torch.no_grad()
def stade(ctx: ScoreContext) -> dict[str, torch.Tensor]:
    inputs = (x for x, _ in ctx.calib_batches())
    return channel_scores(ctx.model, ctx.graph.groups(), inputs, weight_scores)


@register("stadew", needs=Needs(forward=True), granularity="channel", source=SOURCE + ", stadew variant",
          summary="STADE on output projections (o_proj/down_proj/out_proj/fc2/output.dense), Wanda elsewhere",
          weight_masks=stadew_masks, compensates=stadew_layers)
@torch.no_grad()
def stadew(ctx: ScoreContext, patterns: Iterable[str] = STADEW_PATTERNS) -> dict[str, torch.Tensor]:
    patterns = tuple(patterns)
    inputs = (x for x, _ in ctx.calib_batches())
    return channel_scores(ctx.model, ctx.graph.groups(), inputs, stadew_weight_scores(patterns),
                          family=lambda n: "stade" if matches(n, patterns) else "wanda")
