"""Crash safety end to end (slow): kill -9 and SIGTERM in every stage, then --resume; two runs on one folder."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import FAST_YAML, ROOT

ARTIFACTS = ("policy.json", "pruned_raw.pt", "pruned.pt", "model.onnx")
STAGES = ("load", "baseline", "score", "tune", "prune", "recover", "export", "build", "measure", "report")


def sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A deterministic run (a replayed policy) and its uninterrupted reference artifacts."""
    from stages.load.models import digits_resnet
    from stages.model.graph import PruneGraph
    from stages.prune.plan import make_plan, uniform_ratios

    d = tmp_path_factory.mktemp("crash")
    cfg = d / "c.yaml"
    cfg.write_text(FAST_YAML)
    g = PruneGraph(digits_resnet(), torch.zeros(2, 1, 32, 32))
    plan = make_plan(g.groups(), g.importance("magnitude", p=2), uniform_ratios(g.groups(), 0.5), 8)
    policy = d / "policy.json"
    policy.write_text(json.dumps(plan.to_json()))
    ref = subprocess.run(_cmd(cfg, policy, d / "ref"), env=_env(), capture_output=True, text=True, timeout=600)
    assert ref.returncode in (0, 1, 3), ref.stderr
    return cfg, policy, d / "ref"


def _env(**extra: str) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def _cmd(cfg: Path, policy: Path, out: Path, *extra: str, staged: bool = False) -> list[str]:
    mod = "tests.pipeline.staged_run" if staged else "pipeline.cli"
    return [sys.executable, "-m", mod, "run", "--config", str(cfg), "--policy", str(policy), "--out", str(out),
            "--quiet", *extra]


def _statuses(out: Path) -> dict[str, str]:
    try:
        return {s["name"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"]}
    except (OSError, json.JSONDecodeError, KeyError):
        return {}


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
@pytest.mark.parametrize("stage", STAGES)
def test_a_signal_in_any_stage_then_resume_gives_the_same_artifacts(setup, tmp_path, stage, sig):
    cfg, policy, ref = setup
    out, marks = tmp_path / "run", tmp_path / "marks"
    proc = subprocess.Popen(_cmd(cfg, policy, out, staged=True), env=_env(EDGE_TEST_MARKS=str(marks),
                            EDGE_TEST_PAUSE_S="1.5"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (marks / f"at-{stage}").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before {stage}: {proc.stderr.read()}"
    time.sleep(0.3)  # inside the stage's pause: the stage is the current one
    os.kill(proc.pid, sig)
    rc = proc.wait(timeout=120)
    err = proc.stderr.read()
    st = _statuses(out)
    assert (out / "manifest.json").exists(), "a kill in the load stage must still leave a run to resume"
    if sig == signal.SIGTERM:
        assert rc == 143 and "terminated (SIGTERM)" in err and "Traceback" not in err, err
        assert st.get(stage) == "interrupted", st
    else:
        assert rc == -signal.SIGKILL and st.get(stage) == "running", st
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".pipeline.lock"]

    res = subprocess.run(_cmd(cfg, policy, out, "--resume"), env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode in (0, 1, 3), res.stderr
    for name in ARTIFACTS:
        assert sha(out / name) == sha(ref / name), name
    assert set(_statuses(out)) == set(STAGES) and "running" not in _statuses(out).values()


@pytest.mark.slow
def test_two_runs_on_one_folder_the_second_is_refused_and_the_first_finishes(setup, tmp_path):
    cfg, policy, ref = setup
    out, marks = tmp_path / "run", tmp_path / "marks"
    first = subprocess.Popen(_cmd(cfg, policy, out, staged=True), env=_env(EDGE_TEST_MARKS=str(marks),
                             EDGE_TEST_PAUSE_S="0.5"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (marks / "at-baseline").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    t0 = time.monotonic()
    second = subprocess.run(_cmd(cfg, policy, out, "--resume"), env=_env(), capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2 and "is in use by another run (PID" in second.stderr, second.stderr
    assert time.monotonic() - t0 < 30  # at once, not after waiting for the first
    assert first.wait(timeout=600) in (0, 1, 3), first.stderr.read()
    for name in ARTIFACTS:
        assert sha(out / name) == sha(ref / name), name
    man = json.loads((out / "manifest.json").read_text())
    for s in man["stages"]:
        for name, h in s["outputs"].items():
            assert sha(out / name) == h, name
