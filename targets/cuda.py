"""Target ``cuda``: latency and memory on an NVIDIA GPU, timed with CUDA events.

Two runtimes (target option ``runtime``):

- ``torch`` (default): the torch module itself on the GPU, eager or replayed from a CUDA graph
  (``graphs: true``: ``torch.cuda.CUDAGraph`` capture after a warm-up on a side stream, then
  ``replay()``), in fp32 or fp16 (``model.half()`` and half inputs), optionally channels-last.
  Every call is bracketed by two ``torch.cuda.Event(enable_timing=True)`` on the current stream
  and synchronised on the second one, so a sample is one call's latency as the GPU saw it
  (eager: including the gaps where the GPU waits for Python to launch the next kernel).
- ``ort``: the ONNX file through ONNX Runtime's ``CUDAExecutionProvider`` (``onnxruntime-gpu``),
  inputs and outputs bound on the GPU (IOBinding), optionally with the EP's CUDA graphs. ONNX
  Runtime runs on its own stream, so a sample is the wall time of ``run_with_iobinding``, which
  returns after the EP synchronised its stream.

The torch runtime measures a torch module, not the ONNX: ``build(onnx_path, ..., module=m)``
(the pipeline's build and measure stages hand the module they exported; see
``Target.build_inputs``) or :meth:`CudaTarget.build_module` from the Python API. The engine is a
snapshot (a deep copy) of the module. An ONNX file without a module is refused with a hint:
``runtime=ort`` measures ONNX files.

Engines measured together are interleaved round by round (A B A B ...) in this process, after a
discarded warm-up round, and the records carry ``ratio_to_first`` exactly like the ``cpu``
target's (:func:`targets.stats.interleaved_records`). Memory is probed per engine alone before
the latency rounds: torch: growth of ``torch.cuda.max_memory_allocated`` over the allocation
before the model was moved to the GPU (weights + activations + CUDA-graph pool), with the peak of
``torch.cuda.max_memory_reserved`` (the caching allocator's pool) beside it; ort: growth of the
device's used memory (``cudaMemGetInfo``, device-wide) across session creation and a few runs.
The CUDA context itself (hundreds of MB) is not counted.

Accuracy (``runner``) runs through the same runtime and precision that was measured.

``torch.cuda`` and ``onnxruntime`` are imported inside functions; option checks, the timing
loops and the record assembly are plain Python and are tested without a GPU.
"""

from __future__ import annotations

import copy
import gc
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StageError, did_you_mean
from targets.base import Engine, MeasureSettings
from targets.stats import interleaved_records

log = logging.getLogger("pipeline.cuda")

RUNTIMES = ("torch", "ort")
PRECISIONS = ("fp32", "fp16")
OPTIONS = frozenset({"runtime", "precision", "graphs", "channels_last", "batch"})
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")
_HINT_ORT = "pip install onnxruntime-gpu in place of onnxruntime; its CUDA major must match the driver's"
_MAX_ROUND_S = 30.0


# --------------------------------------------------------------------------- options


def _flag(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"target option {key} must be true or false, got {value!r}", hint=f"{key}: true")


def _choice(key: str, value: Any, allowed: Sequence[str]) -> str:
    text = str(value).strip().lower()
    if text not in allowed:
        raise ConfigError(f"target option {key} '{value}' is not one of {', '.join(allowed)}."
                          f"{did_you_mean(text, allowed)}", hint=f"{key}: {' | '.join(allowed)}")
    return text


