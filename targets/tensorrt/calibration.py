"""INT8 entropy calibration (TensorRT <= 10): batches from the calibration split, the feed, the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError
from core.io import atomic_write_bytes
from targets.tensorrt.settings import require_cuda_torch, slug


def _as_sample(item: Any) -> np.ndarray:
    """One calibration sample as float32: a Dataset's ``(x, label)`` pair gives ``x``."""
    if isinstance(item, (tuple, list)):
        item = item[0]
    if hasattr(item, "detach"):  # a torch tensor (CPU), without importing torch here
        item = item.detach().cpu().numpy()
    return np.asarray(item, dtype=np.float32)


def calibration_batches(samples: Iterable[Any], batch: int, count: int,
                        sample_shape: Sequence[int] | None = None) -> list[np.ndarray]:
    """Up to ``count`` batches of exactly ``batch`` samples each (float32, C-contiguous).

    ``samples`` yields single samples: arrays, CPU tensors, or ``(x, label)`` pairs as the
    pipeline's calibration split (a Dataset) does; only as many as needed are read. A last,
    partial batch is dropped: the calibrator's batch size is fixed (the profile's opt shape).
    Raises ConfigError when not one full batch can be made, or a sample has the wrong shape.
    """
    if batch < 1 or count < 1:
        raise ValueError(f"batch and count must be >= 1, got {batch}, {count}")
    out: list[np.ndarray] = []
    cur: list[np.ndarray] = []
    for item in samples:
        x = _as_sample(item)
        if sample_shape is not None and tuple(x.shape) != tuple(sample_shape):
            raise ConfigError(f"calibration sample has shape {tuple(x.shape)}, the model takes {tuple(sample_shape)}",
                              hint="calibrate with the model's own data")
        cur.append(x)
        if len(cur) == batch:
            out.append(np.ascontiguousarray(np.stack(cur)))
            cur = []
            if len(out) == count:
                break
    if not out:
        raise ConfigError(f"INT8 calibration needs at least one full batch of {batch} samples, got {len(cur)}",
                          hint="use a larger calibration split, or a smaller max_batch (the calibration batch)")
    return out


class CalibrationFeed:
    """Hands out calibration batches one by one (what ``get_batch`` returns), then ``None``."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        if not batches:
            raise ConfigError("no calibration batches", hint="pass the calibration split")
        shapes = {tuple(b.shape) for b in batches}
        if len(shapes) != 1:
            raise ValueError(f"calibration batches differ in shape: {sorted(shapes)}")
        self.batches = [np.ascontiguousarray(b, dtype=np.float32) for b in batches]
        self.shape = shapes.pop()
        self.fed = 0

    @property
    def batch_size(self) -> int:
        return int(self.shape[0])

    def next(self) -> np.ndarray | None:
        if self.fed >= len(self.batches):
            return None
        b = self.batches[self.fed]
        self.fed += 1
        return b

    def reset(self) -> None:
        self.fed = 0


def calibration_digest(batches: Sequence[np.ndarray]) -> str:
    """sha256 of the calibration data (shapes and bytes): a changed set must not reuse a cache."""
    h = hashlib.sha256()
    for b in batches:
        h.update(repr((b.shape, str(b.dtype))).encode())
        h.update(np.ascontiguousarray(b).tobytes())
    return h.hexdigest()


def calibration_cache_path(cache_dir: Path, onnx_sha256: str, trt_version: str, batches: Sequence[np.ndarray],
                           algorithm: str = "entropy2") -> Path:
    """The calibration cache file for one network, TensorRT version, calibrator and calibration set.

    TensorRT leaves invalidation to the application ("if the network or calibration set changes,
    it is the application's responsibility to invalidate the cache"): all of them are in the name.
    """
    shape = "x".join(str(d) for d in batches[0].shape) if batches else "none"
    key = hashlib.sha256("|".join([onnx_sha256, trt_version, algorithm, shape, str(len(batches)),
                                   calibration_digest(batches)]).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"calib-{algorithm}-trt{slug(trt_version)}-{len(batches)}x{shape}-{key}.cache"


@dataclass(frozen=True)
class CalibrationCache:
    """The calibrator's cache file: ``read`` gives its bytes (None when absent or empty), ``write`` is atomic."""

    path: Path

    def read(self) -> bytes | None:
        try:
            data = Path(self.path).read_bytes()
        except FileNotFoundError:
            return None
        return data or None

    def write(self, data: bytes) -> None:
        atomic_write_bytes(Path(self.path), bytes(data))

    @property
    def exists(self) -> bool:
        return self.read() is not None


def make_calibrator(trt, feed: CalibrationFeed, cache: CalibrationCache):
    """An IInt8EntropyCalibrator2 (TensorRT <= 10 implicit INT8) over ``feed``, caching to ``cache``."""
    if not hasattr(trt, "IInt8EntropyCalibrator2"):
        raise ConfigError(f"TensorRT {trt.__version__} has no IInt8EntropyCalibrator2 (implicit INT8 calibration "
                          "was removed)", hint="export a Q/DQ INT8 ONNX (ModelOpt) and build it strongly typed")
    torch = require_cuda_torch()

    class _Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            self._dev = torch.empty(feed.shape, dtype=torch.float32, device="cuda")

        def get_batch_size(self) -> int:
            return feed.batch_size

        def get_batch(self, names):  # TensorRT's signature: device pointers, one per input, or None at the end
            b = feed.next()
            if b is None:
                return None
            self._dev.copy_(torch.from_numpy(b))
            torch.cuda.synchronize()
            return [int(self._dev.data_ptr())]

        def read_calibration_cache(self):
            return cache.read()

        def write_calibration_cache(self, data) -> None:
            cache.write(bytes(data))

    return _Calibrator()
