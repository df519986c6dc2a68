"""Evaluation: what an engine (or a torch module) computes on a split, scored by a registered evaluator.

The latency and memory numbers come from the target (:meth:`targets.base.Target.measure`);
this module gives what the engine computes, run through the engine's own runner, so the number
is the one that ships. The report's record ``M`` is :class:`core.records.Measurement`.

Evaluators live in :data:`EVALUATORS`, like criteria: each declares whether it needs real labels,
its unit and whether higher is better. A data source names its evaluator (``DataBundle.metric``):

- ``top1``: top-1 accuracy (%) of the argmax of the first output against the data's labels;
- ``fidelity``: the same computation against the *unpruned model's* own predictions (data
  without labels, ``--data random``): top-1 agreement with the unpruned model.

Adding an evaluator is one :func:`register` call here (or in a module that imports this one) and
its test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.registry import Registry

EvalFn = Callable[..., float]  # (runner, data: Dataset, batch_size) -> score


@dataclass(frozen=True)
class Evaluator:
    """One registered metric.

    Attributes:
        name: The metric's name (``DataBundle.metric``, report.json's ``accuracy_metric``).
        fn: ``fn(runner, data, batch_size) -> score``.
        needs_labels: Ground-truth labels (else the unpruned model's predictions stand in).
        unit: What the score is in; ``--max-accuracy-drop`` is read in this unit.
        higher_is_better: The direction of the score.
        summary: One line for listings.
    """

    name: str
    fn: EvalFn
    needs_labels: bool
    unit: str
    higher_is_better: bool
    summary: str

    def __call__(self, runner, data: Dataset, batch_size: int = 64) -> float:
        return self.fn(runner, data, batch_size)


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register(name: str, *, needs_labels: bool, unit: str, higher_is_better: bool, summary: str
             ) -> Callable[[EvalFn], EvalFn]:
    """Decorator: register ``fn(runner, data, batch_size) -> score`` as evaluator ``name``."""

    def deco(fn: EvalFn) -> EvalFn:
        EVALUATORS.add(name, Evaluator(name, fn, needs_labels, unit, higher_is_better, summary))
        return fn

    return deco


@register("top1", needs_labels=True, unit="%", higher_is_better=True,
          summary="top-1 accuracy of the first output's argmax against the labels")
def evaluate_top1(runner, data: Dataset, batch_size: int = 64) -> float:
    """Top-1 (in %) of ``runner.run(x)`` logits against the labels of ``data``."""
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        logits = runner.run(x.numpy())
        pred = np.asarray(logits).reshape(len(x), -1).argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(x)
    return 100.0 * correct / max(total, 1)


EVALUATORS.add("fidelity", Evaluator(
    "fidelity", evaluate_top1, needs_labels=False, unit="%", higher_is_better=True,
    summary="top-1 agreement with the unpruned model's predictions (labels are the unpruned model's)"))


def evaluate(metric: str, runner, data: Dataset, batch_size: int = 64) -> float:
    """Score ``runner`` on ``data`` with the registered evaluator ``metric``."""
    return EVALUATORS.get(metric)(runner, data, batch_size)


class TorchRunner:
    """Runs a torch module like an engine runner (for calibration-time checks only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()
