"""``prune.sparsity``: weight masks on top of the channel plan, by a criterion's weight-level form.

Which criteria have one is declared in the criteria registry (``weight_masks=``); the masks
themselves and their application are :mod:`stages.model.masks`.
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping

import torch
from torch import nn

from stages.model.calib import collect_input_stats
from stages.model.masks import (
    MaskSpec,
    WeightMasks,
    apply_masks,
    execution_order,
    mask_in_place,
    sparsity_report,
)
from stages.score import weight_mask_builder


def sparsify(model: nn.Module, inputs: Collection[torch.Tensor], criterion: str, spec: MaskSpec | str,
             ignore: Collection[str] = (), sequential: bool = True,
             bn_after: Mapping[str, str] | None = None) -> tuple[nn.Module, WeightMasks, dict]:
    """Mask a model by Wanda / STADE / stadew weight scores; returns (masked copy, masks, report).

    Args:
        model: The dense model (not modified).
        inputs: Calibration input batches (a list: they are read more than once).
        criterion: A criterion with a weight-level form (``stages.score.weight_criteria()``: wanda,
            stade, stadew, magnitude-l1 / magnitude-l2, alias ``magnitude``).
        spec: ``"0.5"`` (per row), ``"2:4"``, ``"4:8"``, ``"layer:0.5"`` ... (:meth:`MaskSpec.parse`).
        ignore: Layers left dense (pass the classifier head).
        sequential: Layer by layer in execution order, each scored (and compensated) on the
            inputs produced by the already-masked layers before it, as the authors propagate
            pruned activations block by block. ``False``: every layer from the dense model's
            statistics in one pass (one forward instead of one per layer).
        bn_after: Layer -> BN fed only by it, to fold shifts of bias-less layers.

    The report carries :data:`DENSE_RUNTIME_NOTE`: masks do not make dense runtimes faster.
    """
    build = weight_mask_builder(criterion)
    spec = MaskSpec.parse(spec) if isinstance(spec, str) else spec
    inputs = list(inputs)
    if not sequential:
        stats = collect_input_stats(model, inputs)
        masks = build(model, stats, spec, ignore)
        out = apply_masks(model, masks, stats, bn_after=bn_after)
    else:
        out = copy.deepcopy(model).eval()
        names = [n for n, m in out.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d)) and n not in ignore]
        pruned, comp, skipped = {}, set(), {}
        for name in execution_order(out, inputs[0], names):
            stats = collect_input_stats(out, inputs, [name])
            one = build(out, stats, spec, ignore)
            with torch.no_grad():
                mask_in_place(out, one.pruned, stats, one.compensate, bn_after)
            pruned.update(one.pruned)
            comp |= one.compensate
            skipped.update(one.skipped)
        masks = WeightMasks(pruned, spec, frozenset(comp), skipped)
    return out, masks, sparsity_report(out, layers=list(masks.pruned), spec=spec)
