"""The tensorrt target. Unmarked tests cover the pure-Python parts (precision dispatch per
TensorRT version, timing-cache key, option checks, plan + sidecar writing, ONNX facts, parity,
INT8 calibration batches from the calibration split and the calibration cache, batch splitting
for accuracy through the engine).
Tests marked ``tensorrt`` build and run real engines; they skip where TensorRT is not installed
(it is not installable on the machines this was written on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError, ParityError
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import TARGETS, MeasureSettings, get_target
from targets.tensorrt import (
    OnnxFacts,
    TrtSettings,
    batch_profile,
    onnx_facts,
    parity_check,
    precision_plan,
    require_tensorrt,
    timing_cache_key,
    write_plan,
)

FP32 = OnnxFacts("input", ("batch", 1, 32, 32), has_fp16=False, has_qdq=False)
FP16 = OnnxFacts("input", ("batch", 1, 32, 32), has_fp16=True, has_qdq=False)
QDQ = OnnxFacts("input", ("batch", 1, 32, 32), has_fp16=False, has_qdq=True)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    d = tmp_path_factory.mktemp("trt")
    torch.manual_seed(0)
    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), d / "small.onnx", ExportSettings())
    return d / "small.onnx"


@pytest.mark.parametrize("version, asked, facts, precision, typed, flags", [
    ("8.5.2", "fp16", FP32, "fp16", False, ("FP16",)),
    ("10.3.0", None, FP32, "fp16", False, ("FP16",)),
    ("10.3.0", "fp32", FP32, "fp32", False, ()),
    ("10.3.0", "int8", FP32, "int8", False, ("INT8", "FP16")),
    ("11.1.0", None, FP32, "fp32", True, ()),
    ("11.1.0", None, FP16, "fp16", True, ()),
    ("11.4.1", "fp16", FP16, "fp16", True, ()),
    ("11.1.0", "int8", QDQ, "int8", True, ()),
    ("11.1.0", "fp32", FP16, "fp16", True, ()),  # strongly typed keeps the ONNX's FP16
])
def test_precision_dispatch_by_version(version, asked, facts, precision, typed, flags):
    p = precision_plan(version, asked, facts)
    assert (p.precision, p.strongly_typed, p.builder_flags) == (precision, typed, flags)


def test_trt11_refuses_precision_flags_on_an_fp32_graph():
    with pytest.raises(ConfigError, match="strongly typed and this ONNX has no FP16 tensors") as e:
        precision_plan("11.1.0", "fp16", FP32)
    assert "AutoCast" in e.value.hint
    with pytest.raises(ConfigError, match="Q/DQ"):
        precision_plan("11.0.0", "int8", FP16)
    with pytest.raises(ConfigError, match="not one of"):
        precision_plan("10.3.0", "fp8", FP32)
    assert any("deprecates weak typing" in n for n in precision_plan("10.16.1", "fp16", FP32).notes)


def test_timing_cache_key_separates_what_invalidates_a_cache():
    shapes = {"input": [(1, 1, 32, 32), (8, 1, 32, 32), (8, 1, 32, 32)]}
    base = timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.16.1", "fp16", shapes)
    assert base == timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.16.1", "fp16", dict(shapes))  # stable
    assert base.startswith("nvidia-h100-pcie-sm90-trt10.16.1-fp16-")
    assert all(c.isalnum() or c in ".-" for c in base)  # a file name
    others = {
        timing_cache_key("Orin", "8.7", "10.16.1", "fp16", shapes),
        timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.3.0", "fp16", shapes),
        timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.16.1", "fp32", shapes),
        timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.16.1", "fp16", {"input": [(1, 1, 32, 32)] * 3}),
        timing_cache_key("NVIDIA H100 PCIe", "9.0", "10.16.1", "fp16", shapes, extra="dla=0"),
    }
    assert base not in others and len(others) == 5


def test_options_are_validated():
    assert TrtSettings.from_options({"precision": "FP16", "max_batch": 8, "sparsity": "true"}) == \
        TrtSettings(precision="fp16", max_batch=8, sparsity=True)
    with pytest.raises(ConfigError, match="Did you mean 'fp16'"):
        TrtSettings.from_options({"precision": "fp61"})
    with pytest.raises(ConfigError, match="workspace_mb must be an integer >= 1"):
        TrtSettings.from_options({"workspace_mb": 0})
    with pytest.raises(ConfigError, match="max_batch"):
        TrtSettings.from_options({"max_batch": "many"})
    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8"):
        TrtSettings.from_options({"precision": "fp32", "dla_core": 0})
    with pytest.raises(ConfigError, match="does not accept option 'device'"):
        get_target("tensorrt", {"device": "a@b"})
    assert batch_profile((3, 224, 224), 8) == ((1, 3, 224, 224), (8, 3, 224, 224), (8, 3, 224, 224))
    assert batch_profile((3, 224, 224), 8, opt_batch=1)[1] == (1, 3, 224, 224)


def test_table_row_is_honest_here():
    why = TARGETS.get("tensorrt").unavailable_reason()
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        assert "tensorrt Python package is not installed" in why
        with pytest.raises(ConfigError) as e:
            require_tensorrt()
        assert "pip install '.[tensorrt]'" in e.value.hint and "container" in e.value.hint


def test_plan_is_written_plain_with_a_sidecar(tmp_path):
    plan = bytes(range(256)) * 4  # stand-in bytes: the file must hold exactly what TensorRT serialized
    p = write_plan(plan, tmp_path / "m.plan", {"tensorrt": "10.3.0", "precision": "fp16"})
    assert p.read_bytes() == plan
    assert json.loads((tmp_path / "m.plan.json").read_text())["precision"] == "fp16"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.plan", "m.plan.json"]


def test_onnx_facts_of_an_export(small_onnx):
    f = onnx_facts(small_onnx)
    assert f.input_name == "input" and f.dynamic_batch and f.input_dims[1:] == (1, 32, 32)
    assert not f.has_fp16 and not f.has_qdq
    half = small_onnx.parent / "half.onnx"
    import onnx

    m = onnx.load(str(small_onnx))
    m.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    onnx.save(m, str(half))
    assert onnx_facts(half).has_fp16


def test_parity_collects_every_failing_output():
    a = [np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)]
    ok = parity_check(a, [x + 1e-3 for x in a], ["logits", "aux"])
    assert ok["logits"]["max_abs"] == pytest.approx(1e-3, rel=1e-3)
    with pytest.raises(ParityError) as e:
        parity_check(a, [a[0] + 0.5, a[1] + 0.5], ["logits", "aux"])
    assert "logits: max_abs 0.5" in str(e.value) and "aux: max_abs 0.5" in str(e.value)
    with pytest.raises(ParityError, match="shape"):
        parity_check([np.zeros((2, 3))], [np.zeros((3, 2))], ["logits"])


# ---------------------------------------------------------------- real TensorRT (skipped here)

@pytest.mark.tensorrt
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_measure_and_parity_on_a_real_gpu(small_onnx, tmp_path, precision):
    from targets.ort.runner import OrtRunner
    from targets.tensorrt import TrtRunner

    cache = tmp_path / "cache"
    t = get_target("tensorrt", {"precision": precision, "max_batch": 4, "workspace_mb": 256,
                                "timing_cache_dir": str(cache)})
    e = t.build(small_onnx, (1, 32, 32), tmp_path)
    assert e.path.is_file() and e.engine_bytes == e.path.stat().st_size
    meta = json.loads((tmp_path / (e.path.name + ".json")).read_text())
    assert (cache / f"{meta['timing_cache_key']}.cache").is_file()
    x = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    with TrtRunner(e.path) as r, OrtRunner(small_onnx) as ref:
        report = parity_check(r.run_all(x), ref.run_all(x), ref.output_names,
                              atol=1e-4 if precision == "fp32" else 1e-2, rtol=1e-3 if precision == "fp32" else 1e-2)
        assert r.device_memory_bytes >= 0
    assert all(v["fail_frac"] == 0 for v in report.values())
    rec = t.measure([e, e], MeasureSettings(warmup_s=0.05, min_duration_s=0.2, min_iters=20), rounds=2)
    assert 0 < rec[0]["latency_ms"]["median"] <= rec[0]["latency_ms"]["p99"]
    assert rec[1]["ratio_to_first"] == pytest.approx(1.0, rel=0.3)
    # a rebuild elsewhere finds the same timing cache (same GPU, TRT, precision, profile)
    e2 = t.build(small_onnx, (1, 32, 32), tmp_path / "again")
    assert e2.meta["timing_cache"] == meta["timing_cache"]


# ---------------------------------------------------------------- INT8 calibration and engine I/O (pure parts)

def _calib_split(n: int, shape=(1, 4, 4)):
    """Like the pipeline's calibration split: a sequence of (sample tensor, label) pairs."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(shape, generator=g), i % 3) for i in range(n)]


