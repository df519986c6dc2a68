"""`pipeline run` on the diffusion U-Net (`example:digits-ddpm`): two named inputs in the ONNX, the Generation
section and samples.png in the run folder, the generative metrics where they fit and a one-line refusal where not."""

from __future__ import annotations

import json

import onnx
import pytest

from tests.conftest import FAST_YAML

DDPM_YAML = FAST_YAML.replace("model: example:digits-resnet\n", "model: example:digits-ddpm\n") \
    .replace("data: digits\n", "").replace("max_accuracy_drop: 3.0", "max_accuracy_drop: 0.05") \
    .replace("max_candidates: 6", "max_candidates: 3")


def test_ddpm_runs_end_to_end_with_two_inputs_and_a_generation_report(cli, tmp_path):
    cfg = tmp_path / "ddpm.yaml"
    cfg.write_text(DDPM_YAML)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", cfg, "--metric", "denoise-loss", "--recovery-steps", "10", "--out", out, "-q")
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "denoise-loss" and rep["final"]["macs"] < rep["baseline"]["macs"]
    g = onnx.load(str(out / "model.onnx")).graph
    assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in g.input] == \
        [("sample", ["batch", 1, 32, 32]), ("timestep", ["batch"])]
    gen = rep["generative"]
    assert gen["plot"] == "samples.png" and (out / "samples.png").stat().st_size > 1000
    assert 0 < gen["fid_digits"]["baseline"] < gen["fid_digits"]["final"] * 10
    assert gen["sampling_run_s"]["steps"] == 20 and gen["sampling_run_s"]["final"] > 0
    md = (out / "report.md").read_text()
    assert "## Generation" in md and "a proxy for FID, not FID" in md and "MSE " in md


def test_generative_metric_on_other_data_is_one_line(cli, tmp_path):
    rc, _, err = cli("run", "--model", "example:digits-resnet", "--metric", "fid-digits", "--speedup", "1.2",
                     "--out", tmp_path / "r")
    assert rc == 2 and "denoising split" in err and "Traceback" not in err


@pytest.mark.slow
def test_ddpm_default_run_meets_the_issue_done_means(cli, tmp_path):
    """`pipeline run --model example:digits-ddpm --speedup 1.5` from the defaults: exit 0 or 1, fid-digits."""
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", "example:digits-ddpm", "--speedup", "1.5", "--out", out, "-q")
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "fid-digits" and rep["generative"]["fid_digits"]["final"] > 0
