"""The jetson target's ``runtime: ort``: ONNX Runtime on the device through the same SSH transport,
no TensorRT involved (nothing is faked: the worker really runs on the "device").

The "device" is this machine behind the loopback sshd of ``conftest.py``; its Python is this
virtual environment's. It is not a Jetson, which the records say. The last test is the issue's
"done" check: ``pipeline run --target jetson --device user@127.0.0.1:PORT`` end to end.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import MeasureSettings, get_target
from targets.jetson import check_jetson_options

FAST = MeasureSettings(warmup_s=0.02, min_duration_s=0.1, min_iters=10)
CPU_KEYS = {"latency_ms", "iterations", "round_medians_ms", "ratio_to_first", "throughput", "peak_rss_mb",
            "empty_rss_mb", "memory_mb", "session_create_s", "first_run_ms", "batch", "threads", "rounds",
            "engine_bytes", "measured_on"}


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("jetson-ort")
    torch.manual_seed(0)
    export_onnx(CifarResNet(8, 16, 1).eval(), (1, 32, 32), d / "wide.onnx", ExportSettings())
    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), d / "narrow.onnx", ExportSettings())
    return d / "wide.onnx", d / "narrow.onnx"


def _folders(log_text: str) -> set[str]:
    return set(re.findall(r"working folder (/\S*edge-pipeline\.\S+)", log_text))


@pytest.mark.parametrize("options, message", [
    ({"runtime": "onnx"}, "runtime 'onnx' is not one of trtexec, ort"),
    ({"runtime": "ORT ", "precision": "fp16"}, "'precision' applies to runtime trtexec"),
    ({"runtime": "ort", "max_batch": 4}, "'max_batch' applies to runtime trtexec"),
    ({"remote_python": "python3"}, "'remote_python' applies to runtime ort"),
    ({"runtime": "ort", "device_profile": "orin-nano-8g"}, "Did you mean 'orin-nano-8gb'"),
])
def test_runtime_options_are_checked_up_front(options, message):
    with pytest.raises(ConfigError, match=message):
        check_jetson_options(options)
    with pytest.raises(ConfigError, match=message):  # before availability: the same without --device
        get_target("jetson", options)
    assert check_jetson_options({}) == "trtexec" and check_jetson_options({"runtime": "ort"}) == "ort"


def test_ort_on_the_device_over_ssh(sshd, two_models, tmp_path, caplog):
    """Real worker, real measurement on the "device"; probe facts in the record; folders removed."""
    caplog.set_level("INFO", logger="pipeline")
    t = get_target("jetson", sshd.options(runtime="ort", remote_python=sys.executable))
    assert t.runtime == "ort"
    engines = [t.build(p, (1, 32, 32), tmp_path) for p in two_models]
    assert all(e.path is None and e.meta["jetson_runtime"] == "ort" for e in engines)
    assert "CPUExecutionProvider on " + sshd.address in engines[0].meta["runtime"]
    recs = t.measure(engines, FAST, rounds=2)
    for r in recs:
        assert CPU_KEYS <= set(r)
        assert r["runtime"] == "ort" and r["precision"] == "fp32" and r["device_profile"] is None
        assert 0 < r["latency_ms"]["median"] <= r["latency_ms"]["p99"] and len(r["round_medians_ms"]) == 2
        assert r["peak_rss_mb"] > r["empty_rss_mb"] > 0
        assert r["measured_on"].startswith(f"jetson device (not identified as a Jetson) ({sshd.address}), "
                                           "runtime ort: onnxruntime ")
        assert any("does not look like a Jetson" in w for w in r["warnings"])
        assert not any("tegrastats" in w for w in r["warnings"])
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["ratio_to_first"] > 0
    folders = _folders(caplog.text)
    assert len(folders) >= 3 and not any(Path(f).exists() for f in folders)  # probe, build x2, measure: removed


def test_ort_records_the_probe_of_a_jetson_look_alike(sshd, two_models, tmp_path):
    """nvpmodel / jetson_clocks on the remote PATH (texts written for this test): the same probe as trtexec."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for name, text in (("nvpmodel", "echo 'NV Power Mode: 15W'; echo 0"),
                       ("jetson_clocks", "echo 'GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=624750000'")):
        (fake / name).write_text(f"#!/bin/sh\n# test fake\n{text}\n")
        (fake / name).chmod(0o755)
    t = get_target("jetson", sshd.options(runtime="ort", remote_python=sys.executable, remote_path=str(fake),
                                          device_profile="orin-nano-8gb"))
    rec = t.measure([t.build(two_models[1], (1, 32, 32), tmp_path)], FAST)[0]
    assert rec["device"]["power_mode"] == "15W" and rec["device_profile"] == "orin-nano-8gb"
    assert rec["measured_on"].startswith(f"jetson Jetson Orin Nano 8GB ({sshd.address}), runtime ort: ")
    assert "power mode 15W" in rec["measured_on"]


