"""Remote ``cpu`` (``--target cpu --device user@host``) against the loopback sshd: a real copy of
the model and the worker, a real measurement in a fresh process on the "device", a real fetch of
its result, and the remote folder removed afterwards. The "device" is this machine, and its
Python is this virtual environment's (the system python3 here has no onnxruntime)."""

from __future__ import annotations

import glob
import subprocess
import sys

import numpy as np
import pytest
import torch

from core.errors import ConfigError, StageError
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import MeasureSettings, get_target
from targets.ort.runner import OrtRunner

FAST = MeasureSettings(warmup_s=0.02, min_duration_s=0.1, min_iters=10)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("remote-models")
    torch.manual_seed(0)
    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), d / "small.onnx", ExportSettings())
    export_onnx(CifarResNet(8, 16, 1).eval(), (1, 32, 32), d / "wider.onnx", ExportSettings())
    return d / "small.onnx", d / "wider.onnx"


def _workdirs() -> set[str]:
    return set(glob.glob("/tmp/edge-pipeline.*"))


def test_remote_cpu_measures_over_ssh_with_the_local_record_shape(sshd, small_models, tmp_path):
    before = _workdirs()
    remote = get_target("cpu", sshd.options(remote_python=sys.executable))
    engines = [remote.build(p, (1, 32, 32), tmp_path) for p in small_models]
    assert all("on " + sshd.address in e.meta["runtime"] for e in engines)
    recs = remote.measure(engines, FAST, rounds=2)

    local = get_target("cpu")
    ref = local.measure([local.build(small_models[0], (1, 32, 32), tmp_path)], FAST)[0]
    for r in recs:
        assert set(r) == set(ref)  # the same record as the local cpu target
        lat = r["latency_ms"]
        assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["iterations"] >= 20 and len(r["round_medians_ms"]) == 2
        assert r["peak_rss_mb"] > r["empty_rss_mb"] > 0 and r["memory_mb"] > 0
        assert r["measured_on"].startswith(f"cpu over ssh {sshd.address}: onnxruntime ")
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["ratio_to_first"] > 0
    assert _workdirs() == before  # every remote folder was removed


def test_remote_cpu_accuracy_runs_locally_on_the_same_graph(sshd, small_models, tmp_path):
    remote = get_target("cpu", sshd.options(remote_python=sys.executable))
    engine = remote.build(small_models[0], (1, 32, 32), tmp_path)
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with remote.runner(engine) as r, OrtRunner(small_models[0]) as ref:
        np.testing.assert_array_equal(r.run(x), ref.run(x))


def test_remote_python_without_onnxruntime_is_a_clear_error(sshd, small_models, tmp_path):
    probe = subprocess.run(["python3", "-c", "import onnxruntime"], capture_output=True, check=False)
    if probe.returncode == 0:
        pytest.skip("the system python3 has onnxruntime here")
    before = _workdirs()
    t = get_target("cpu", sshd.options(remote_python="python3"))
    with pytest.raises(StageError) as e:
        t.build(small_models[0], (1, 32, 32), tmp_path)
    assert "onnxruntime is not importable by python3" in str(e.value) and "pip install onnxruntime" in e.value.hint
    assert _workdirs() == before
    missing = get_target("cpu", sshd.options(remote_python="/nonexistent/python9"))
    with pytest.raises(StageError, match="command not found"):
        missing.build(small_models[0], (1, 32, 32), tmp_path)


def test_remote_cpu_options_are_checked_up_front(sshd, tmp_path):
    with pytest.raises(ConfigError, match="only applies with --device"):
        get_target("cpu", {"remote_python": "python3"})
    with pytest.raises(ConfigError, match="port"):
        get_target("cpu", {"device": "root@127.0.0.1:notaport"})
    with pytest.raises(ConfigError, match="known_hosts: file not found"):
        get_target("cpu", {"device": sshd.address, "known_hosts": str(tmp_path / "nope")})
    with pytest.raises(ConfigError, match="does not accept option 'device_profile'"):
        get_target("cpu", {"device": sshd.address, "device_profile": "orin-nano-8gb"})
