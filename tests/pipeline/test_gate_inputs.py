"""What the gate asks of its inputs: the accuracy floor on random data, the search's recovery against the final
one, the advice of a missed verdict, and `pipeline measure`'s full record."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from pipeline import settings
from pipeline.config import resolve_config
from pipeline.report import BUDGET_ADVICE, _advice, floor_advice
from search.budget import Budgets, Observed


def test_the_floor_is_off_on_random_data_unless_asked(tmp_path):
    default = resolve_config(None, {})
    assert default.constraints.max_accuracy_drop == 1.0 and not default.constraints.floor_on_random_data
    assert settings.allowed_drop(default, synthetic=True) is None
    assert settings.allowed_drop(default, synthetic=False) == 1.0
    flag = resolve_config(None, {"constraints": {"max_accuracy_drop": 2.0}})
    assert flag.constraints.floor_on_random_data and settings.allowed_drop(flag, synthetic=True) == 2.0
    own = tmp_path / "c.yaml"
    own.write_text("constraints: {speedup: 2.0, max_accuracy_drop: 0.5}\n")
    assert settings.allowed_drop(resolve_config(own, {}), synthetic=True) == 0.5
    accuracy = resolve_config(None, {"objective": "accuracy"})
    assert settings.allowed_drop(accuracy, synthetic=True) == 1.0  # the objective is the floor


def test_the_search_never_recovers_more_than_the_final_model_gets():
    cfg = resolve_config(None, {"recovery": {"steps": 0, "tune_steps": 20}})
    assert settings.evaluator_settings(cfg).distill.steps == 0
    cfg = resolve_config(None, {"recovery": {"steps": 150, "tune_steps": 20}})
    assert settings.evaluator_settings(cfg).distill.steps == 20


def test_a_missed_verdict_says_what_to_try_next():
    b = Budgets(None, None, 1.0, 99.0, speedup=2.0)
    assert _advice("not_met", b, Observed(1.0, None, 2.3, 90.0)) == floor_advice("accuracy")
    assert _advice("not_met", b, Observed(1.0, None, 1.5, 99.0)) == BUDGET_ADVICE
    assert _advice("not_met", b, Observed(1.0, None, 1.5, 90.0)) == f"{BUDGET_ADVICE}; {floor_advice('accuracy')}"
    assert _advice("met", b, Observed(1.0, None, 2.3, 99.0)) is None
    assert "verdict_cap_s" in _advice("inconclusive", b, Observed(1.0, None, 2.0, 99.0))
    assert "wanda" in floor_advice("top1") and "taylor" in floor_advice("fid-digits")


def test_measure_prints_the_contract_record(cli, tmp_path):
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, torch.randn(1, 3, 16, 16), str(path), input_names=["x"], dynamic_axes={"x": {0: "b"}},
                      dynamo=False)
    rc, out, err = cli("measure", str(path), "--json", "--duration", "0.1")
    assert rc == 0, err
    rec = json.loads(out)
    for key in ("latency_ms", "throughput", "memory_mb", "onnx_bytes", "engine_bytes", "params", "macs", "accuracy",
                "accuracy_metric", "measured_on"):
        assert key in rec, key
    assert rec["params"] == sum(p.numel() for p in model.parameters())
    assert rec["macs"] == 16 * 16 * 8 * 3 * 9 + 8 * 16 * 16 * 10
    assert rec["accuracy"] is None and rec["accuracy_metric"] is None


@pytest.mark.parametrize(("args", "needle"), [
    (["--target", "cpu", "--target-option", "foo=1"], "does not accept option 'foo'"),
    (["--target", "jetson"], "--device"),
    (["--target-option", "noequals"], "bad --target-option"),
])
def test_measure_takes_target_options_and_a_device(cli, tmp_path, args, needle):
    path = tmp_path / "m.onnx"
    torch.onnx.export(nn.Linear(4, 2).eval(), torch.randn(1, 4), str(path), dynamo=False)
    rc, _, err = cli("measure", str(path), *args)
    assert rc == 2 and needle in err and "Traceback" not in err
