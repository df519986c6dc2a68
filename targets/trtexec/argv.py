"""``trtexec`` command lines: building an engine, measuring it (``--exportTimes``), running it on real
inputs (``--loadInputs`` / ``--exportOutput``), and ``tegrastats`` beside a measurement.

Tensor names are quoted in one place (:func:`tensor_arg` / :func:`shape_arg`) for every command.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from targets.base import MeasureSettings
from targets.devices import (
    trt_major,
    trt_tuple,
)
from targets.onnx_facts import OnnxFacts
from targets.tensorrt.settings import PrecisionPlan, TrtSettings, batch_profile


def tensor_arg(name: str) -> str:
    """A tensor name as trtexec's ``--shapes`` / ``--loadInputs`` want it (quoted when it holds ``:`` or ``,``)."""
    return f"'{name}'" if ":" in name or "," in name else name


def shape_arg(name: str, dims: Sequence[int]) -> str:
    """``NAME:AxBxC`` for trtexec's shape options."""
    return f"{tensor_arg(name)}:{'x'.join(str(int(d)) for d in dims)}"


@dataclass(frozen=True)
class BuildCommand:
    """Everything that decides a ``trtexec`` build command line."""

    trt_version: str
    onnx: str
    engine: str
    timing_cache: str
    plan: PrecisionPlan
    facts: OnnxFacts
    sample_shape: tuple[int, ...]
    settings: TrtSettings = field(default_factory=TrtSettings)

    def argv(self, trtexec: str = "trtexec") -> list[str]:
        v = trt_tuple(self.trt_version)
        a = [trtexec, f"--onnx={self.onnx}", f"--saveEngine={self.engine}", f"--timingCacheFile={self.timing_cache}",
             "--skipInference"]
        if not self.plan.strongly_typed:  # TRT <= 10: weakly typed, precision by flag
            a += [f"--{f.lower()}" for f in self.plan.builder_flags]
        elif trt_major(self.trt_version) == 10:
            a.append("--stronglyTyped")
        if self.facts.dynamic_batch:
            lo, opt, hi = batch_profile(self.sample_shape, self.settings.max_batch)
            name = self.facts.input_name
            a += [f"--minShapes={shape_arg(name, lo)}", f"--optShapes={shape_arg(name, opt)}",
                  f"--maxShapes={shape_arg(name, hi)}"]
        if self.settings.workspace_mb:
            a.append(f"--memPoolSize=workspace:{self.settings.workspace_mb}" if v >= (8, 4)
                     else f"--workspace={self.settings.workspace_mb}")
        if self.settings.dla_core is not None:
            a += [f"--useDLACore={self.settings.dla_core}", "--allowGPUFallback"]
        if self.settings.sparsity:
            a.append("--sparsity=enable")
        return a


def measure_argv(trt_version: str, engine: str, times_json: str, facts: OnnxFacts, sample_shape: Sequence[int],
                 batch: int, settings: MeasureSettings, dla_core: int | None = None,
                 trtexec: str = "trtexec") -> list[str]:
    """``trtexec --loadEngine`` measurement; ``--exportTimes`` gives per-inference times as JSON.

    TRT 11 turned data transfers off and CUDA graphs / spin-wait on by default; the primary
    latency (``computeMs``) excludes transfers either way, and TRT <= 10 gets ``--useSpinWait``.
    """
    a = [trtexec, f"--loadEngine={engine}", f"--exportTimes={times_json}",
         f"--warmUp={max(0, round(settings.warmup_s * 1000))}",
         f"--duration={max(1, math.ceil(settings.min_duration_s))}", f"--iterations={max(1, settings.min_iters)}"]
    if facts.dynamic_batch:
        a.append(f"--shapes={shape_arg(facts.input_name, (batch, *sample_shape))}")
    if (trt_major(trt_version) or 0) < 11:
        a.append("--useSpinWait")
    if dla_core is not None:
        a.append(f"--useDLACore={dla_core}")
    return a


def tegrastats_argv(logfile: str, interval_ms: int = 100) -> list[str]:
    return ["tegrastats", "--interval", str(int(interval_ms)), "--logfile", logfile]


def infer_argv(trt_version: str, engine: str, input_name: str, input_file: str, output_json: str,
               shape: Sequence[int] | None, dla_core: int | None = None, trtexec: str = "trtexec") -> list[str]:
    """One inference of ``engine`` on the raw tensor in ``input_file``; outputs to ``output_json``.

    ``shape`` is the full input shape for a dynamic batch (``--shapes``), None for a static one.
    TRT 11 turned host/device transfers off by default; the inputs must reach the GPU, so
    ``--includeDataTransfers`` is passed there.
    """
    a = [trtexec, f"--loadEngine={engine}", f"--loadInputs={tensor_arg(input_name)}:{input_file}",
         f"--exportOutput={output_json}", "--iterations=1", "--warmUp=0", "--duration=0"]
    if shape is not None:
        a.append(f"--shapes={shape_arg(input_name, shape)}")
    if (trt_major(trt_version) or 0) >= 11:
        a.append("--includeDataTransfers")
    if dla_core is not None:
        a.append(f"--useDLACore={dla_core}")
    return a
