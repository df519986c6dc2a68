"""The ``cuda`` target's torch runtime: the module on the GPU, eager or CUDA graphs, timed with CUDA events."""

from __future__ import annotations

import copy
import gc
import time
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from core.errors import StageError
from targets.cuda.options import CudaSettings
from targets.timing import Prepared


def torch_module() -> Any:
    import torch

    return torch


@contextmanager
def cudnn_benchmark(torch: Any):
    """cuDNN autotuning on for the measurement (as a deployment would run), the old value restored."""
    old = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = old


def _on_gpu(module: Any, settings: CudaSettings, torch: Any) -> tuple[Any, Any]:
    """A copy of ``module`` on the GPU in the measured precision / layout, and its dtype."""
    dtype = torch.float16 if settings.precision == "fp16" else torch.float32
    m = copy.deepcopy(module).eval().to(device="cuda", dtype=dtype)
    if settings.channels_last:
        m = m.to(memory_format=torch.channels_last)
    return m, dtype


def _input(shape: Sequence[int], dtype: Any, settings: CudaSettings, torch: Any, x: Any = None) -> Any:
    t = (torch.randn(tuple(shape), generator=torch.Generator().manual_seed(0)) if x is None else x)
    t = t.to(device="cuda", dtype=dtype)
    if settings.channels_last and t.dim() == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    return t


def prepare_torch(module: Any, shape: Sequence[int], settings: CudaSettings) -> Prepared:
    """Move a copy to the GPU, run it once, capture a CUDA graph when asked; ``call`` is one forward."""
    torch = torch_module()
    t0 = time.perf_counter()
    m, dtype = _on_gpu(module, settings, torch)
    x = _input(shape, dtype, settings, torch)
    with torch.no_grad():
        t1 = time.perf_counter()
        m(x)
        torch.cuda.synchronize()
        first_ms = (time.perf_counter() - t1) * 1e3
        if not settings.graphs:
            def call() -> object:
                with torch.no_grad():
                    return m(x)
            return Prepared(call, time.perf_counter() - t0, first_ms)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up on a side stream before capture, as the docs ask
            for _ in range(3):
                m(x)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                out = m(x)
        except Exception as e:  # noqa: BLE001 - capture errors come in many types
            raise StageError(f"CUDA graph capture failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}",
                             hint="the model synchronises with the host or allocates dynamically; set graphs: false") \
                from None
        torch.cuda.synchronize()
    holder = {"graph": graph, "out": out, "m": m, "x": x}  # keep the static tensors alive with the graph

    def close() -> None:
        holder.clear()

    return Prepared(graph.replay, time.perf_counter() - t0, first_ms, close)


def torch_memory(module: Any, shape: Sequence[int], settings: CudaSettings) -> dict:
    """GPU memory of one engine alone: weights, peak allocated growth (the record's memory), peak reserved.

    The peaks are taken in steady state: after the first call (cuDNN's autotuning allocates and
    frees trial workspaces then) and the graph capture, the allocator's cache is emptied and its
    peak statistics reset; what stays allocated (weights, static tensors, the graph's pool) counts.
    """
    torch = torch_module()
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    run = prepare_torch(module, shape, settings)
    try:
        run.call()
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        for _ in range(3):
            run.call()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
        reserved = torch.cuda.max_memory_reserved()
    finally:
        run.close()
        del run
        gc.collect()
        torch.cuda.empty_cache()
    params = sum(p.numel() * (2 if settings.precision == "fp16" and p.is_floating_point() else p.element_size())
                 for p in list(module.parameters()) + list(module.buffers()))
    return {"memory_mb": peak / 2**20, "allocated_peak_mb": peak / 2**20, "reserved_peak_mb": reserved / 2**20,
            "weights_mb": params / 2**20, "source": "torch.cuda.max_memory_allocated growth (weights + activations"
                                                   " + graph pool); reserved = caching allocator peak"}


def warm_libraries(torch: Any, settings: CudaSettings) -> None:
    """One small matmul in the measured dtype: cuBLAS allocates its per-stream workspace now."""
    dtype = torch.float16 if settings.precision == "fp16" else torch.float32
    a = torch.ones((64, 64), device="cuda", dtype=dtype)
    (a @ a).sum().item()
    del a


class TorchCudaRunner:
    """``with TorchCudaRunner(module, settings) as r: y = r.run(x)``: eager, in the measured precision."""

    def __init__(self, module: Any, settings: CudaSettings) -> None:
        self.module, self.settings = module, settings
        self._m = None
        self._dtype = None

    def __enter__(self) -> TorchCudaRunner:
        torch = torch_module()
        self._m, self._dtype = _on_gpu(self.module, self.settings, torch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._m = None
        gc.collect()
        torch_module().cuda.empty_cache()

    @property
    def output_names(self) -> list[str]:
        return ["output"]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        torch = torch_module()
        with torch.no_grad():
            out = self._m(_input(x.shape, self._dtype, self.settings, torch, torch.from_numpy(np.asarray(x))))
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.float().cpu().numpy() for o in outs]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]