@dataclass(frozen=True)
class CudaSettings:
    """What the ``cuda`` target measures (frozen; built from target options, checked up front).

    Attributes:
        runtime: ``torch`` (the module, eager or CUDA graphs) or ``ort`` (the ONNX, CUDA EP).
        precision: ``fp32`` or ``fp16``. torch: ``module.half()`` and half inputs. ort: the ONNX's
            own types (``fp16`` needs an FP16 ONNX; an FP32 ONNX is not converted).
        graphs: replay a captured CUDA graph (torch) / the CUDA EP's CUDA graphs (ort).
        channels_last: torch only: module and 4-D inputs in ``torch.channels_last``.
        batch: measure at this batch; ``None`` = the caller's ``MeasureSettings.batch``.
    """

    runtime: str = "torch"
    precision: str = "fp32"
    graphs: bool = False
    channels_last: bool = False
    batch: int | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> CudaSettings:
        unknown = sorted(set(options) - OPTIONS)
        if unknown:
            raise ConfigError(f"target 'cuda' does not accept option '{unknown[0]}'."
                              f"{did_you_mean(unknown[0], OPTIONS)}",
                              hint=f"options for cuda: {', '.join(sorted(OPTIONS))}")
        kw: dict[str, Any] = {}
        if options.get("runtime") is not None:
            kw["runtime"] = _choice("runtime", options["runtime"], RUNTIMES)
        if options.get("precision") is not None:
            kw["precision"] = _choice("precision", options["precision"], PRECISIONS)
        for key in ("graphs", "channels_last"):
            if options.get(key) is not None:
                kw[key] = _flag(key, options[key])
        if options.get("batch") is not None:
            v = options["batch"]
            if isinstance(v, bool) or not str(v).strip().isdigit() or int(v) < 1:
                raise ConfigError(f"target option batch must be an integer >= 1, got {v!r}", hint="e.g. batch: 32")
            kw["batch"] = int(v)
        s = cls(**kw)
        if s.runtime == "ort" and s.channels_last:
            raise ConfigError("target option channels_last applies to runtime torch only (ONNX Runtime picks "
                              "its own layouts)", hint="drop channels_last, or use runtime: torch")
        return s

    @property
    def mode(self) -> str:
        return "cuda-graphs" if self.graphs else "eager"


# --------------------------------------------------------------------------- availability


def torch_cuda_unavailable_reason() -> str | None:
    """None when torch can run on a CUDA GPU here, else exactly why not."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return "torch is not installed"
    import torch

    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (torch.version.cuda is None): install a CUDA build"
    if torch.cuda.is_available():
        return None
    why = "torch.cuda.is_available() is False: no CUDA device visible"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"{why} (CUDA_VISIBLE_DEVICES={visible!r} hides every GPU)"
    if not Path("/proc/driver/nvidia/version").exists() and not Path("/etc/nv_tegra_release").exists():
        return f"{why} (no NVIDIA driver loaded: /proc/driver/nvidia/version is absent)"
    return (f"{why} (a driver is there; torch {torch.__version__} is built for CUDA {torch.version.cuda}: check the "
            "driver supports that CUDA, that this process may open the GPU device nodes, and on a Jetson that torch is "
            "NVIDIA's JetPack wheel)")


def ort_cuda_unavailable_reason() -> str | None:
    """None when ONNX Runtime offers the CUDA execution provider here, else why not."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return f"onnxruntime is not installed ({_HINT_ORT})"
    import onnxruntime as ort

    providers = ort.get_available_providers()
    if "CUDAExecutionProvider" not in providers:
        return (f"onnxruntime {ort.__version__} has no CUDAExecutionProvider (available: {', '.join(providers)}; "
                f"{_HINT_ORT})")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1", "none", "NoDevFiles"):
        return f"onnxruntime has the CUDAExecutionProvider, but CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
    return None  # a missing GPU shows when the session is created (it then refuses to fall back to the CPU)


def unavailable_reason(runtime: str) -> str | None:
    return torch_cuda_unavailable_reason() if runtime == "torch" else ort_cuda_unavailable_reason()


# --------------------------------------------------------------------------- timing loops (pure)


class Timer:
    """Times one call in milliseconds. :class:`CudaEventTimer` on a GPU; tests pass fakes."""

    def time(self, call: Callable[[], object]) -> float:
        raise NotImplementedError

    def sync(self) -> None:
        """Wait until everything launched so far has finished."""


class WallTimer(Timer):
    """``perf_counter`` around a call that returns only when its work is done (ORT's ``run``)."""

    def __init__(self, sync: Callable[[], None] | None = None) -> None:
        self._sync = sync

    def time(self, call: Callable[[], object]) -> float:
        t = time.perf_counter()
        call()
        if self._sync is not None:
            self._sync()
        return (time.perf_counter() - t) * 1e3

    def sync(self) -> None:
        if self._sync is not None:
            self._sync()


class CudaEventTimer(Timer):
    """Two CUDA events around the call on the current stream; waits on the second one."""

    def __init__(self, torch: Any) -> None:
        self._torch = torch
        self._start = torch.cuda.Event(enable_timing=True)
        self._end = torch.cuda.Event(enable_timing=True)

    def time(self, call: Callable[[], object]) -> float:
        self._start.record()
        call()
        self._end.record()
        self._end.synchronize()
        return float(self._start.elapsed_time(self._end))

    def sync(self) -> None:
        self._torch.cuda.synchronize()


