"""The CLI end to end on the real default model, and every bad-input case (exit 2, one line, hint)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch

RUN_FILES = {"manifest.json", "report.json", "report.md", "policy.json", "pruned.pt", "model.onnx", "pareto.png"}


def sha(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    """One real run of the default model with short measurements (shared by several tests)."""
    import sys

    from pipeline.cli import main
    from tests.conftest import FAST_YAML

    d = tmp_path_factory.mktemp("run")
    cfg = d / "fast.yaml"
    cfg.write_text(FAST_YAML)
    out = d / "out"
    argv = sys.argv
    sys.argv = ["pipeline", "run", "--config", str(cfg), "--out", str(out), "--quiet"]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = argv
    return int(e.value.code or 0), out, cfg


def test_default_run_meets_budget_and_writes_the_run_folder(default_run):
    code, out, _ = default_run
    assert code == 0
    assert RUN_FILES <= {p.name for p in out.iterdir()}
    rep = json.loads((out / "report.json").read_text())
    for k in ("target", "objective", "constraints", "baseline", "final", "speedup", "candidates", "stages", "versions"):
        assert k in rep
    assert rep["constraints"]["met"] is True and rep["constraints"]["violations"] == []
    for m in (rep["baseline"], rep["final"]):
        assert set(m["latency_ms"]) >= {"median", "p90", "p99", "mean", "std", "cv"}
        assert m["accuracy_metric"] == "top1" and m["measured_on"].startswith("cpu:")
        for k in ("throughput", "memory_mb", "onnx_bytes", "engine_bytes", "params", "macs", "accuracy"):
            assert k in m
    assert rep["speedup"] >= 1.3
    assert rep["final"]["macs"] < rep["baseline"]["macs"]
    assert rep["baseline"]["accuracy"] - rep["final"]["accuracy"] <= 3.0
    assert rep["candidates"] and all({"policy", "latency_ms", "accuracy", "macs"} <= set(c) for c in rep["candidates"])
    names = [s["name"] for s in rep["stages"]]
    assert names == ["load", "baseline", "score", "tune", "prune", "recover", "export", "build", "measure", "report"]
    assert all(s["status"] in ("ok", "skipped") for s in rep["stages"])


def test_manifest_records_hashes_and_versions(default_run):
    _, out, _ = default_run
    man = json.loads((out / "manifest.json").read_text())
    assert man["header"]["versions"]["torch"] == "2.14.1"
    by_name = {s["name"]: s for s in man["stages"]}
    assert by_name["export"]["outputs"]["model.onnx"] == sha(out / "model.onnx")
    assert by_name["recover"]["inputs"]["pruned_raw.pt"] == sha(out / "pruned_raw.pt")
    assert all(s["seconds"] >= 0 for s in man["stages"])


def test_pruned_checkpoint_is_a_state_dict_plus_plan(default_run):
    _, out, _ = default_run
    blob = torch.load(out / "pruned.pt", weights_only=True)  # no pickled module inside
    assert blob["format"] == "edge-pipeline/pruned-v1" and "state_dict" in blob and "plan" in blob


def test_report_md_and_pareto_png(default_run):
    _, out, _ = default_run
    md = (out / "report.md").read_text()
    assert "Constraints met" in md and "![accuracy vs measured latency](pareto.png)" in md
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_command_replays_verdict(default_run, cli):
    _, out, _ = default_run
    code, text, _ = cli("report", out)
    assert code == 0 and "constraints met" in text


def test_policy_replay_gives_same_architecture(default_run, cli, tmp_path):
    _, out, cfg = default_run
    code, text, err = cli("run", "--config", cfg, "--policy", out / "policy.json", "--out", tmp_path / "r", "-q")
    assert code in (0, 1, 3), err
    a = json.loads((out / "policy.json").read_text())["groups"]
    b = json.loads((tmp_path / "r" / "policy.json").read_text())["groups"]
    assert a == b
    ra = json.loads((out / "report.json").read_text())
    rb = json.loads((tmp_path / "r" / "report.json").read_text())
    assert ra["final"]["params"] == rb["final"]["params"] and ra["final"]["macs"] == rb["final"]["macs"]
    assert rb["search"] == "replay" and rb["candidates"] == []


def test_existing_run_folder_is_not_overwritten(default_run, cli):
    _, out, cfg = default_run
    before = sha(out / "report.json")
    code, _, err = cli("run", "--config", cfg, "--out", out)
    assert code == 2 and "already holds a run" in err and "--resume" in err
    assert sha(out / "report.json") == before


def test_dry_run_prints_plan_and_runs_nothing(cli, tmp_path):
    code, text, _ = cli("run", "--dry-run", "--out", tmp_path / "never")
    assert code == 0
    assert "model: example:digits-resnet" in text and "speedup: 2.0" in text
    assert "tune -> policy.json, candidates.json" in text
    assert not (tmp_path / "never").exists()


def test_impossible_budget_exits_1_with_best_candidate(fast_config, cli, tmp_path):
    code, text, _ = cli("run", "--config", fast_config, "--latency-ms", "0.0001", "--out", tmp_path / "r")
    assert code == 1
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["constraints"]["met"] is False
    assert any("latency" in v and "over by" in v for v in rep["constraints"]["violations"])
    assert "not reachable" in rep["tune"]["stop_reason"]
    assert any(c["accepted"] for c in rep["candidates"])
    assert "constraints not met" in text


# ---------------------------------------------------------------- bad input: exit 2, one line, hint

def _assert_clean_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[0].startswith("error:") and any(ln.startswith("hint:") for ln in lines), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, err


@pytest.fixture
def weights(tmp_path) -> Path:
    from stages.load.models import digits_resnet

    p = tmp_path / "w.pt"
    torch.save(digits_resnet().state_dict(), p)
    return p


def test_bad_missing_model_file(cli, tmp_path):
    _assert_clean_error(*cli("run", "--model", f"file:{tmp_path / 'nope.pt'}", "--arch", "example:digits-resnet",
                             "--out", tmp_path / "o")[::2], "model file not found")


def test_bad_truncated_checkpoint(cli, tmp_path, weights):
    weights.write_bytes(weights.read_bytes()[:20000])
    before = sha(weights)
    _assert_clean_error(*cli("run", "--model", f"file:{weights}", "--arch", "example:digits-resnet",
                             "--out", tmp_path / "o")[::2], "not a readable PyTorch checkpoint")
    assert sha(weights) == before


def test_bad_state_dict_does_not_fit(cli, tmp_path):
    p = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 4).state_dict(), p)
    _assert_clean_error(*cli("run", "--model", f"file:{p}", "--arch", "example:digits-resnet",
                             "--out", tmp_path / "o")[::2], "does not fit architecture")


def test_bad_unknown_model_and_data_spec(cli, tmp_path):
    _assert_clean_error(*cli("run", "--model", "torchvision:resnet19", "--out", tmp_path / "o")[::2],
                        "Did you mean 'resnet18'")
    _assert_clean_error(*cli("run", "--data", "digitz", "--out", tmp_path / "o2")[::2], "Did you mean 'digits'")
    assert not (tmp_path / "o2").exists()  # names are checked before a run folder is made


def test_bad_unknown_target(cli, tmp_path):
    _assert_clean_error(*cli("run", "--target", "jeston", "--out", tmp_path / "o")[::2], "Did you mean 'jetson'")


def test_bad_yaml_syntax(cli, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("model: example:digits-resnet\nconstraints:\n  speedup: [2\n")
    _assert_clean_error(*cli("run", "--config", p)[::2], "YAML syntax error at line")


def test_bad_unknown_config_key(cli, tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("criterium: magnitude-l2\n")
    _assert_clean_error(*cli("run", "--config", p)[::2], "unknown config key 'criterium'", "Did you mean 'criterion'")


@pytest.mark.parametrize("flag", ["--speedup=0", "--speedup=-1", "--latency-ms=-3", "--memory-mb=0"])
def test_bad_non_positive_budget(cli, flag):
    _assert_clean_error(*cli("run", flag)[::2], "constraints.")


def test_bad_speedup_and_latency_both(cli):
    _assert_clean_error(*cli("run", "--speedup", "2", "--latency-ms", "1")[::2], "either latency_ms or speedup")


def test_bad_nan_weights(cli, tmp_path, weights):
    sd = torch.load(weights, weights_only=True)
    sd["fc.weight"][0, 0] = float("inf")
    torch.save(sd, weights)
    before = sha(weights)
    _assert_clean_error(*cli("run", "--model", f"file:{weights}", "--arch", "example:digits-resnet",
                             "--out", tmp_path / "o")[::2], "NaN/inf values in fc.weight")
    assert sha(weights) == before


def test_bad_forward_fails(cli, tmp_path):
    _assert_clean_error(*cli("run", "--model", "python:tests.stages.test_load:picky", "--input-shape", "3,5",
                             "--data", "random", "--out", tmp_path / "o")[::2], "fails on an example input")


def test_bad_output_folder_not_writable(cli, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    _assert_clean_error(*cli("run", "--out", blocker / "sub")[::2], "not writable")


def test_bad_unknown_criterion(cli, tmp_path):
    _assert_clean_error(*cli("run", "--criterion", "magnitude-l3", "--out", tmp_path / "o")[::2],
                        "Did you mean 'magnitude-l")
    assert not (tmp_path / "o").exists()


def test_bad_policy_file(cli, tmp_path):
    p = tmp_path / "p.json"
    p.write_text("{}")
    _assert_clean_error(*cli("run", "--policy", p, "--out", tmp_path / "o", "-q")[::2], "not a pruning plan")


def test_unknown_flag_is_exit_2(cli):
    code, _, err = cli("run", "--speeedup", "2")
    assert code == 2 and "error:" in err


def test_listing_commands(cli):
    code, text, _ = cli("criteria")
    assert code == 0 and "magnitude-l2" in text and "aap" in text
    code, text, _ = cli("targets")
    assert code == 0 and "cpu" in text and "jetson" in text
    for cmd in ("targets", "criteria", "searches", "metrics"):  # readable at 80 columns (not a terminal)
        code, text, _ = cli(cmd)
        assert code == 0 and max(len(ln.rstrip()) for ln in text.splitlines()) <= 80, cmd
    code, text, _ = cli("run", "--help")
    assert code == 0 and max(len(ln.rstrip()) for ln in text.splitlines()) <= 80


def test_shell_completion_is_offered(cli):
    code, text, _ = cli("--help")
    assert code == 0 and "--install-completion" in text and "--show-completion" in text


def test_stade_criterion_end_to_end_with_bias_compensation(cli, tmp_path):
    """A compensated criterion through every stage: scoring, compensated pruning, export parity, resume load."""
    from tests.conftest import FAST_YAML

    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML.replace("steps: 60", "steps: 5").replace("max_candidates: 6", "max_candidates: 3"))
    code, _, err = cli("run", "--config", cfg, "--criterion", "stade", "--out", tmp_path / "r", "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["criterion"] == "stade" and rep["final"]["macs"] < rep["baseline"]["macs"]
    parity = json.loads((tmp_path / "r" / "parity.json").read_text())["parity"]
    assert parity["output"]["fail_frac"] == 0.0


TORCHVISION_YAML = """
model: torchvision:resnet18
data: random
input_shape: [3, 64, 64]
target: cpu
objective: latency
constraints: {speedup: 1.3, max_accuracy_drop: null}
criterion: magnitude-l2
recovery: {steps: 5, tune_steps: 0, batch_size: 16}
measure: {warmup_s: 0.05, min_duration_s: 0.25, min_iters: 20, final_rounds: 2, verdict_level: 0.75, candidate_rounds: 2,
          candidate_duration_s: 0.15}
