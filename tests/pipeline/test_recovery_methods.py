"""`recovery.method` from the YAML and the CLI: dpm and maskprune end to end on the embedded default (report
section, swaps, recovery.png, the plan's widths), the registry's listing and refusals, the cswap default."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from pipeline.config import RunConfig as _RunConfig
from tests.conftest import FAST_YAML

QUICK_YAML = (FAST_YAML.replace("recovery: {steps: 60, tune_steps: 0, batch_size: 32}",
                                "recovery: {steps: 8, tune_steps: 0, batch_size: 32}")
              .replace("max_candidates: 6", "max_candidates: 3"))


@pytest.mark.parametrize("method", ["maskprune", pytest.param("dpm", marks=pytest.mark.slow)])
def test_recovery_method_end_to_end(cli, tmp_path, method):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(QUICK_YAML)
    out = tmp_path / "r"
    code, _, err = cli("run", "--config", cfg, "--recovery-method", method, "--recovery-option",
                       "rho=2" if method == "maskprune" else "t_len=2", "--out", out, "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((out / "report.json").read_text())
    rec = rep["recovery"]
    assert rec["method"] == method and rec["steps"] == 8 and rec["phase_steps"] == 4
    assert rec["hard_removal_max_abs"] < 1e-4 and rec["swapped"] is not None
    assert len(rec["curve"]["loss"]) == 8 and rec["curve"]["metric"]
    assert (out / "recovery.png").stat().st_size > 1000 and "## Recovery" in (out / "report.md").read_text()
    stages = {s["name"]: s for s in json.loads((out / "manifest.json").read_text())["stages"]}
    assert stages["recover"]["metrics"]["phase"]["hard_removal_max_abs"] < 1e-4
    policy = json.loads((out / "policy.json").read_text())  # the search's plan: recovery keeps its widths
    widths = {g: v["kept"] for g, v in policy["groups"].items()}  # (maskprune: a global ratio is uniform already)
    assert {g: v["kept"] for g, v in rep["policy"]["groups"].items()} == widths


def test_listing_shows_every_method_within_80_columns(cli):
    code, out, _ = cli("recoveries")
    assert code == 0
    for name in ("distill", "dpm", "maskprune", "none"):
        assert name in out
    assert "t_len=1.5" in out and max(len(line) for line in out.splitlines()) <= 80


def test_method_defaults_and_refusals():
    def RunConfig(**kw):  # noqa: N802 - a budget, so only the recovery part is judged
        return _RunConfig(constraints={"speedup": 1.5}, **kw)

    assert RunConfig().recovery.method == "distill"
    assert RunConfig(search="cswap", criterion="cswap").recovery.method == "none"  # C-SWAP: no fine-tuning
    assert RunConfig(search="cswap", criterion="cswap", recovery={"method": "distill"}).recovery.method == "distill"
    assert RunConfig(recovery={"method": "dpm", "options": {"t_len": "2"}}).recovery.options == {"t_len": "2"}
    with pytest.raises(ValidationError, match="unknown recovery method 'dmp'.*dpm"):
        RunConfig(recovery={"method": "dmp"})
    with pytest.raises(ValidationError, match="has no option 'rho'"):
        RunConfig(recovery={"method": "dpm", "options": {"rho": 1}})
    with pytest.raises(ValidationError, match="is not a float"):
        RunConfig(recovery={"method": "dpm", "options": {"t_len": "x"}})
    with pytest.raises(ValidationError, match="recovery.method maskprune is not combined with prune.sparsity"):
        RunConfig(recovery={"method": "maskprune"}, prune={"sparsity": "2:4"})


def test_bad_recovery_method_on_the_cli_is_one_line_exit_2(cli, tmp_path):
    code, out, err = cli("run", "--recovery-method", "maskprun", "--dry-run", "--out", tmp_path / "r")
    assert code == 2 and "maskprune" in err and "Traceback" not in out + err
