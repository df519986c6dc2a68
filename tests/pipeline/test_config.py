from __future__ import annotations

from pathlib import Path

import pytest

from core.errors import ConfigError
from pipeline.config import RunConfig, config_to_yaml, resolve_config


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_default_config_is_the_documented_default():
    cfg = resolve_config(None, {})
    assert cfg.model == "example:digits-resnet"
    assert cfg.target == "cpu" and cfg.objective == "latency"
    assert cfg.constraints.speedup == 2.0 and cfg.constraints.max_accuracy_drop == 1.0
    assert cfg.recovery.method == "distill" and cfg.recovery.steps > 0


def test_yaml_syntax_error_names_the_line(tmp_path):
    p = write(tmp_path, "model: example:digits-resnet\nconstraints:\n  speedup: [2.0\ntarget: cpu\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(p, {})
    assert "line" in e.value.message and "YAML syntax error" in e.value.message


def test_unknown_key_suggests_the_closest(tmp_path):
    p = write(tmp_path, "objectiv: latency\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(p, {})
    assert "unknown config key 'objectiv'" in e.value.message and "Did you mean 'objective'" in e.value.message


def test_unknown_nested_key_suggests_within_section(tmp_path):
    p = write(tmp_path, "constraints:\n  speedupp: 2\n")
    with pytest.raises(ConfigError) as e:
        resolve_config(p, {})
    assert "constraints.speedupp" in e.value.message and "'speedup'" in e.value.message


@pytest.mark.parametrize("key,val", [("speedup", 0), ("latency_ms", -1.0), ("memory_mb", 0.0), ("speedup", -2)])
def test_non_positive_budget_rejected(key, val):
    with pytest.raises(ConfigError) as e:
        resolve_config(None, {"constraints": {key: val}})
    assert key in e.value.message


def test_speedup_and_latency_both_given_is_an_error():
    with pytest.raises(ConfigError) as e:
        resolve_config(None, {"constraints": {"speedup": 2.0, "latency_ms": 3.0}})
    assert "either latency_ms or speedup" in e.value.message


def test_flag_latency_replaces_file_speedup():
    cfg = resolve_config(None, {"constraints": {"latency_ms": 0.5}})
    assert cfg.constraints.latency_ms == 0.5 and cfg.constraints.speedup is None


def test_memory_objective_needs_memory_budget():
    with pytest.raises(ConfigError) as e:
        resolve_config(None, {"objective": "memory"})
    assert "memory_mb" in e.value.message


def test_config_is_frozen_and_roundtrips():
    cfg = resolve_config(None, {"seed": 3})
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen error type is not part of its API
        cfg.seed = 4  # type: ignore[misc]
    again = RunConfig.model_validate(__import__("yaml").safe_load(config_to_yaml(cfg)))
    assert again == cfg


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError) as e:
        resolve_config(tmp_path / "nope.yaml", {})
    assert "not found" in e.value.message