tune: {max_candidates: 3, time_limit_s: 120, min_step: 0.1}
"""


@pytest.mark.slow
@pytest.mark.parametrize("model", ["default", "resnet18"])
@pytest.mark.parametrize("criterion", __import__("stages.score", fromlist=["CRITERIA"]).CRITERIA.names())
def test_every_criterion_end_to_end(cli, tmp_path, monkeypatch, criterion, model):
    """Every criterion through every stage, on the embedded default and on torchvision resnet18
    (random init and data: fidelity; an empty TORCH_HOME so nothing is read or downloaded)."""
    from tests.conftest import FAST_YAML

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(FAST_YAML if model == "default" else TORCHVISION_YAML)
    code, _, err = cli("run", "--config", cfg, "--criterion", criterion, "--out", tmp_path / "r", "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((tmp_path / "r" / "report.json").read_text())
    assert rep["criterion"] == criterion and rep["final"]["accuracy"] is not None
    assert rep["final"]["macs"] < rep["baseline"]["macs"]  # something was pruned
    assert json.loads((tmp_path / "r" / "parity.json").read_text())["parity"]["output"]["fail_frac"] == 0.0


def test_pruned_checkpoint_loads_as_a_model_spec(default_run):
    """`file:runs/x/pruned.pt` rebuilds the pruned model (plan replayed), e.g. to prune it again."""
    from stages.load.models import ModelRequest, load_model

    _, out, _ = default_run
    lm = load_model(ModelRequest(f"file:{out / 'pruned.pt'}"))
    rep = json.loads((out / "report.json").read_text())
    assert sum(p.numel() for p in lm.module.parameters()) == rep["final"]["params"]
    assert lm.input_shape == (1, 32, 32) and "pruned checkpoint" in lm.notes[0]
