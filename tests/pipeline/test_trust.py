"""Trust boundaries and crash safety: what is trusted from where, one owner per run folder, exit codes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, SpecError
from core.io import atomic_write_bytes, file_mode
from pipeline.runfolder import LOCK, RunFolder
from tests.conftest import FAST_YAML, ROOT

# ------------------------------------------------------------------ a run folder has one owner

def test_a_second_owner_is_refused_at_once_and_told_who_holds_it(tmp_path):
    with RunFolder(tmp_path / "r"):
        (tmp_path / "r" / "manifest.json").write_text("{}")  # what a run writes before its first stage
        with pytest.raises(ConfigError, match=r"in use by another run \(PID \d+ on "):
            with RunFolder(tmp_path / "r", resume=True):
                pass
        with pytest.raises(ConfigError, match=r"in use by another run"):
            with RunFolder(tmp_path / "r", overwrite=True):
                pass
        assert (tmp_path / "r" / "manifest.json").exists()  # the refused --overwrite removed nothing
    assert (tmp_path / "r" / LOCK).exists()
    with RunFolder(tmp_path / "r", resume=True):  # released with its owner: no stale lock
        pass


def test_a_lock_left_by_a_killed_process_does_not_block(tmp_path):
    code = f"from pipeline.runfolder import RunFolder; f = RunFolder({str(tmp_path / 'r')!r}).__enter__(); " \
           "import os; os.kill(os.getpid(), 9)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)
    assert "PID" in (tmp_path / "r" / LOCK).read_text()
    with RunFolder(tmp_path / "r"):
        pass


def test_a_strangers_folder_is_not_adopted_without_overwrite(tmp_path):
    d = tmp_path / "mine"
    (d / "candidates").mkdir(parents=True)
    (d / "model.onnx").write_text("the user's own file")
    with pytest.raises(ConfigError, match="is not empty .* holds no run of this tool") as e:
        with RunFolder(d):
            pass
    assert "--overwrite" in e.value.hint
    assert (d / "candidates").is_dir() and (d / "model.onnx").read_text() == "the user's own file"
    with RunFolder(d, overwrite=True):
        pass


def test_a_folder_with_a_run_needs_resume_or_overwrite(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    with pytest.raises(ConfigError, match="already holds a run"):
        with RunFolder(d):
            pass
    (d / "study.db").write_text("")
    with RunFolder(d, resume=True):
        assert (d / "manifest.json").exists()
    with RunFolder(d, overwrite=True):  # start over: no old manifest, no old study to resume
        assert not (d / "manifest.json").exists() and not (d / "study.db").exists()


def test_temp_files_a_killed_run_left_are_removed(tmp_path):
    d = tmp_path / "r"
    d.mkdir()
    (d / "manifest.json").write_text("{}")
    for name in (".model.onnx.abc123.onnx", ".pruned.pt.xyz", ".report.json.1"):
        (d / name).write_bytes(b"")
    (d / ".mine").write_text("not ours")
    with RunFolder(d, resume=True):
        pass
    assert sorted(p.name for p in d.iterdir()) == [".mine", LOCK, "logs", "manifest.json"]


def test_artifacts_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644 == file_mode()
    finally:
        os.umask(old)


# ------------------------------------------------------------------ trust comes from the command line

def test_a_pruned_checkpoint_may_not_choose_code_to_run(tmp_path):
    from stages.load.models import ModelRequest, load_model

    p = tmp_path / "pruned.pt"
    torch.save({"format": "edge-pipeline/pruned-v1", "model_spec": "python:tempfile:mkdtemp", "plan": {},
                "state_dict": {}}, p)
    with pytest.raises(SpecError, match="would import and run code the file chose") as e:
        load_model(ModelRequest(f"file:{p}"))
    assert "--arch python:tempfile:mkdtemp" in e.value.hint and "--trust-checkpoint" in e.value.hint


def test_a_study_may_not_choose_code_for_a_worker(tmp_path):
    from pipeline.config import resolve_config
    from pipeline.worker import study_config

    cfg = resolve_config(None, {"model": "python:mypkg:build", "input_shape": (3, 8, 8)})
    run = {"config": cfg.model_dump(mode="json")}
    with pytest.raises(ConfigError, match="run code it names: model python:mypkg:build") as e:
        study_config(run)
    assert "--trust-study" in e.value.hint
    assert study_config(run, trust=True).model == "python:mypkg:build"
    trusting = {"config": {**resolve_config(None, {}).model_dump(mode="json"), "trust_checkpoint": True}}
    with pytest.raises(ConfigError, match="pickled checkpoints"):
        study_config(trusting)
    assert study_config(trusting, trust=True).trust_checkpoint


def test_resume_does_not_take_trust_from_the_folder(cli, tmp_path):
    from pipeline.config import resolve_config

    d = tmp_path / "r"
    d.mkdir()
    cfg = {**resolve_config(None, {}).model_dump(mode="json"), "trust_checkpoint": True}
    (d / "manifest.json").write_text(json.dumps({"header": {"config": cfg}, "stages": []}))
    rc, out, _ = cli("run", "--resume", "--out", d, "--dry-run")
    assert rc == 0 and "trust_checkpoint: false" in out
    rc, out, _ = cli("run", "--resume", "--out", d, "--dry-run", "--trust-checkpoint")
    assert rc == 0 and "trust_checkpoint: true" in out


# ------------------------------------------------------------------ exits and errors

def _module(tmp: Path, name: str, body: str) -> None:
    (tmp / f"{name}.py").write_text(textwrap.dedent(body))


def test_user_code_that_hangs_is_stopped_by_the_load_timeout(cli, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "hangs", "import time\n\ndef build():\n    time.sleep(30)\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML + "load_timeout_s: 1\n")
    rc, _, err = cli("run", "--config", cfg, "--model", "python:hangs:build", "--out", tmp_path / "r", "-q")
    assert rc == 2 and "loading the model and data did not finish in 1 s" in err and "load_timeout_s" in err


def test_an_unexpected_error_is_one_line_with_the_traceback_in_a_named_file(cli, tmp_path, monkeypatch):
    import pipeline.orchestrate as orch

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))

    def boom(*a, **k):
        raise RuntimeError("something nobody expected")

    monkeypatch.setattr(orch, "measure_file", boom)
    rc, _, err = cli("measure", "m.onnx")
    log = tmp_path / "cache" / "edge-pipeline" / "last-error.log"
    assert rc == 2 and "Traceback" not in err and str(log) in err
    assert "RuntimeError: something nobody expected" in log.read_text() and "Traceback" in log.read_text()


def test_an_unexpected_error_in_a_stage_names_the_run_log(cli, tmp_path, monkeypatch):
    import pipeline.steps as steps

    def boom(state):
        raise ValueError("inside a stage")

    orig = steps.build_stages

    def stages():
        out = orig()
        out[0] = type(out[0])(out[0].name, boom, out[0].inputs, out[0].outputs, out[0].config_keys)
        return out

    monkeypatch.setattr(steps, "build_stages", stages)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML)
    rc, _, err = cli("run", "--config", cfg, "--out", tmp_path / "r", "-q")
    log = tmp_path / "r" / "logs" / "pipeline.log"
    assert rc == 2 and "Traceback" not in err and str(log) in err and "unexpected ValueError: inside a stage" in err
    assert "ValueError: inside a stage" in log.read_text() and "Traceback" in log.read_text()
    stages_ = json.loads((tmp_path / "r" / "manifest.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages_] == [("load", "failed")]


def test_the_measuring_worker_ignores_modules_in_the_working_directory(tmp_path, monkeypatch):
    from stages.export import ExportSettings, export_onnx
    from stages.load.cifar_resnet import CifarResNet
    from targets import MeasureSettings, get_target

    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), tmp_path / "m.onnx", ExportSettings())
    (tmp_path / "json.py").write_text("raise SystemExit('a json.py in the working directory was imported')\n")
    monkeypatch.chdir(tmp_path)
    t = get_target("cpu", {"graph_optimization": "basic"})
    rec = t.measure([t.build(Path("m.onnx"), (1, 32, 32), tmp_path)],
                    MeasureSettings(warmup_s=0.01, min_duration_s=0.05, min_iters=5))[0]
    assert rec["latency_ms"]["median"] > 0


def test_the_worker_times_with_the_graph_optimization_asked_for(tmp_path):
    from stages.export import ExportSettings, export_onnx
    from stages.load.cifar_resnet import CifarResNet

    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), tmp_path / "m.onnx", ExportSettings())
    args = {"mode": "latency", "models": [str(tmp_path / "m.onnx")], "threads": 1, "batch": 1, "sample_shape": [1, 32, 32],
            "rounds": 1, "warmup_s": 0.01, "min_duration_s": 0.02, "min_iters": 2, "optimization": "disable"}
    p = subprocess.run([sys.executable, "-m", "targets.ort.worker", json.dumps(args)], cwd=ROOT, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert json.loads(p.stdout.strip().splitlines()[-1])["graph_optimization"] == "disable"


def test_a_baseline_within_the_allowed_drop_is_not_a_pass(cli, tmp_path, monkeypatch):
    """Digits with every label moved by one: the real model scores ~0%, so a 3-point floor is vacuous."""
    monkeypatch.syspath_prepend(str(tmp_path))
    _module(tmp_path, "shifted", """
        from stages.load.data import load_data


        def data(shape):
            d = load_data("digits", shape)
            shift = lambda ds: [(x, (int(y) + 1) % 10) for x, y in ds]
            return {"train": shift(d.train), "calib": shift(d.calib), "test": shift(d.test)}
        """)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML)
    rc, _, err = cli("run", "--config", cfg, "--data", "python:shifted:data", "--out", tmp_path / "r", "-q")
    assert rc == 2 and "no result could break the floor" in err, err


def test_a_refused_folder_gets_nothing_written_into_it(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir()
    (d / "notes.txt").write_text("x")
    with pytest.raises(ConfigError):
        with RunFolder(d):
            pass
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]
    with pytest.raises(ConfigError, match="nothing to resume"):
        with RunFolder(tmp_path / "new", resume=True):
            pass
    assert not (tmp_path / "new").exists()


def test_a_file_system_without_flock_runs_without_the_lock(tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def no_locks(fd, op):
        if op & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="pipeline"), RunFolder(tmp_path / "r"):
        pass
    assert "running without the run folder lock" in caplog.text


def test_trust_is_permission_not_a_setting_of_any_stage():
    from pipeline.config import resolve_config
    from pipeline.runner import _config_digest

    keys = ("model", "trust_checkpoint", "seed")
    plain, trusted = resolve_config(None, {}), resolve_config(None, {"trust_checkpoint": True})
    assert _config_digest(plain, keys) == _config_digest(trusted, keys)