def test_calibration_batches_from_the_calibration_split():
    from targets.tensorrt import calibration_batches

    split = _calib_split(21)
    batches = calibration_batches(split, 4, 16, (1, 4, 4))
    assert len(batches) == 5 and all(b.shape == (4, 1, 4, 4) and b.dtype == np.float32 for b in batches)
    assert all(b.flags["C_CONTIGUOUS"] for b in batches)  # TensorRT reads raw device memory
    np.testing.assert_array_equal(batches[1][0], split[4][0].numpy())  # in order; the last partial batch dropped
    assert len(calibration_batches(split, 4, 2)) == 2  # stops at calibration_batches
    read = []

    def lazy():
        for item in split:
            read.append(1)
            yield item
    calibration_batches(lazy(), 2, 3)
    assert len(read) == 6  # only what is needed is read
    assert len(calibration_batches([np.zeros((1, 4, 4))] * 3, 3, 1)) == 1  # plain arrays work too
    with pytest.raises(ConfigError, match="at least one full batch of 8 samples, got 5"):
        calibration_batches(_calib_split(5), 8, 4)
    with pytest.raises(ConfigError, match=r"shape \(1, 4, 4\), the model takes \(3, 4, 4\)"):
        calibration_batches(split, 4, 1, (3, 4, 4))


