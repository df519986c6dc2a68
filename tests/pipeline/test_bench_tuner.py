"""``bench/tuner_vs_uniform.py --dry``: the runs it would make are valid pipeline configs (nothing is run)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

from pipeline.config import resolve_config

ROOT = Path(__file__).resolve().parents[2]


def bench():
    spec = importlib.util.spec_from_file_location("tuner_vs_uniform", ROOT / "bench" / "tuner_vs_uniform.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def configs(out: str) -> dict[str, dict]:
    rows = [line for line in out.splitlines() if line.startswith(("default ", "resnet18 ", "mobilenet_v2 "))]
    return {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in rows}


def test_quick_dry_lists_every_run_as_a_valid_config(capsys, tmp_path):
    assert bench().main(["--quick", "--dry", "--methods", "greedy,greedy-uniform,optuna,optuna-uniform,greedy-stairs"]) == 0
    cfgs = configs(capsys.readouterr().out)
    assert list(cfgs) == [f"default 2x {m}" for m in ("uniform:magnitude-l2", "uniform:bn-scale", "uniform:taylor",
                                                        "greedy", "greedy-uniform", "optuna", "optuna-uniform",
                                                        "greedy-stairs")]
    for label, cfg in cfgs.items():
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump(cfg))
        rc = resolve_config(path, {})  # what `pipeline run --config` will accept
        assert rc.constraints.speedup == 2.0 and rc.constraints.max_accuracy_drop is None, label
        assert rc.recovery.steps == cfgs["default 2x uniform:magnitude-l2"]["recovery"]["steps"]  # same budget
    assert resolve_config(tmp_path / "c.yaml", {}).prune.round_to is None  # greedy-stairs: the staircase
    u = cfgs["default 2x greedy-uniform"]
    assert u["tune"]["uniform"] is True and cfgs["default 2x optuna"]["tune"]["families"] == "group"


def test_full_dry_covers_three_models_and_three_budgets(capsys):
    assert bench().main(["--dry"]) == 0
    cfgs = configs(capsys.readouterr().out)
    assert len(cfgs) == 3 * 3 * 7
    r18 = cfgs["resnet18 1.5x greedy"]
    assert r18["model"] == "torchvision:resnet18" and r18["data"] == "random" and r18["input_shape"] == [3, 64, 64]


def test_transformers_get_their_own_criteria_and_the_sensitivity_search(capsys, tmp_path):
    assert bench().main(["--dry", "--models", "minilm", "--budgets", "2", "--methods", "sensitivity"]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("minilm ")]
    cfgs = {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in rows}
    assert list(cfgs) == [f"minilm 2x {m}" for m in ("uniform:magnitude-l2", "uniform:wanda", "uniform:stade",
                                                       "sensitivity")]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfgs["minilm 2x sensitivity"]))
    rc = resolve_config(path, {})
    assert rc.search == "sensitivity" and rc.model == "example:minilm"
