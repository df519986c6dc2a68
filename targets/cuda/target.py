"""The ``cuda`` target: build (snapshot the module / load the ONNX), measure interleaved, run for accuracy."""

from __future__ import annotations

import copy
import gc
import time
import uuid
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import numpy as np

from core.errors import ConfigError, StageError
from targets.base import Engine, MeasureSettings
from targets.cuda.options import CudaSettings, no_module_error, unavailable_reason
from targets.cuda.ort_rt import OrtCudaRunner, ort_memory, prepare_ort
from targets.cuda.torch_rt import (
    TorchCudaRunner,
    cudnn_benchmark,
    prepare_torch,
    torch_memory,
    torch_module,
    warm_libraries,
)
from targets.timing import CudaEventTimer, Prepared, WallTimer, interleave, timing_records


def cuda_records(engines: Sequence[Engine], lat: dict, memory: Sequence[Mapping[str, Any]], batch: int, rounds: int,
                 measured_on: str, extra: Mapping[str, Any]) -> list:
    """The ``cpu`` target's record, with GPU memory in place of RSS, plus ``extra`` and ``cuda_memory``.

    ``memory[i]["memory_mb"]`` becomes ``memory_mb``; the whole dict is kept as ``cuda_memory``.
    ``ratio_to_first`` keeps the ``cpu`` target's meaning (median of per-round ratios).
    """
    return timing_records(engines, lat, batch=batch, rounds=rounds, measured_on=measured_on,
                          memory_mb=[m.get("memory_mb") for m in memory],
                          extra=[{"cuda_memory": dict(m), **extra} for m in memory])


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
            torch = torch_module()
            if torch.cuda.is_available():
                p = torch.cuda.get_device_properties(torch.cuda.current_device())
                return f"{p.name} (sm {p.major}.{p.minor}, CUDA {torch.version.cuda})"
        except Exception:  # noqa: BLE001
            pass
        return "GPU 0"

    def describe(self, threads: int | None = None) -> str:
        s = self.settings
        if s.runtime == "torch":
            torch = torch_module()
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
        from targets.onnx_facts import onnx_facts

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
            torch = torch_module()
            modules = [self._module(e) for e in engines]
            with cudnn_benchmark(torch):
                warm_libraries(torch, s)  # cuBLAS's workspace would otherwise count for the first engine only
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
