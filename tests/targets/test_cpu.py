"""The cpu target (real ONNX Runtime, real subprocess measurement) and the target table."""

from __future__ import annotations

import pytest
import torch

from core.errors import ConfigError, SpecError
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import TARGETS, MeasureSettings, get_target
from targets.ort.cpu import physical_cores

FAST = MeasureSettings(warmup_s=0.02, min_duration_s=0.1, min_iters=10)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    torch.manual_seed(0)
    big, small = CifarResNet(8, 32, 1).eval(), CifarResNet(8, 8, 1).eval()
    export_onnx(big, (1, 32, 32), d / "big.onnx", ExportSettings())
    export_onnx(small, (1, 32, 32), d / "small.onnx", ExportSettings())
    return d / "big.onnx", d / "small.onnx"


def test_cpu_measure_record(two_models, tmp_path):
    t = get_target("cpu")
    engines = [t.build(p, (1, 32, 32), tmp_path) for p in two_models]
    big, small = t.measure(engines, FAST, rounds=2)
    for r in (big, small):
        lat = r["latency_ms"]
        assert set(lat) == {"median", "p90", "p99", "mean", "std", "cv"}
        assert 0 < lat["median"] <= lat["p90"] <= lat["p99"]
        assert r["iterations"] >= 20 and len(r["round_medians_ms"]) == 2
        assert r["peak_rss_mb"] > r["empty_rss_mb"] > 0 and r["memory_mb"] > 0
        assert r["throughput"] > 0 and r["threads"] == physical_cores()
        assert "onnxruntime" in r["measured_on"]
    assert big["ratio_to_first"] == 1.0
    assert small["ratio_to_first"] > 1.5  # 16x fewer MACs is measurably faster
    assert small["memory_mb"] < big["memory_mb"]


def test_cpu_runner_and_batch(two_models, tmp_path):
    t = get_target("cpu")
    e = t.build(two_models[1], (1, 32, 32), tmp_path)
    with t.runner(e) as r:
        assert r.run(torch.zeros(5, 1, 32, 32).numpy()).shape == (5, 10)
    rec = t.measure([e], MeasureSettings(batch=4, warmup_s=0.02, min_duration_s=0.1, min_iters=5))[0]
    assert rec["batch"] == 4


def test_cpu_build_of_a_broken_file_is_a_clear_error(tmp_path):
    from core.errors import StageError

    p = tmp_path / "broken.onnx"
    p.write_bytes(b"not onnx")
    with pytest.raises(StageError, match="cannot load"):
        get_target("cpu").build(p, (1, 32, 32), tmp_path)


def test_unknown_target_suggests():
    with pytest.raises(SpecError, match="Did you mean 'jetson'"):
        get_target("jetsno")


def test_unsupported_option_rejected_up_front():
    with pytest.raises(ConfigError, match="does not accept option 'precision'"):
        get_target("cpu", {"precision": "fp16"})


def test_unavailable_targets_say_why():
    for name in ("cuda", "tensorrt", "jetson"):
        why = TARGETS.get(name).unavailable_reason()
        if why is None:
            continue  # the hardware is here: its own marked tests run
        with pytest.raises(ConfigError, match="not available here"):
            get_target(name)


TESTED_TARGETS = {"cpu": test_cpu_measure_record, "cuda": test_unavailable_targets_say_why,  # + test_cuda.py
                  "tensorrt": test_unavailable_targets_say_why, "jetson": test_unavailable_targets_say_why}


def test_every_target_in_the_table_has_a_test():
    assert set(TARGETS.names()) <= set(TESTED_TARGETS), set(TARGETS.names()) - set(TESTED_TARGETS)
