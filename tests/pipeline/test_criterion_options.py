"""Criterion options: declared with defaults, cast from CLI strings, unknown ones rejected before any work."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from stages.score import CRITERIA


def test_defaults_and_casting():
    wanda = CRITERIA.get("wanda")
    assert wanda.resolve_options(None) == {"power": 1.0}
    assert wanda.resolve_options({"power": "2"}) == {"power": 2.0}


def test_unknown_and_uncastable_options_are_config_errors():
    with pytest.raises(ConfigError, match="has no option 'alpha'") as e:
        CRITERIA.get("wanda").resolve_options({"alpha": 1})
    assert "power" in e.value.hint
    with pytest.raises(ConfigError, match="not a float"):
        CRITERIA.get("wanda").resolve_options({"power": "high"})


def test_every_criterion_declares_plain_option_defaults():
    """Options come from YAML / KEY=VALUE flags: defaults must be plain scalars a user can type."""
    for name in CRITERIA.names():
        for k, v in CRITERIA.get(name).params.items():
            assert isinstance(v, (bool, int, float, str)) or v is None, (name, k, v)


def test_cli_rejects_unknown_option_before_creating_the_run_folder(cli, tmp_path):
    out = tmp_path / "r"
    code, _, err = cli("run", "--criterion", "wanda", "--criterion-option", "nope=1", "--out", out)
    assert code == 2 and "has no option 'nope'" in err and not out.exists()
    code, _, err = cli("run", "--criterion-option", "missing-equals", "--out", out)
    assert code == 2 and "bad --criterion-option" in err and not out.exists()


def test_dry_run_shows_resolved_criterion_options(cli, tmp_path):
    code, text, err = cli("run", "--criterion", "aap", "--criterion-option", "power=2", "--dry-run",
                          "--out", tmp_path / "r")
    assert code == 0, err
    assert "criterion_options" in text and "power: 2" in text
