"""An execution context over torch CUDA buffers: inference for accuracy, prepared calls for timing."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import StageError
from targets.tensorrt.settings import require_cuda_torch, require_tensorrt, trt_dtype_to_torch
from targets.timing import CudaEventTimer, Prepared


class TrtRunner:
    """``with TrtRunner(plan) as r: y = r.run(x)``: an execution context over torch CUDA buffers."""

    def __init__(self, plan_path: Path) -> None:
        self.plan_path = Path(plan_path)
        self._ctx = None

    def __enter__(self) -> TrtRunner:
        trt = require_tensorrt()
        self._torch = torch = require_cuda_torch()
        self._trt = trt
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(self.plan_path.read_bytes())
        if self.engine is None:
            raise StageError(f"TensorRT cannot load {self.plan_path.name}",
                             hint="plans only load on the GPU and TensorRT version that built them; rebuild")
        self._ctx = self.engine.create_execution_context()
        self._stream = torch.cuda.Stream()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        self._buffers: dict[str, Any] = {}
        self._batch = None
        return self

    def __exit__(self, *exc: object) -> None:
        self._ctx = None
        self._buffers = {}

    @property
    def device_memory_bytes(self) -> int:
        e = self.engine
        return int(getattr(e, "device_memory_size_v2", None) or e.device_memory_size)

    def _bind(self, shape: Sequence[int]) -> None:
        torch, trt = self._torch, self._trt
        if self._batch == tuple(shape):
            return
        name = self.inputs[0]
        self._ctx.set_input_shape(name, tuple(shape))
        for n in self.inputs + self.outputs:
            shp = tuple(self._ctx.get_tensor_shape(n))
            dt = trt_dtype_to_torch(trt, torch, self.engine.get_tensor_dtype(n))
            self._buffers[n] = torch.zeros(shp, dtype=dt, device="cuda")
            self._ctx.set_tensor_address(n, int(self._buffers[n].data_ptr()))
        self._batch = tuple(shape)

    def execute(self) -> None:
        if not self._ctx.execute_async_v3(self._stream.cuda_stream):
            raise StageError("TensorRT execution failed", hint="see logs/pipeline.log")

    def batch_range(self) -> tuple[int, int, bool]:
        """(smallest, largest batch, static?) the engine accepts on its first input (profile 0)."""
        name = self.inputs[0]
        first = int(self.engine.get_tensor_shape(name)[0])
        if first > 0:
            return first, first, True
        lo, _, hi = self.engine.get_tensor_profile_shape(name, 0)
        return int(lo[0]), int(hi[0]), False

    def _run_chunk(self, x: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        self._bind(x.shape)
        inp = self._buffers[self.inputs[0]]
        with torch.cuda.stream(self._stream):
            inp.copy_(torch.from_numpy(np.ascontiguousarray(x)).to(inp.dtype), non_blocking=False)
            self.execute()
        self._stream.synchronize()
        return [self._buffers[n].float().cpu().numpy() for n in self.outputs]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        """All outputs for a batch of any size: split into the engine's batch range (padded if static)."""
        lo, hi, static = self.batch_range()
        parts: list[list[np.ndarray]] = []
        for a, b in split_batches(len(x), hi):
            chunk, n = pad_batch(x[a:b], lo, hi if static else b - a)
            parts.append([o[:n] for o in self._run_chunk(chunk)])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(self.outputs))]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]

    def prepare(self, shape: Sequence[int]) -> Prepared:
        """One call at ``shape`` on random inputs, for :func:`targets.timing.interleave` (GPU time: pair it
        with :meth:`timer`)."""
        self._bind(shape)
        self._buffers[self.inputs[0]].normal_()
        return Prepared(self.execute, 0.0, 0.0)

    def timer(self) -> CudaEventTimer:
        """CUDA events on this runner's stream: the timer for :meth:`prepare`'s calls."""
        return CudaEventTimer(self._torch, self._stream)


def split_batches(n: int, max_batch: int) -> list[tuple[int, int]]:
    """``[(start, end), ...]`` covering ``n`` samples in chunks of at most ``max_batch``."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    return [(a, min(a + max_batch, n)) for a in range(0, n, max_batch)]


def pad_batch(x: np.ndarray, min_batch: int, size: int) -> tuple[np.ndarray, int]:
    """``x`` zero-padded to ``max(len(x), min_batch, size)`` rows for a static-batch engine; returns (x, real rows)."""
    n = len(x)
    want = max(n, min_batch, size)
    if want == n:
        return x, n
    pad = np.zeros((want - n, *x.shape[1:]), dtype=x.dtype)
    return np.concatenate([x, pad]), n


def iter_batches(x: np.ndarray, batch: int) -> Iterator[np.ndarray]:
    for i in range(0, len(x), batch):
        yield x[i:i + batch]
