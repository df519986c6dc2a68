"""The target interface and the one declarative target table.

A target turns an ONNX file into an engine, measures it, and runs it for accuracy. Dispatch
is by name through :data:`TARGETS`; unknown names get a suggestion, and options a target does
not accept are rejected before anything runs.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from core.errors import ConfigError, did_you_mean
from core.registry import Registry


@dataclass(frozen=True)
class MeasureSettings:
    threads: int | None = None
    batch: int = 1
    warmup_s: float = 0.3
    min_duration_s: float = 1.0
    min_iters: int = 50


@dataclass(frozen=True)
class Engine:
    """A built artifact for one target: what runs, its size, and how it was made."""

    target: str
    onnx_path: Path
    path: Path | None  # engine file, None where the runtime builds in memory (ORT CPU)
    engine_bytes: int | None
    build_s: float
    sample_shape: tuple[int, ...]
    meta: Mapping[str, Any] = field(default_factory=dict)


class Runner(Protocol):
    def run(self, x: np.ndarray) -> np.ndarray: ...


class Target(Protocol):
    name: str

    def build(self, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path) -> Engine: ...

    def measure(self, engines: Sequence[Engine], settings: MeasureSettings, rounds: int = 1) -> list[dict]: ...

    def runner(self, engine: Engine) -> AbstractContextManager[Runner]: ...

    def describe(self) -> str: ...


def build_engine(target: Target, onnx_path: Path, sample_shape: tuple[int, ...], out_dir: Path, *,
                 module: Any = None, calibration: Any = None) -> Engine:
    """Build on ``target``, handing over only what it declares in ``build_inputs`` beyond the ONNX:
    the torch module the ONNX was exported from (``cuda`` with runtime torch) and calibration
    samples (TensorRT INT8). Targets that need nothing more get the plain three-argument call."""
    wants = getattr(target, "build_inputs", frozenset())
    extra = {k: v for k, v in (("module", module), ("calibration", calibration)) if k in wants and v is not None}
    return target.build(Path(onnx_path), sample_shape, Path(out_dir), **extra)

@dataclass(frozen=True)
class TargetSpec:
    """One row of the target table."""

    name: str
    runtime: str
    needs_gpu: bool
    remote: bool
    precisions: tuple[str, ...]
    engine_suffix: str | None
    options: frozenset[str]
    availability: Callable[[], str | None]  # None when usable here, else why not
    factory: Callable[[Mapping[str, Any]], Target] | None  # None: declared, not implemented yet

    def check_options(self, options: Mapping[str, Any]) -> None:
        """Reject options this target does not list, before anything runs."""
        unknown = sorted(set(options) - self.options)
        if unknown:
            allowed = ", ".join(sorted(self.options)) or "none"
            raise ConfigError(
                f"target '{self.name}' does not accept option '{unknown[0]}'.{did_you_mean(unknown[0], self.options)}",
                hint=f"options for {self.name}: {allowed}",
            )

    def unavailable_reason(self, options: Mapping[str, Any] | None = None) -> str | None:
        """None when the target can be created here with ``options``, else why not.

        A remote-capable target given ``device`` only needs the OpenSSH client on this machine.
        """
        if self.factory is None:
            return "declared in the target table but not implemented in this release"
        if self.remote and options and options.get("device"):
            return None if shutil.which("ssh") and shutil.which("scp") else "the OpenSSH client (ssh, scp) is not installed"
        return self.availability()

    def create(self, options: Mapping[str, Any]) -> Target:
        self.check_options(options)
        why = self.unavailable_reason(options)
        if why is not None:
            hint = ("pass --device user@host[:port] to use the device over SSH" if self.remote and not options.get("device")
                    else "run `pipeline targets` to see what is available; --target cpu runs anywhere")
            raise ConfigError(f"target '{self.name}' is not available here: {why}", hint=hint)
        assert self.factory is not None
        return self.factory(options)


TARGETS: Registry[TargetSpec] = Registry("target")
