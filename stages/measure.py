"""Stage ``measure``: accuracy through the built engine, and the measurement record ``M``.

The latency and memory numbers come from the target (:meth:`targets.base.Target.measure`);
this module adds what the engine computes (top-1 / fidelity on a split, run through the
engine's own runner, so the number is the one that ships) and the model's MACs and params.
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


def measurement_record(timing: dict, *, onnx_bytes: int, params: int, macs: int, accuracy: float | None,
                       metric: str) -> dict:
    """Assemble ``M`` (report.json contract) from a target's timing record plus model facts."""
    m = {
        "latency_ms": timing["latency_ms"],
        "throughput": timing["throughput"],
        "memory_mb": timing["memory_mb"],
        "onnx_bytes": onnx_bytes,
        "engine_bytes": timing.get("engine_bytes"),
        "params": params,
        "macs": macs,
        "accuracy": accuracy,
        "accuracy_metric": metric,
        "measured_on": timing["measured_on"],
    }
    extra = {k: v for k, v in timing.items() if k not in m}
    return {**m, "details": extra}
