"""The one measurement protocol: interleaving order, the discarded round, the record, and the worker's copy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from targets import timing
from targets.timing import interleave_rounds, timing_records

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    from stages.export import ExportSettings, export_onnx
    from stages.load.cifar_resnet import CifarResNet

    p = tmp_path_factory.mktemp("timing") / "small.onnx"
    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), p, ExportSettings())
    return p


def test_rounds_alternate_engines_after_the_discarded_warm_up():
    order: list[tuple[str, int]] = []
    lat = interleave_rounds(2, 3, lambda i: (order.append(("timed", i)) or [float(i + 1)], 0.5),
                            lambda i: order.append(("warm", i)))
    assert order == [("warm", 0), ("warm", 1)] + [("timed", 0), ("timed", 1)] * 3
    assert lat == {"rounds": [[[1.0]] * 3, [[2.0]] * 3], "wall_s": [1.5, 1.5]}
    order.clear()
    interleave_rounds(2, 1, lambda i: (order.append(("timed", i)) or [1.0], 0.1))  # trtexec: no discarded round
    assert order == [("timed", 0), ("timed", 1)]


def test_the_speedup_is_the_median_of_per_round_ratios_not_the_ratio_of_medians():
    # round 1: 2.0 vs 1.0 (2x); round 2: 4.0 vs 1.0 (4x, a slow round for the baseline); round 3: 2.0 vs 2.0 (1x)
    lat = {"rounds": [[[2.0], [4.0], [2.0]], [[1.0], [1.0], [2.0]]], "wall_s": [0.008, 0.004]}
    engines = [SimpleNamespace(engine_bytes=None), SimpleNamespace(engine_bytes=123)]
    base, pruned = timing_records(engines, lat, batch=4, rounds=3, measured_on="test", memory_mb=[10.0, 5.0])
    assert base.ratio_to_first == 1.0 and pruned.ratio_to_first == 2.0  # median of (2, 4, 1)
    assert pruned.latency_ms["median"] == 1.0 and base.latency_ms["median"] == 2.0  # medians over all calls
    assert pruned.round_medians_ms == [1.0, 1.0, 2.0] and pruned.engine_bytes == 123 and pruned.memory_mb == 5.0
    assert pruned.throughput == pytest.approx(4 * 3 / 0.004) and pruned.iterations == 3


def test_timing_imports_nothing_of_ours_at_import_time():
    src = (ROOT / "targets" / "timing.py").read_text()
    head = src.split('"""', 2)[2]
    top = [ln for ln in head.splitlines() if ln.startswith(("import ", "from "))]
    assert all(ln.split()[1].split(".")[0] in ("__future__", "statistics", "time", "collections", "dataclasses",
                                               "typing") for ln in top), top


def test_the_worker_runs_as_a_script_next_to_a_copy_of_timing(tmp_path, small_onnx):
    """What a remote device gets: ort_worker.py and timing.py in one folder, no package."""
    shutil.copy(ROOT / "targets" / "ort" / "worker.py", tmp_path / "ort_worker.py")
    shutil.copy(ROOT / "targets" / "timing.py", tmp_path / "timing.py")
    args = {"mode": "latency", "models": [str(small_onnx)], "threads": 1, "batch": 1, "sample_shape": [1, 32, 32],
            "rounds": 2, "warmup_s": 0.01, "min_duration_s": 0.02, "min_iters": 3}
    p = subprocess.run([sys.executable, "ort_worker.py", json.dumps(args)], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert "error" not in out, out
    assert len(out["rounds"]) == 1 and len(out["rounds"][0]) == 2 and all(len(r) >= 3 for r in out["rounds"][0])
    assert timing.MAX_ROUND_S == 30.0
