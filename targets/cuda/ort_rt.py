"""The ``cuda`` target's ``ort`` runtime: the ONNX through ONNX Runtime's CUDA execution provider (IOBinding)."""

from __future__ import annotations

import gc
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StageError
from targets.cuda.options import ort_numpy_type, output_shape
from targets.cuda.torch_rt import torch_module
from targets.timing import Prepared


def _ort_session(path: Path, graphs: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    ort.set_default_logger_severity(3)  # graph-optimizer warnings go to the default logger
    cuda = {"device_id": "0"}
    if graphs:
        cuda["enable_cuda_graph"] = "1"
    try:
        sess = ort.InferenceSession(str(path), so, providers=[("CUDAExecutionProvider", cuda), "CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types
        raise StageError(f"ONNX Runtime (CUDA EP{', CUDA graphs' if graphs else ''}) cannot load {Path(path).name}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__}",
                         hint="CUDA graphs need every node on the CUDA EP: try graphs: false" if graphs
                         else "check the export opset and the onnxruntime-gpu install") from None
    if sess.get_providers()[0] != "CUDAExecutionProvider":  # ORT falls back silently when CUDA libs fail to load
        raise StageError(f"ONNX Runtime fell back to {sess.get_providers()[0]} for {Path(path).name}: the CUDA "
                         "execution provider did not load", hint="check the CUDA / cuDNN libraries onnxruntime-gpu "
                                                                 "needs (see its install matrix)")
    return sess


def prepare_ort(path: Path, batch: int, sample_shape: Sequence[int], graphs: bool) -> Prepared:
    """A CUDA-EP session with input and outputs bound on the GPU at fixed addresses."""
    import onnxruntime as ort

    t0 = time.perf_counter()
    sess = _ort_session(path, graphs)
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal([batch, *sample_shape]).astype(ort_numpy_type(inp.type))
    binding = sess.io_binding()
    xv = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
    binding.bind_ortvalue_input(inp.name, xv)
    outs = []
    for o in sess.get_outputs():
        shape = output_shape(o.shape, batch)
        if shape is None:
            if graphs:
                raise ConfigError(f"output {o.name} of {Path(path).name} has symbolic dims {o.shape}: CUDA graphs "
                                  "need fixed output buffers", hint="set graphs: false, or export static shapes")
            binding.bind_output(o.name, "cuda")
            continue
        ov = ort.OrtValue.ortvalue_from_shape_and_type(list(shape), ort_numpy_type(o.type), "cuda", 0)
        binding.bind_ortvalue_output(o.name, ov)
        outs.append(ov)
    holder = {"sess": sess, "binding": binding, "xv": xv, "outs": outs}

    def call() -> object:
        sess.run_with_iobinding(binding)
        return None

    t1 = time.perf_counter()
    call()
    first_ms = (time.perf_counter() - t1) * 1e3
    return Prepared(call, time.perf_counter() - t0, first_ms, holder.clear)


def _device_used_bytes() -> int | None:
    try:
        torch = torch_module()
        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return int(total - free)
    except Exception:  # noqa: BLE001 - memory is optional for the ort runtime
        return None


def ort_memory(path: Path, batch: int, sample_shape: Sequence[int], graphs: bool) -> dict:
    """Device memory growth across session creation and a few runs (device-wide, cudaMemGetInfo)."""
    gc.collect()
    before = _device_used_bytes()
    run = prepare_ort(path, batch, sample_shape, graphs)
    try:
        for _ in range(3):
            run.call()
        after = _device_used_bytes()
    finally:
        run.close()
        del run
        gc.collect()
    grown = None if before is None or after is None else max(0, after - before) / 2**20
    return {"memory_mb": grown, "device_used_growth_mb": grown,
            "source": "cudaMemGetInfo growth, device-wide (includes other processes' changes)"
            if grown is not None else "not measured: torch.cuda is unavailable to read cudaMemGetInfo"}


class OrtCudaRunner:
    """``with OrtCudaRunner(path) as r: y = r.run(x)``: the CUDA EP without CUDA graphs (any batch)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._sess = None

    def __enter__(self) -> OrtCudaRunner:
        self._sess = _ort_session(self.path, graphs=False)
        return self

    def __exit__(self, *exc: object) -> None:
        self._sess = None

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self._sess.get_outputs()]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        inp = self._sess.get_inputs()[0]
        outs = self._sess.run(None, {inp.name: np.ascontiguousarray(x, dtype=ort_numpy_type(inp.type))})
        return [np.asarray(o, dtype=np.float32) for o in outs]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]
