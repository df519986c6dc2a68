"""Evaluation: what an engine (or a torch module) computes on a split.

The latency and memory numbers come from the target (:meth:`targets.base.Target.measure`);
this module gives what the engine computes (top-1 / fidelity on a split, run through the
engine's own runner, so the number is the one that ships). The report's record ``M`` is
:class:`core.records.Measurement`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


def evaluate_top1(runner, data: Dataset, batch_size: int = 64) -> float:
    """Top-1 (in %) of ``runner.run(x)`` logits against the labels of ``data``."""
    correct = total = 0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        logits = runner.run(x.numpy())
        pred = np.asarray(logits).reshape(len(x), -1).argmax(1)
        correct += int((pred == y.numpy()).sum())
        total += len(x)
    return 100.0 * correct / max(total, 1)


class TorchRunner:
    """Runs a torch module like an engine runner (for calibration-time checks only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()