def time_calls(call: Callable[[], object], timer: Timer, warmup_s: float, min_s: float, min_n: int,
               clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], float]:
    """Warm up for ``warmup_s``, then time single calls until both ``min_s`` and ``min_n`` are reached.

    A round never runs longer than ``max(10 * min_s, 30 s)``. Returns (per-call ms, wall seconds).
    """
    end = clock() + warmup_s
    while clock() < end:
        call()
    timer.sync()
    samples: list[float] = []
    start = clock()
    cap = max(10 * min_s, _MAX_ROUND_S)
    while True:
        samples.append(timer.time(call))
        now = clock()
        if (now - start >= min_s and len(samples) >= min_n) or now - start >= cap:
            return samples, now - start


@dataclass
class Prepared:
    """One engine ready to be timed: ``call`` runs it once on its fixed input."""

    call: Callable[[], object]
    setup_s: float
    first_run_ms: float
    close: Callable[[], None] = lambda: None


def interleave(runs: Sequence[Prepared], settings: MeasureSettings, rounds: int, timer: Timer,
               clock: Callable[[], float] = time.perf_counter) -> dict:
    """Time prepared engines round by round (A B A B ...) after one discarded round each.

    Returns the latency dict :func:`targets.stats.interleaved_records` reads (the shape
    ``ort_worker``'s latency mode prints).
    """
    for r in runs:  # discarded: clocks, caches and allocators settle
        time_calls(r.call, timer, settings.warmup_s, settings.warmup_s, 1, clock)
    per: list[list[list[float]]] = [[] for _ in runs]
    walls = [0.0] * len(runs)
    for _ in range(rounds):
        for i, r in enumerate(runs):
            samples, wall = time_calls(r.call, timer, settings.warmup_s, settings.min_duration_s,
                                       settings.min_iters, clock)
            per[i].append(samples)
            walls[i] += wall
    return {"rounds": per, "wall_s": walls, "session_create_s": [r.setup_s for r in runs],
            "first_run_ms": [r.first_run_ms for r in runs]}


def cuda_records(engines: Sequence[Engine], lat: dict, memory: Sequence[Mapping[str, Any]], batch: int, rounds: int,
                 measured_on: str, extra: Mapping[str, Any]) -> list[dict]:
    """The ``cpu`` target's record, with GPU memory in place of RSS, plus ``extra`` and ``cuda_memory``.

    ``memory[i]["memory_mb"]`` becomes ``memory_mb``; the whole dict is kept as ``cuda_memory``.
    ``ratio_to_first`` keeps the ``cpu`` target's meaning (median of per-round ratios).
    """
    peaks = [float(m.get("memory_mb") or 0.0) for m in memory]
    records = interleaved_records(engines, lat, peaks, 0.0, batch, 0, rounds, measured_on)
    for rec, mem in zip(records, memory):
        rec.update({"peak_rss_mb": None, "empty_rss_mb": None, "threads": None,
                    "memory_mb": mem.get("memory_mb"), "cuda_memory": dict(mem), **extra})
    return records


def output_shape(dims: Sequence[Any], batch: int) -> tuple[int, ...] | None:
    """An ORT output's shape at ``batch``: a symbolic first dim is the batch; other symbols -> None."""
    out = []
    for i, d in enumerate(dims):
        if isinstance(d, int) and d > 0:
            out.append(d)
        elif i == 0:
            out.append(int(batch))
        else:
            return None
    return tuple(out)


def ort_numpy_type(type_str: str) -> Any:
    """``'tensor(float16)'`` -> ``np.float16``; only the float types the exports use."""
    table = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64}
    if type_str not in table:
        raise ConfigError(f"ONNX input/output type {type_str} is not supported by the cuda target's ort runtime",
                          hint="export float inputs and outputs")
    return table[type_str]


def no_module_error(onnx_path: Path) -> ConfigError:
    return ConfigError(
        f"the cuda target's torch runtime measures torch modules, and {Path(onnx_path).name} came without one "
        "(only the pipeline's build and measure stages and the Python API hand a module over)",
        hint="set target option runtime: ort (needs onnxruntime-gpu) to measure ONNX files on the GPU, or call "
             "CudaTarget.build_module(module, ...) / build(..., module=...); see docs/cuda.md")


# --------------------------------------------------------------------------- torch runtime (lazy)


def _torch() -> Any:
    import torch

    return torch


@contextmanager
def _cudnn_benchmark(torch: Any):
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
    torch = _torch()
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
    torch = _torch()
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


