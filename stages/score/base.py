"""The criterion interface. A criterion produces per-channel scores for each prunable group
(higher = more important = kept first); it never prunes by itself.

Adding a criterion is one new file in this package that calls :func:`register`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from pipeline.registry import Registry
from stages.prune.tp_adapter import PruneGraph


@dataclass(frozen=True)
class Needs:
    """What a criterion consumes, beyond the weights."""

    forward: bool = False  # calibration forward passes
    labels: bool = False  # ground-truth labels (else the model's own predictions serve)
    gradients: bool = False  # backward passes


@dataclass
class ScoreContext:
    """What a criterion may look at. ``graph`` is built on ``model``; do not prune through it."""

    model: nn.Module
    graph: PruneGraph
    calib: Dataset
    batches: int = 4
    batch_size: int = 64
    seed: int = 0

    def loader(self) -> DataLoader:
        return DataLoader(self.calib, batch_size=self.batch_size, shuffle=False)

    def calib_batches(self):
        for i, (x, y) in enumerate(self.loader()):
            if i >= self.batches:
                break
            yield x, y


ScoreFn = Callable[[ScoreContext], dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: ScoreFn
    needs: Needs
    granularity: Literal["channel", "head", "layer", "weight", "N:M"]
    source: str
    summary: str

    def __call__(self, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        return self.fn(ctx)


CRITERIA: Registry[Criterion] = Registry("criterion", "criteria")


def register(name: str, *, needs: Needs, granularity: str, source: str, summary: str) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register a score function as criterion ``name``."""

    def deco(fn: ScoreFn) -> ScoreFn:
        CRITERIA.add(name, Criterion(name, fn, needs, granularity, source, summary))  # type: ignore[arg-type]
        return fn

    return deco
