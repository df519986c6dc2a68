"""One entry point for "make the pruned model of this plan", shared by the search and the prune stage.

It applies the plan to a copy of the model, with STADE's bias compensation when the criterion
asks for it (computed from the unpruned weights, before anything is removed), then re-estimates
BatchNorm statistics on calibration data.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from stages.prune.plan import PruningPlan, apply_plan, recalibrate_bn


@dataclass(frozen=True)
class PruneSettings:
    criterion: str
    recalibrate_bn: bool = True
    recalibrate_batches: int = 8
    stats_batches: int = 4


class Pruner:
    """Builds pruned models of one unpruned model; calibration statistics are collected once."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor, calib: Dataset, settings: PruneSettings) -> None:
        self.model, self.example, self.calib, self.settings = model, example_input, calib, settings
        self._stats = None
        self._layers: list[str] = []

    def _compensation(self):
        """Statistics for the criterion's bias compensation (its ``compensates`` declaration), once."""
        from stages.model.calib import calib_inputs, collect_input_stats
        from stages.score import compensation_layers

        if self._stats is None:
            self._layers = compensation_layers(self.settings.criterion, self.model)
            if not self._layers:
                return None, []
            self._stats = collect_input_stats(self.model, calib_inputs(self.calib, self.settings.stats_batches),
                                              self._layers)
        return self._stats, self._layers

    def build(self, plan: PruningPlan) -> nn.Module:
        """The pruned copy (the unpruned model is never modified)."""
        stats, layers = self._compensation()
        if stats is not None:
            from stages.prune.compensate import apply_plan_compensated

            pruned = apply_plan_compensated(self.model, self.example, plan, stats, layers=layers)
        else:
            pruned = apply_plan(self.model, self.example, plan)
        if self.settings.recalibrate_bn:
            recalibrate_bn(pruned, self.calib, self.settings.recalibrate_batches)
        return pruned