def _warm_libraries(torch: Any, settings: CudaSettings) -> None:
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
        torch = _torch()
        self._m, self._dtype = _on_gpu(self.module, self.settings, torch)
        return self

    def __exit__(self, *exc: object) -> None:
        self._m = None
        gc.collect()
        _torch().cuda.empty_cache()

    @property
    def output_names(self) -> list[str]:
        return ["output"]

    def run_all(self, x: np.ndarray) -> list[np.ndarray]:
        torch = _torch()
        with torch.no_grad():
            out = self._m(_input(x.shape, self._dtype, self.settings, torch, torch.from_numpy(np.asarray(x))))
        outs = [out] if isinstance(out, torch.Tensor) else list(out)
        return [o.float().cpu().numpy() for o in outs]

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.run_all(x)[0]


# --------------------------------------------------------------------------- ort runtime (lazy)


def _ort_session(path: Path, graphs: bool) -> Any:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
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
        torch = _torch()
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


# --------------------------------------------------------------------------- the target


class CudaTarget:
    """torch CUDA or ONNX Runtime CUDA EP on the local GPU (see the module docstring).

    Creating it checks options only; use :func:`targets.get_target` to also check the GPU.
    """

    name = "cuda"

    def __init__(self, options: Mapping[str, Any]) -> None:
        self.settings = CudaSettings.from_options(options)
        self._modules: dict[str, Any] = {}  # engine key -> module snapshot (torch runtime)

    @property
    def build_inputs(self) -> frozenset[str]:
        """What ``build`` takes beyond the ONNX: the torch runtime needs the module itself."""
        return frozenset({"module"}) if self.settings.runtime == "torch" else frozenset()

    # -- description
    def _gpu(self) -> str:
        try:
            torch = _torch()
            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(torch.cuda.current_device())
                return f"{p.name} (sm {p.major}.{p.minor}, CUDA {torch.version.cuda})"
        except Exception:  # noqa: BLE001
            pass
        return "GPU 0"

    def describe(self, threads: int | None = None) -> str:
        s = self.settings
        if s.runtime == "torch":
            torch = _torch()
            layout = ", channels_last" if s.channels_last else ""
            what = f"torch {torch.__version__} {s.mode} {s.precision}{layout}"
        else:
            import onnxruntime as ort

            what = f"onnxruntime {ort.__version__} CUDAExecutionProvider{' + CUDA graphs' if s.graphs else ''}"
        batch = f", batch {s.batch}" if s.batch else ""
        return f"cuda: {what}{batch} on {self._gpu()}"

    def _meta(self, **more: Any) -> dict:
        s = self.settings
        rt = "torch" if s.runtime == "torch" else "onnxruntime CUDAExecutionProvider"
        return {"runtime": f"{rt} {s.mode} {s.precision}", "cuda_runtime": s.runtime, "precision": s.precision,
                "graphs": s.graphs, "channels_last": s.channels_last, **more}

    # -- build
    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path, module: Any = None) -> Engine:
        """torch: snapshot ``module`` (required) and check it runs on the GPU; ort: load the ONNX on the CUDA EP."""
        if self.settings.runtime == "torch":
            if module is None:
                raise no_module_error(onnx_path)
            return self._build_torch(module, sample_shape, Path(onnx_path), str(onnx_path))
        return self._build_ort(Path(onnx_path), sample_shape)

    def build_module(self, module: Any, sample_shape: tuple[int, ...], name: str = "model") -> Engine:
        """Python API: an engine straight from a torch module (no ONNX); ``name`` labels it."""
        if self.settings.runtime != "torch":
            raise ConfigError("build_module needs runtime torch", hint="runtime: torch, or build(onnx_path)")
        return self._build_torch(module, sample_shape, Path(name), None)

    def _build_torch(self, module: Any, sample_shape: tuple[int, ...], label: Path, onnx: str | None) -> Engine:
        t0 = time.perf_counter()
        snapshot = copy.deepcopy(module).cpu().eval()
        key = uuid.uuid4().hex
        self._check_forward(snapshot, sample_shape, label.name)
        self._modules[key] = snapshot
        return Engine(self.name, label, None, None, time.perf_counter() - t0, tuple(sample_shape),
                      self._meta(module_key=key, onnx=onnx, source="torch module (snapshot at build)"))

    def _check_forward(self, module: Any, sample_shape: tuple[int, ...], label: str) -> None:
        """One forward pass on the GPU in the measured precision: fails early, and on fp16 overflow."""
        with TorchCudaRunner(module, self.settings) as r:
            x = np.random.default_rng(0).standard_normal((1, *sample_shape)).astype(np.float32)
            try:
                outs = r.run_all(x)
            except Exception as e:  # noqa: BLE001
                raise StageError(f"{label} does not run on the GPU ({self.settings.precision}): {type(e).__name__}: "
                                 f"{str(e).splitlines()[0][:200]}", hint="check the model runs on CUDA") from None
        if not all(np.isfinite(o).all() for o in outs):
            raise StageError(f"{label} gives NaN/inf on the GPU in {self.settings.precision}",
                             hint="fp16 overflows in this model: use precision fp32" if self.settings.precision
                             == "fp16" else "check the model")

    def _build_ort(self, onnx_path: Path, sample_shape: tuple[int, ...]) -> Engine:
        from targets.tensorrt import onnx_facts

        facts = onnx_facts(onnx_path)
        if self.settings.precision == "fp16" and not facts.has_fp16:
            raise ConfigError(f"runtime ort runs the ONNX's own types and {onnx_path.name} is FP32: precision fp16 "
                              "is not a switch there", hint="use runtime: torch for fp16, or export an FP16 ONNX")
        t0 = time.perf_counter()
        run = prepare_ort(onnx_path, 1, sample_shape, graphs=False)
        run.close()
        import onnxruntime as ort

        return Engine(self.name, onnx_path, None, None, time.perf_counter() - t0, tuple(sample_shape),
                      self._meta(onnx=str(onnx_path), onnxruntime=ort.__version__,
                                 onnx_precision="fp16" if facts.has_fp16 else "fp32"))

    def _module(self, engine: Engine) -> Any:
        key = engine.meta.get("module_key")
        if key not in self._modules:
            raise StageError(f"engine {Path(engine.onnx_path).name} was not built by this cuda target",
                             hint="build and measure with the same target object")
        return self._modules[key]

    # -- accuracy
    def runner(self, engine: Engine) -> AbstractContextManager:
        """Accuracy through what was measured: the module in its precision (torch) or the CUDA EP (ort)."""
        if self.settings.runtime == "torch":
            return TorchCudaRunner(self._module(engine), self.settings)
        return OrtCudaRunner(Path(engine.onnx_path))

    # -- measure
    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]:
        """Memory of each engine alone, then interleaved CUDA-timed rounds; records like the ``cpu`` target's."""
        s = self.settings
        batch = s.batch or settings.batch
        if s.runtime == "torch":
            torch = _torch()
            modules = [self._module(e) for e in engines]
            with _cudnn_benchmark(torch):
                _warm_libraries(torch, s)  # cuBLAS's workspace would otherwise count for the first engine only
                memory = [torch_memory(m, (batch, *e.sample_shape), s) for m, e in zip(modules, engines)]
                runs: list[Prepared] = []
                try:
                    for m, e in zip(modules, engines):
                        runs.append(prepare_torch(m, (batch, *e.sample_shape), s))
                    lat = interleave(runs, settings, rounds, CudaEventTimer(torch))
                finally:
                    for r in runs:
                        r.close()
                    runs.clear()
                    gc.collect()
                    torch.cuda.empty_cache()
            source = ("CUDA events around each call on the current stream, synchronised per call ("
                      + ("CUDA graph replay" if s.graphs else "eager: includes kernel-launch gaps") + ")")
            extra = {"cudnn_benchmark": True, "tf32_matmul": bool(torch.backends.cuda.matmul.allow_tf32),
                     "tf32_cudnn": bool(torch.backends.cudnn.allow_tf32)}
        else:
            memory = [ort_memory(Path(e.onnx_path), batch, e.sample_shape, s.graphs) for e in engines]
            runs = []
            try:
                for e in engines:
                    runs.append(prepare_ort(Path(e.onnx_path), batch, e.sample_shape, s.graphs))
                lat = interleave(runs, settings, rounds, WallTimer())
            finally:
                for r in runs:
                    r.close()
            source = "wall time of run_with_iobinding (inputs/outputs on the GPU; the CUDA EP syncs its stream)"
            extra = {}
        extra = {"runtime": s.runtime, "mode": s.mode, "precision": s.precision, "channels_last": s.channels_last,
                 "latency_source": source, **extra}
        return cuda_records(engines, lat, memory, batch, rounds, self.describe(), extra)


def make_cuda(options: Mapping[str, Any]) -> CudaTarget:
    """Factory for the target table: options first, then the chosen runtime's availability."""
    settings = CudaSettings.from_options(options)
    why = unavailable_reason(settings.runtime)
    if why is not None:
        other = "ort" if settings.runtime == "torch" else "torch"
        raise ConfigError(f"target 'cuda' (runtime {settings.runtime}) is not available here: {why}",
                          hint=f"run `pipeline targets`; runtime {other} may work here, --target cpu runs anywhere")
    return CudaTarget(options)
