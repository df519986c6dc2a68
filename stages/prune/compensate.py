"""STADE's bias compensation over a pruning plan: :func:`apply_plan_compensated`.

The shift itself (what a removed input contributes, where it goes) is :mod:`stages.model.bias`;
here it is computed for the consumer inputs a plan removes, on the unpruned model, before the
channels are removed.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from stages.model.bias import add_output_shift, bn_successors, compensate_removed_inputs
from stages.model.calib import InputStats, removed_consumer_inputs
from stages.model.graph import GroupInfo, PruneGraph
from stages.prune.plan import PruningPlan, apply_plan


def plan_removed_inputs(groups: Iterable[GroupInfo], model: nn.Module, plan: PruningPlan) -> dict[str, list[int]]:
    """Consumer layer -> input columns a plan removes (the channels not in each group's ``keep``)."""
    remove = {gp.id: [i for i in range(gp.width) if i not in set(gp.keep)] for gp in plan.groups}
    return removed_consumer_inputs(groups, dict(model.named_modules()), remove)


def apply_plan_compensated(model: nn.Module, example_input: torch.Tensor, plan: PruningPlan,
                           stats: Mapping[str, InputStats], layers: Iterable[str] | None = None,
                           fold_into_bn: bool = True) -> nn.Module:
    """:func:`stages.prune.plan.apply_plan` with STADE's bias compensation; input not modified.

    Order: (1) on a copy of the *unpruned* model, compute each consumer's shift from its
    original weights; (2) add it to the copy's biases (or fold it into the following BN);
    (3) let ``apply_plan`` remove the channels, which slices those biases / BN statistics with
    the output channels it removes. Nothing is ever computed from pruned weights.

    Args:
        model: The unpruned model.
        example_input: One batch for tracing.
        plan: The pruning plan.
        stats: Input statistics of the consumer layers on the unpruned model
            (``collect_input_stats(model, calib_inputs(...))``).
        layers: Only compensate these consumers (``stadew``); default all.
        fold_into_bn: Put bias-less layers' shifts into their BatchNorm's running mean.
    """
    work = copy.deepcopy(model).eval()
    groups = PruneGraph(copy.deepcopy(work), example_input, plan.ignore).groups()
    removed = plan_removed_inputs(groups, work, plan)
    if layers is not None:
        keep = set(layers)
        removed = {k: v for k, v in removed.items() if k in keep}
    shifts = compensate_removed_inputs(work, removed, stats)
    add_output_shift(work, shifts, bn_successors(work, example_input) if fold_into_bn else None)
    return apply_plan(work, example_input, plan)