def test_calibration_feed_hands_out_each_batch_once():
    from targets.tensorrt import CalibrationFeed, calibration_batches

    feed = CalibrationFeed(calibration_batches(_calib_split(12), 4, 16))
    assert feed.batch_size == 4 and feed.shape == (4, 1, 4, 4)
    got = [feed.next() for _ in range(4)]
    assert [g is None for g in got] == [False, False, False, True] and feed.fed == 3
    feed.reset()
    np.testing.assert_array_equal(feed.next(), got[0])
    with pytest.raises(ConfigError, match="no calibration batches"):
        CalibrationFeed([])
    with pytest.raises(ValueError, match="differ in shape"):
        CalibrationFeed([np.zeros((2, 3)), np.zeros((1, 3))])


def test_calibration_cache_is_keyed_and_written_atomically(tmp_path):
    from targets.tensorrt import CalibrationCache, calibration_batches, calibration_cache_path

    a = calibration_batches(_calib_split(8), 4, 2)
    b = [x + 1 for x in a]
    path = calibration_cache_path(tmp_path, "ab" * 32, "10.3.0", a)
    assert path == calibration_cache_path(tmp_path, "ab" * 32, "10.3.0", [x.copy() for x in a])  # stable
    assert path.parent == tmp_path and path.name.startswith("calib-entropy2-trt10.3.0-2x4x1x4x4-")
    others = {calibration_cache_path(tmp_path, "cd" * 32, "10.3.0", a),  # another network
              calibration_cache_path(tmp_path, "ab" * 32, "10.4.0", a),  # another TensorRT
              calibration_cache_path(tmp_path, "ab" * 32, "10.3.0", b),  # other data
              calibration_cache_path(tmp_path, "ab" * 32, "10.3.0", a[:1])}  # fewer batches
    assert path not in others and len(others) == 4
    cache = CalibrationCache(path)
    assert cache.read() is None and not cache.exists
    path.write_bytes(b"")
    assert cache.read() is None  # an empty file (an interrupted write elsewhere) is no cache
    cache.write(b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\n")
    assert cache.read().startswith(b"TRT-100300-EntropyCalibration2") and cache.exists
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left behind


def test_int8_build_inputs_and_the_trt11_message():
    from targets.tensorrt import TensorRTTarget

    assert TrtSettings.from_options({"precision": "int8"}).precision == "int8"

    assert TensorRTTarget({"precision": "int8"}).build_inputs == frozenset({"calibration"})
    assert TensorRTTarget({"precision": "fp16"}).build_inputs == frozenset()
    with pytest.raises(ConfigError, match="entropy calibrator is implicit quantization, TensorRT <= 10") as e:
        precision_plan("11.1.0", "int8", FP32)
    assert "Q/DQ" in e.value.hint


def test_engine_batches_are_split_and_padded():
    from targets.tensorrt import pad_batch, split_batches

    assert split_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert split_batches(3, 8) == [(0, 3)] and split_batches(0, 4) == []
    x = np.ones((2, 3), np.float32)
    padded, n = pad_batch(x, 4, 4)  # a static batch-4 engine
    assert padded.shape == (4, 3) and n == 2 and padded[2:].sum() == 0
    same, n = pad_batch(x, 1, 2)  # dynamic 1..8: as it is
    assert same is x and n == 2


# ---------------------------------------------------------------- real TensorRT: INT8 and accuracy (skipped here)

@pytest.mark.tensorrt
def test_int8_entropy_calibration_from_the_split_and_its_cache(small_onnx, tmp_path):
    t = get_target("tensorrt", {"precision": "int8", "max_batch": 4, "calibration_batches": 3,
                                "timing_cache_dir": str(tmp_path / "cache")})
    split = _calib_split(20, (1, 32, 32))
    e = t.build(small_onnx, (1, 32, 32), tmp_path, calibration=split)
    cal = e.meta["calibration"]
    assert cal["batches"] == 3 and cal["batch"] == 4 and not cal["cache_reused"]
    assert Path(cal["cache"]).is_file() and Path(cal["cache"]).read_bytes()
    again = t.build(small_onnx, (1, 32, 32), tmp_path / "again", calibration=split)
    assert again.meta["calibration"]["cache_reused"] and again.meta["calibration"]["cache"] == cal["cache"]
    with pytest.raises(ConfigError, match="needs calibration data"):
        t.build(small_onnx, (1, 32, 32), tmp_path / "none")


@pytest.mark.tensorrt
def test_accuracy_runs_through_the_engine_in_any_batch(small_onnx, tmp_path):
    """evaluate_top1 feeds batches of 64 to an engine built for at most 4: the runner splits them."""
    from stages.evaluate import evaluate_top1
    from targets.ort.runner import OrtRunner

    t = get_target("tensorrt", {"precision": "fp32", "max_batch": 4})
    e = t.build(small_onnx, (1, 32, 32), tmp_path)
    data = [(x, int(i % 10)) for i, (x, _) in enumerate(_calib_split(70, (1, 32, 32)))]
    with t.runner(e) as r, OrtRunner(small_onnx) as ref:
        assert r.batch_range() == (1, 4, False)
        x = np.stack([d[0].numpy() for d in data[:9]])
        np.testing.assert_allclose(r.run(x), ref.run(x), atol=1e-2, rtol=1e-2)
        assert evaluate_top1(r, data) == pytest.approx(evaluate_top1(ref, data), abs=100 / 70 + 1e-9)
