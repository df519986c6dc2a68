"""Shared fixtures, and the hook that skips hardware/service tests with a reason."""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _why_missing(marker: str) -> str | None:
    if marker == "cuda":
        import torch

        return None if torch.cuda.is_available() else "no CUDA GPU on this machine"
    if marker == "tensorrt":
        return None if importlib.util.find_spec("tensorrt") else "TensorRT is not installed here"
    if marker == "jetson":
        return None if Path("/etc/nv_tegra_release").exists() else "not running on a Jetson"
    if marker == "docker":
        return None if shutil.which("docker") else "docker is not installed"
    if marker == "postgres":
        return None if shutil.which("pg_ctlcluster") or shutil.which("initdb") else "PostgreSQL is not installed"
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        for marker in ("cuda", "tensorrt", "jetson", "docker", "postgres"):
            if marker in item.keywords:
                why = _why_missing(marker)
                if why:
                    item.add_marker(pytest.mark.skip(reason=why))


FAST_YAML = """
model: example:digits-resnet
data: digits
target: cpu
objective: latency
constraints: {speedup: 1.3, max_accuracy_drop: 3.0}
criterion: magnitude-l2
recovery: {steps: 60, tune_steps: 0, batch_size: 32}
measure: {warmup_s: 0.05, min_duration_s: 0.25, min_iters: 20, final_rounds: 2, verdict_level: 0.75, candidate_rounds: 2,
          candidate_duration_s: 0.15}
tune: {max_candidates: 6, time_limit_s: 120, min_step: 0.1}
"""


@pytest.fixture
def fast_config(tmp_path: Path) -> Path:
    """A config for end-to-end tests: the real default model, short measurements and recovery."""
    p = tmp_path / "fast.yaml"
    p.write_text(FAST_YAML)
    return p


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``pipeline ARGS`` in-process; returns (exit code, stdout, stderr)."""
    from pipeline.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["pipeline", *map(str, args)])
        with pytest.raises(SystemExit) as e:
            main()
        out = capsys.readouterr()
        return int(e.value.code or 0), out.out, out.err

    return run
