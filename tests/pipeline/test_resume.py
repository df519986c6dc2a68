"""kill -9 in the middle of a stage, then --resume: only missing or stale stages rerun, same artifacts."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from tests.conftest import FAST_YAML, ROOT

ARTIFACTS = ("policy.json", "pruned_raw.pt", "pruned.pt", "model.onnx")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def _policy(path: Path) -> None:
    from stages.load.models import digits_resnet
    from stages.model.graph import PruneGraph
    from stages.prune.plan import make_plan, uniform_ratios

    m = digits_resnet()
    g = PruneGraph(m, torch.zeros(2, 1, 32, 32))
    plan = make_plan(g.groups(), g.importance("magnitude", p=2), uniform_ratios(g.groups(), 0.5), 8)
    path.write_text(json.dumps(plan.to_json()))


def _cmd(cfg: Path, policy: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg), "--policy", str(policy),
            "--out", str(out), "--quiet", *extra]


def _stages_done(out: Path) -> set[str]:
    try:
        return {s["name"] for s in json.loads((out / "manifest.json").read_text())["stages"] if s["status"] == "ok"}
    except (OSError, json.JSONDecodeError, KeyError):
        return set()


def test_kill_9_mid_recovery_then_resume(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML.replace("steps: 60", "steps: 150"))
    policy = tmp_path / "policy.json"
    _policy(policy)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    ref = subprocess.run(_cmd(cfg, policy, tmp_path / "ref"), env=env, capture_output=True, text=True, timeout=600)
    assert ref.returncode in (0, 1, 3), ref.stderr

    out = tmp_path / "crashed"
    proc = subprocess.Popen(_cmd(cfg, policy, out), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while "prune" not in _stages_done(out) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(1.0)  # well inside the 150 distillation steps
    assert proc.poll() is None, "the run finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _stages_done(out)
    assert "prune" in done and "recover" not in done and not (out / "pruned.pt").exists()
    assert not list(out.glob(".pruned.pt.*"))  # no half-written file under the final name or a temp name left

    res = subprocess.run(_cmd(cfg, policy, out, "--resume"), env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1, 3), res.stderr
    for name in ARTIFACTS:
        assert sha(out / name) == sha(tmp_path / "ref" / name), name
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    for name in ("baseline", "tune", "prune"):
        assert stages[name]["metrics"].get("resumed") is True, name
    for name in ("recover", "export", "measure", "report"):
        assert not stages[name]["metrics"].get("resumed"), name
    assert json.loads((out / "report.json").read_text())["final"]["params"] == \
        json.loads((tmp_path / "ref" / "report.json").read_text())["final"]["params"]


def test_resume_without_manifest_is_a_clear_error(tmp_path):
    res = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--resume", "--out", str(tmp_path / "x")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert res.returncode == 2 and "nothing to resume" in res.stderr
