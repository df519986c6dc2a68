"""Target ``tensorrt``: build a plan with the TensorRT Python API and measure it with CUDA events.

The flow follows NVIDIA's samples (``../shared/research/deploy.md`` section 2)::

    builder -> network (ONNX parser; every parser error collected) -> builder config:
      workspace pool limit, one optimization profile for the dynamic batch, timing cache,
      precision: TRT <= 10 weakly typed (BuilderFlag.FP16 / INT8 + entropy calibrator),
                 TRT >= 11 strongly typed (precision comes from the ONNX tensor types),
      SPARSE_WEIGHTS (2:4 tactics), DLA core + GPU_FALLBACK
    -> build_serialized_network -> plan written plain + sidecar JSON (never a header in the plan)

Measurement: an execution context over torch CUDA buffers, ``execute_async_v3`` on a stream,
CUDA events around each call on that stream, timed with the one protocol of :mod:`targets.timing`
(discarded warm-up round, interleaved rounds, median of per-round ratios).

``tensorrt`` and ``torch.cuda`` are imported inside functions; where TensorRT is missing, the
target table reports it and :func:`require_tensorrt` raises a ConfigError with a hint.
The pure parts (precision dispatch, timing-cache key, option checks, ONNX facts) run anywhere.

Modules: :mod:`~targets.tensorrt.settings` (precision plans, options, cache keys),
:mod:`~targets.tensorrt.calibration` (INT8), :mod:`~targets.tensorrt.build`,
:mod:`~targets.tensorrt.runner` (execution context, batching), :mod:`~targets.tensorrt.target`.
"""

from targets.onnx_facts import OnnxFacts, onnx_facts
from targets.tensorrt.build import build_plan, gpu_identity
from targets.tensorrt.calibration import (
    CalibrationCache,
    CalibrationFeed,
    calibration_batches,
    calibration_cache_path,
    calibration_digest,
)
from targets.tensorrt.runner import TrtRunner, iter_batches, pad_batch, split_batches
from targets.tensorrt.settings import (
    PRECISIONS,
    PrecisionPlan,
    TrtSettings,
    batch_profile,
    precision_plan,
    require_tensorrt,
    timing_cache_key,
    write_plan,
)
from targets.tensorrt.target import TensorRTTarget, parity_check

__all__ = ["PRECISIONS", "CalibrationCache", "CalibrationFeed", "OnnxFacts", "PrecisionPlan", "TensorRTTarget",
           "TrtRunner", "TrtSettings", "batch_profile", "build_plan", "calibration_batches", "calibration_cache_path",
           "calibration_digest", "gpu_identity", "iter_batches", "onnx_facts", "pad_batch", "parity_check",
           "precision_plan", "require_tensorrt", "split_batches", "timing_cache_key", "write_plan"]