E2E_YAML = """
model: example:digits-resnet
data: digits
objective: latency
constraints: {{speedup: 1.2, max_accuracy_drop: null}}
criterion: magnitude-l2
recovery: {{steps: 0, tune_steps: 0}}
measure: {{warmup_s: 0.05, min_duration_s: 0.1, min_iters: 20, final_rounds: 2, verdict_level: 0.75, candidate_rounds: 1,
          candidate_duration_s: 0.1}}
tune: {{max_candidates: 2, time_limit_s: 60, min_step: 0.2}}
target_options: {{known_hosts: {kh}, identity_file: {key}, ssh_config: none, remote_python: {py}}}
"""


def test_pipeline_run_target_jetson_device_end_to_end(sshd, cli, tmp_path):
    """``pipeline run --target jetson --device user@127.0.0.1:PORT --target-option runtime=ort``: exit 0, the
    report names the runtime, every remote folder is removed; the same run against an unreachable budget: exit 1."""
    cfg = tmp_path / "e2e.yaml"
    cfg.write_text(E2E_YAML.format(kh=sshd.keys.known_hosts, key=sshd.keys.user_key, py=sys.executable))
    out = tmp_path / "run"
    code, _, err = cli("run", "--config", cfg, "--target", "jetson", "--device", sshd.address,
                       "--target-option", "runtime=ort", "--out", out, "-q")
    assert code == 0, err
    rep = json.loads((out / "report.json").read_text())
    assert rep["target"] == "jetson" and rep["constraints"]["met"] and rep["speedup"] >= 1.2
    for m in (rep["baseline"], rep["final"]):
        assert m["details"]["runtime"] == "ort" and "runtime ort: onnxruntime" in m["measured_on"]
        assert sshd.address in m["measured_on"] and m["accuracy"] is not None
    assert [s["name"] for s in rep["stages"] if s["status"] == "failed"] == []
    engine = json.loads((out / "engine.json").read_text())
    assert engine["target"] == "jetson" and engine["meta"]["jetson_runtime"] == "ort"
    log = (out / "logs" / "pipeline.log").read_text()
    folders = _folders(log)
    assert len(folders) >= 4 and not any(Path(f).exists() for f in folders)
    assert all(f"removed {f}" in log for f in folders)

    # the same measured run judged against a budget nobody meets: exit 1. Resumed on a copy with the
    # policy replayed, so only the verdict is recomputed (no second search over SSH)
    again = tmp_path / "unmet"
    shutil.copytree(out, again)
    code, _, err = cli("run", "--config", cfg, "--target", "jetson", "--device", sshd.address,
                       "--target-option", "runtime=ort", "--policy", again / "policy.json",
                       "--latency-ms", "0.0001", "--out", again, "--resume", "-q")
    assert code == 1, err
    rep = json.loads((again / "report.json").read_text())
    assert not rep["constraints"]["met"] and any("latency" in v for v in rep["constraints"]["violations"])
    assert rep["final"]["details"]["runtime"] == "ort"
    assert not any(Path(f).exists() for f in _folders((again / "logs" / "pipeline.log").read_text()))
