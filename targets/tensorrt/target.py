"""The ``tensorrt`` target: build a plan, measure it with CUDA events (one protocol), run it for accuracy."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.parity import Tolerance, compare_outputs
from targets.base import Engine, MeasureSettings
from targets.tensorrt.build import build_plan, gpu_identity
from targets.tensorrt.runner import TrtRunner
from targets.tensorrt.settings import TrtSettings, require_tensorrt
from targets.timing import interleave_rounds, time_calls, timing_records


def parity_check(trt_outputs: Sequence[np.ndarray], ort_outputs: Sequence[np.ndarray], names: Sequence[str],
                 atol: float = 1e-2, rtol: float = 1e-2) -> dict[str, dict[str, float]]:
    """TensorRT vs ONNX Runtime outputs through the one validator (:func:`core.parity.compare_outputs`).

    Defaults suit FP16 (Polygraphy's 1e-5 defaults are "too strict for FP16/INT8").
    """
    return compare_outputs(ort_outputs, trt_outputs, names, Tolerance(atol, rtol), converted="TensorRT",
                           reference="ONNX Runtime",
                           hint="FP16 overflow is common in norms/softmax: pin those layers to FP32 or use fp32")


class TensorRTTarget:
    """TensorRT on the local GPU (see the module docstring)."""

    name = "tensorrt"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.settings = TrtSettings.from_options(options)

    @property
    def build_inputs(self) -> frozenset[str]:
        """What ``build`` takes beyond the ONNX: INT8 needs calibration samples."""
        return frozenset({"calibration"}) if self.settings.precision == "int8" else frozenset()

    def describe(self, threads: int | None = None) -> str:
        trt = require_tensorrt()
        gpu, cc = gpu_identity()
        return f"tensorrt {trt.__version__} on {gpu} (sm {cc})"

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path,
              calibration: Iterable[Any] | None = None) -> Engine:
        """Build a plan; ``calibration`` (samples, e.g. the calibration split) is read for INT8 only."""
        plan_path = Path(out_dir) / f"{Path(onnx_path).stem}.{self.settings.precision or 'default'}.plan"
        meta = build_plan(Path(onnx_path), plan_path, sample_shape, self.settings, calibration)
        return Engine(self.name, Path(onnx_path), plan_path, plan_path.stat().st_size, meta["build_s"],
                      tuple(sample_shape), {"runtime": f"tensorrt {meta['tensorrt']}", **meta})

    def runner(self, engine: Engine) -> TrtRunner:
        """Accuracy through the engine itself."""
        return TrtRunner(Path(engine.path))

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list:
        """CUDA-event latency on each engine's stream with the one protocol (:mod:`targets.timing`); records
        shaped like the ``cpu`` target's, memory = execution-context device memory + the plan."""
        from contextlib import ExitStack

        with ExitStack() as stack:
            runners = [stack.enter_context(TrtRunner(Path(e.path))) for e in engines]
            shape = (settings.batch, *engines[0].sample_shape)
            runs = [r.prepare(shape) for r in runners]
            timers = [r.timer() for r in runners]
            lat = interleave_rounds(
                len(runs), rounds,
                lambda i: time_calls(runs[i].call, timers[i], settings.warmup_s, settings.min_duration_s,
                                     settings.min_iters),
                lambda i: time_calls(runs[i].call, timers[i], settings.warmup_s, settings.warmup_s, 1))
            dev_mem = [r.device_memory_bytes for r in runners]
        return timing_records(engines, lat, batch=settings.batch, rounds=rounds, measured_on=self.describe(),
                              memory_mb=[(m + (e.engine_bytes or 0)) / 2**20 for m, e in zip(dev_mem, engines)],
                              extra=[{"device_memory_bytes": m,
                                      "latency_source": "CUDA events around execute_async_v3 (GPU time, no H2D/D2H)"}
                                     for m in dev_mem])
