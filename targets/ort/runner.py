"""In-process ONNX Runtime runner: parity checks and accuracy through the engine.

Latency is never measured here (see :mod:`targets.ort.worker`, which runs in a fresh process).
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import numpy as np

from targets.ort.worker import feed_of


class OrtRunner:
    """``with OrtRunner(path, threads) as r: y = r.run(x)``; the session is created on enter.

    Args:
        path: ONNX file.
        threads: intra-op threads (None = ONNX Runtime's default).
        optimization: "all", "extended", "basic" or "disable".
    """

    def __init__(self, path: Path, threads: int | None = None, optimization: str = "all") -> None:
        self.path = Path(path)
        self.threads = threads
        self.optimization = optimization
        self._sess = None

    def __enter__(self) -> OrtRunner:
        import onnxruntime as ort

        levels = {
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        }
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.optimization]
        so.log_severity_level = 3
        ort.set_default_logger_severity(3)  # graph-optimizer warnings go to the default logger
        if self.threads:
            so.intra_op_num_threads = self.threads
        self._sess = ort.InferenceSession(str(self.path), so, providers=["CPUExecutionProvider"])
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None) -> None:
        self._sess = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._sess.get_outputs()]

    @property
    def input_names(self) -> list[str]:
        return [i.name for i in self._sess.get_inputs()]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs for one (packed) input batch: several inputs take ``x[:, i]`` each."""
        return self._sess.run(None, feed_of(self._sess.get_inputs(), x))

    def run(self, x: np.ndarray) -> np.ndarray:
        """The first output for one input batch."""
        return self.run_all(x)[0]
