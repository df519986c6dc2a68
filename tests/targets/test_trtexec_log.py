"""Tests for targets.trtexec.log against real recorded trtexec output.

Fixtures live in the shared folder (/work/shared/fixtures, see its SOURCES.md). Every
file in fixtures/trtexec/ and fixtures/trtexec-json/ is picked up by the parametrized
invariant tests; the value tests below pin numbers read off specific logs by hand.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from targets.trtexec.log import (
    MIB,
    ProfileSummary,
    TimesSummary,
    TrtexecParseError,
    TrtexecResult,
    decode_trt_version,
    load_trtexec_json,
    parse_trtexec_log,
    parse_trtexec_profile_json,
    parse_trtexec_times_json,
    to_measurement,
)

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
TRT_DIR = FIXTURES / "trtexec"
JSON_DIR = FIXTURES / "trtexec-json"
TEGRA_DIR = FIXTURES / "tegrastats"
ORT_DIR = FIXTURES / "ort-perf-test"
SKIP_REASON = f"shared fixtures folder {FIXTURES} is absent"

M_KEYS = {
    "latency_ms", "throughput", "memory_mb", "onnx_bytes", "engine_bytes", "params", "macs",
    "accuracy", "accuracy_metric", "measured_on", "source", "trt_version", "notes",
}


def _params(directory: Path, pattern: str):
    files = sorted(directory.glob(pattern)) if directory.is_dir() else []
    if not files:
        return [pytest.param(None, marks=pytest.mark.skip(reason=SKIP_REASON), id="no-fixtures")]
    return [pytest.param(p, id=p.name) for p in files]


def _text(name: str) -> str:
    path = TRT_DIR / name
    if not path.is_file():
        pytest.skip(f"fixture {path} is absent ({SKIP_REASON})")
    return path.read_text(encoding="utf-8", errors="replace")


def _parse(name: str) -> TrtexecResult:
    return parse_trtexec_log(_text(name))


# --------------------------------------------------------------------------- every log


@pytest.mark.parametrize("path", _params(TRT_DIR, "*.log"))
def test_every_log_parses_with_consistent_numbers(path):
    result = parse_trtexec_log(path.read_text(encoding="utf-8", errors="replace"))
    assert result.n_runs >= 1
    assert result.last is result.runs[-1] and result.first is result.runs[0]
    for run in result.runs:
        if not run.has_latency:
            assert run.throughput_qps is None
            assert any("latency missing" in n for n in run.notes)
            continue
        assert run.throughput_qps is not None and run.throughput_qps > 0
        for stats in (run.latency, run.gpu_compute, run.end_to_end, run.enqueue, run.h2d, run.d2h):
            if stats is None:
                continue
            present = [v for v in (stats.min, stats.median, stats.max) if v is not None]
            assert present == sorted(present)
            if stats.p99 is not None and stats.max is not None:
                assert stats.p99 <= stats.max
        if run.latency is not None and run.gpu_compute is not None:
            # per query Latency = H2D + compute + D2H, so these hold exactly
            assert run.gpu_compute.min <= run.latency.min
            assert run.gpu_compute.max <= run.latency.max
            assert run.gpu_compute.mean <= run.latency.mean
        if run.queries and run.total_host_walltime_s:
            # throughput is queries / host walltime: proves we read the summary number
            assert run.throughput_qps == pytest.approx(
                run.queries / run.total_host_walltime_s, rel=2e-3
            )
        assert run.primary_latency.median > 0


@pytest.mark.parametrize("path", _params(TRT_DIR, "*.log"))
def test_every_log_version_matches_file_name(path):
    result = parse_trtexec_log(path.read_text(encoding="utf-8", errors="replace"))
    exact = re.match(r"trt(\d+\.\d+\.\d+)-", path.name)
    loose = re.match(r"trt(\d+)\.x-", path.name)
    if exact:
        assert result.trt_version == exact.group(1)
    elif loose:
        assert result.trt_version is None or result.trt_version.startswith(loose.group(1) + ".")
        assert result.trt_version is not None or any("version not printed" in n for n in result.notes)
    else:
        pytest.fail(f"fixture name {path.name} does not start with trt<version>-")


@pytest.mark.parametrize("path", _params(TRT_DIR, "*.log"))
def test_every_log_gives_a_measurement_record(path):
    result = parse_trtexec_log(path.read_text(encoding="utf-8", errors="replace"))
    m = to_measurement(result)
    assert set(m) == M_KEYS
    assert set(m["latency_ms"]) == {"median", "p90", "p99", "mean", "std", "cv"}
    assert m["source"] == "trtexec-log"
    assert m["trt_version"] == result.trt_version
    assert m["measured_on"].startswith("trtexec ")
    json.dumps(m)  # the record must be plain JSON
    primary = result.primary_latency
    if primary is None:
        assert m["latency_ms"]["median"] is None
    else:
        assert m["latency_ms"]["median"] == primary.median
        assert any("latency_ms from" in n for n in m["notes"])


# --------------------------------------------------------------------------- per-variant values


def test_trt7_legacy_multiline_concatenated_runs():
    r = _parse("trt7.x-unknown-device-likely-jetson-resnet50-caffe-fp16-multibatch.log")
    assert r.n_runs == 7
    assert [run.batch for run in r.runs] == [1, 4, 8, 16, 32, 64, 128]
    assert all(run.summary_format == "legacy-multiline" for run in r.runs)
    assert all(run.status == "PASSED" for run in r.runs)
    first = r.first
    assert first.trt_version is None and first.device_name is None
    assert first.throughput_qps == 37.0368
    assert first.total_host_walltime_s == 3.05102
    assert first.latency.median == 26.9689
    assert first.latency.p99 == 27.1187
    assert first.latency.p90 is None  # only 99% printed before TRT 8.5
    assert first.end_to_end.median == 26.9833
    assert first.end_to_end.p99 == 27.1382
    assert first.gpu_compute.median == 26.9075
    assert first.gpu_compute.mean == 26.925
    assert first.gpu_compute.p99 == 27.0562
    assert first.total_gpu_compute_s == 3.04253
    assert first.enqueue.median == 1.80298 and first.enqueue.mean is None
    assert first.precision_flags == ("fp16",)
    assert first.spin_wait is True
    # the top-level attributes read through to the last run
    assert r.throughput_qps == r.last.throughput_qps == 47.7781
    assert r.last.gpu_compute.median == 2671.88
    assert r.batch == 128
    # implicit batch: "Timing trace has 384 queries" = 3 inferences x 128 samples
    assert r.last.queries == 384
    assert r.last.total_host_walltime_s * 1000 / r.last.latency.mean == pytest.approx(3, rel=0.01)
    assert any("samples/s" in n for n in r.last.notes)
    assert not any("samples/s" in n for n in r.first.notes)  # batch 1


def test_trt803_end_to_end_and_integer_version():
    r = _parse("trt8.0.3-gtx1070-mnist-loadengine-fp32.log")
    assert r.trt_version == "8.0.3"  # banner v8003 and "TensorRT version: 8003"
    assert r.device_name == "NVIDIA GeForce GTX 1070"
    assert r.compute_capability == "6.1"
    assert r.throughput_qps == 6378.46
    assert r.gpu_compute.median == 0.153564
    assert r.gpu_compute.p99 == 0.165878
    assert r.gpu_compute.p90 is None and r.gpu_compute.p95 is None
    assert r.latency.median == 0.160278
    assert r.end_to_end.median == 0.28833
    assert r.h2d_mean_ms == 0.00437015 and r.d2h_mean_ms == 0.00237627
    # "Loaded engine size: 12 MB": TRT 8.0 says MB for the number 8.2 prints as MiB
    assert r.engine_bytes == 12 * MIB and r.engine_size_source == "loaded-engine"
    assert r.device_memory_bytes == 2810368  # [V] Allocated activation device memory
    assert r.shapes == {"x:0": "4x1x28x28"}
    assert r.batch == 4 and r.implicit_batch is False
    assert r.queries == 19138


def test_trt823_loaded_engine_mib():
    r = _parse("trt8.2.3-gtx1070-mnist-loadengine-fp32.log")
    assert r.trt_version == "8.2.3"
    assert r.engine_bytes == 12 * MIB
    assert r.throughput_qps == 6199.99
    assert r.end_to_end.median == 0.289062
    assert r.gpu_compute.median == 0.152588


def test_trt821_nano_build_after_deserialize():
    r = _parse("trt8.2.1-jetson-nano-ufld-culane18-build-fp32-repo-unidentified.log")
    assert r.trt_version == "8.2.1"
    assert r.device_name == "NVIDIA Tegra X1"
    assert r.build_seconds == 184.708  # printed after the deserialization lines
    assert r.engine_bytes == 186 * MIB
    assert r.device_memory_bytes == 22118400
    assert r.device_memory_source == "total-activation-memory"
    assert r.end_to_end.median == 90.3167
    assert r.gpu_compute.median == 90.0183
    assert r.throughput_qps == 11.0613


def test_trt841_verbose_activation_memory_last_value_wins():
    r = _parse("trt8.4.1-gtx1070-mnist-build-verbose-fp32.log")
    assert r.trt_version == "8.4.1"
    assert r.end_to_end is None  # End-to-End line removed in 8.4
    assert r.gpu_compute.p99 == 0.38501 and r.gpu_compute.p90 is None
    assert r.build_seconds == 2.6722
    # runtime [V] allocation (2409472) is preferred over the build figure (2408456)
    assert r.device_memory_bytes == 2409472
    assert r.shapes == {"tensor-0": "4x1x28x28"}
    assert r.throughput_qps == 6170.89


def test_trt840_summary_only_version_from_passed_banner():
    r = _parse("trt8.4.0-agx-xavier-oe4t-mnist-loadengine-summary-only.log")
    assert r.n_runs == 1
    assert r.trt_version == "8.4.0"
    assert r.status == "PASSED"
    assert r.batch == 16 and r.implicit_batch is True  # from --batch=16
    assert r.device_name is None and r.engine_bytes is None
    assert r.throughput_qps == 41087.7
    assert r.gpu_compute.median == 0.388443
    assert r.end_to_end is None


def test_trt8x_summary_with_end_to_end_and_no_banner():
    r = _parse("trt8.x-xavier-nx-oe4t-mnist-summary-e2e.log")
    assert r.trt_version is None and r.status is None
    assert r.throughput_qps == 27207.0
    assert r.end_to_end.median == 0.585938
    assert r.total_host_walltime_s == 3.00158
    assert r.total_gpu_compute_s == 2.88214
    assert r.latency_includes_transfers is True  # from non-zero H2D times


def test_trt852_rtx3090_percentiles_and_second_activation_memory():
    r = _parse("trt8.5.2-rtx3090-yolov8n-seg-nms.log")
    assert r.trt_version == "8.5.2"
    assert r.device_name == "NVIDIA GeForce RTX 3090"
    g = r.gpu_compute
    assert (g.median, g.p90, g.p95, g.p99) == (4.9054, 4.94385, 5.00531, 5.02271)
    assert r.latency.median == 9.76929
    assert r.device_memory_bytes == 722982912  # the second, final "Total Activation Memory"
    assert r.build_seconds == 351.008
    assert r.engine_bytes == 8 * MIB
    assert r.precision_flags == ("fp16",)
    assert r.shapes == {"images": "4x3x640x640"}
    assert r.throughput_qps == 196.933


def test_trt852_orin_loadengine():
    r = _parse("trt8.5.2-orin-nx16gb-likely-unet-loadengine-fp32.log")
    assert r.device_name == "Orin"
    assert r.throughput_qps == 10.792
    assert r.gpu_compute.median == 89.0779
    assert r.deserialize_seconds == 9.30766
    assert r.device_memory_bytes == 153 * MIB  # IExecutionContext creation: GPU +153
    assert r.device_memory_source == "context-allocation-mib"


def test_trt852_dumpprofile_without_summary_returns_what_it_can():
    r = _parse("trt8.5.2-xavier-nx16gb-likely-lprnet-dumpprofile-no-summary.log")
    assert r.has_latency is False
    assert r.primary_latency is None and r.throughput_qps is None
    assert r.trt_version == "8.5.2"
    assert r.device_name == "Xavier"
    assert r.engine_bytes == 28 * MIB
    assert any("--separateProfileRun" in n for n in r.notes)
    prof = r.profile
    assert prof.source == "console" and prof.iterations == 320
    assert len(prof.layers) == 28
    assert prof.layers[0].name == "[HostToDeviceCopy 0]"
    assert prof.layers[0].average_ms == 0.0329
    assert prof.total_average_ms == 9.6126 and prof.total_median_ms == 8.9061
    assert prof.total_time_ms == 3076.04
    biggest = max(prof.layers, key=lambda x: x.percentage)
    assert biggest.name == "{ForeignNode[lstm_W...Max_reduce_min]}" and biggest.percentage == 70.3
    m = to_measurement(r)
    assert m["latency_ms"] == {k: None for k in ("median", "p90", "p99", "mean", "std", "cv")}
    assert m["throughput"] is None


def test_trt861_cov_warning_and_measurement_std():
    r = _parse("trt8.6.1-unknown-gpu-docker-mnist12-summary.log")
    assert r.trt_version == "8.6.1"
    assert r.cov_percent == 29.0605
    assert r.summary_warnings[0].startswith("GPU compute time is unstable")
    m = to_measurement(r)
    assert m["latency_ms"]["median"] == 0.0166016
    assert m["latency_ms"]["p90"] == 0.0174561
    assert m["latency_ms"]["cv"] == pytest.approx(0.290605)
    assert m["latency_ms"]["std"] == pytest.approx(0.290605 * 0.0171428)
    assert m["throughput"] == 40624.2
    assert m["memory_mb"] is None


def test_trt861_h100_corrupted_nohup_line_is_harmless():
    r = _parse("trt8.6.1-h100pcie-yolov11s-1280-build-fp16.log")
    assert r.trt_version == "8.6.1"
    assert r.device_name == "NVIDIA H100 PCIe"
    assert r.build_seconds == 1033.79
    assert r.device_memory_bytes == 88883200
    assert r.engine_bytes == 21 * MIB
    assert r.cov_percent == 25.6499
    assert r.throughput_qps == 484.641
    assert r.gpu_compute.median == 1.97192
    assert r.precision_flags == ("fp16",)


def test_trt801_nano_enqueue_bound_warning():
    r = _parse("trt8.0.1-jetson-nano-deepstream6.0-yolo-loadengine-fp16-exporttimes-repo-unidentified.log")
    assert r.trt_version == "8.0.1"
    assert r.device_name == "NVIDIA Tegra X1"
    assert r.engine_bytes == 10 * MIB  # "Loaded engine size: 10 MB"
    assert r.batch == 1 and r.implicit_batch is True
    assert r.cov_percent is None
    assert any("Throughput may be bound by Enqueue Time" in w for w in r.summary_warnings)
    assert r.gpu_compute.median == 39.9982
    assert r.throughput_qps == 24.5583


def test_trt1014_created_engine_and_context_memory():
    r = _parse("trt10.14.1-rtx6000ada-mnist-build.log")
    assert r.trt_version == "10.14.1"
    assert r.device_name == "NVIDIA RTX 6000 Ada Generation"
    assert r.engine_bytes == round(12.5724 * MIB)  # "Created engine with size", not "Loaded"
    assert r.engine_size_source == "created-engine"
    assert r.device_memory_bytes == round(0.119629 * MIB) == 125440
    assert r.device_memory_source == "execution-context"
    assert r.build_seconds == 2.60577
    assert r.cov_percent == 12.8763
    assert r.throughput_qps == 23188.6
    assert r.gpu_compute.median == 0.0285645


def test_trt1016_build_measurement_record():
    r = _parse("trt10.16.1-h100pcie-mnist-build.log")
    assert r.trt_version == "10.16.1"
    assert r.latency_includes_transfers is True and r.cuda_graph is False
    m = to_measurement(r)
    assert m["measured_on"] == "trtexec 10.16.1 on NVIDIA H100 PCIe"
    assert m["latency_ms"]["median"] == 0.0361328
    assert m["latency_ms"]["p90"] == 0.0368652
    assert m["latency_ms"]["p99"] == 0.041748
    assert m["latency_ms"]["mean"] == 0.0359588
    assert m["latency_ms"]["cv"] == pytest.approx(0.0658751)
    assert m["throughput"] == 15374.3
    assert m["engine_bytes"] == round(12.5744 * MIB)
    assert m["memory_mb"] == pytest.approx(0.119629, abs=1e-6)
    assert m["trt_version"] == "10.16.1"
    assert any("GPU Compute Time" in n for n in m["notes"])


def test_trt1016_verbose_throughput_is_the_summary_not_the_explanation():
    text = _text("trt10.16.1-h100pcie-mnist-loadengine-cudagraph-verbose.log")
    # the trap: a naive grep finds two "Throughput:" lines, the second a [V] explanation
    naive = [ln for ln in text.splitlines() if "Throughput:" in ln]
    assert len(naive) == 2 and "[V]" in naive[1]
    r = parse_trtexec_log(text)
    assert r.throughput_qps == 24896.9
    assert r.gpu_compute.median == 0.0388184
    assert r.h2d.mean == 0 and r.d2h.mean == 0
    assert r.latency_includes_transfers is False  # --noDataTransfers
    assert r.cuda_graph is True and r.spin_wait is True
    assert r.shapes == {"x": "4x1x28x28"} and r.batch == 4
    assert r.device_memory_bytes == round(1.91406 * MIB)
    assert r.engine_bytes == 6 * MIB
    assert any("excludes H2D/D2H" in n for n in r.notes)


# --------------------------------------------------------------------------- TRT 11 / versions


# No real TRT 11 log is in the fixture set yet; this is a synthetic summary in the
# documented format, with the TRT 11 banner encoding (major*10000 + minor*100 + patch).
TRT11_SYNTHETIC = """\
&&&& RUNNING TensorRT.trtexec [TensorRT v110100] [b7] # trtexec --loadEngine=model.plan{extra}
[01/02/2027-10:00:00] [I] === Performance summary ===
[01/02/2027-10:00:00] [I] Throughput: 1000.5 qps
[01/02/2027-10:00:00] [I] Latency: min = 0.9 ms, max = 1.3 ms, mean = 1.0 ms, median = 0.99 ms, percentile(90%) = 1.1 ms, percentile(95%) = 1.15 ms, percentile(99%) = 1.2 ms
[01/02/2027-10:00:00] [I] GPU Compute Time: min = 0.9 ms, max = 1.3 ms, mean = 1.0 ms, median = 0.99 ms, percentile(90%) = 1.1 ms, percentile(95%) = 1.15 ms, percentile(99%) = 1.2 ms
[01/02/2027-10:00:00] [I] Total Host Walltime: 3.0 s
[01/02/2027-10:00:00] [I] Explanations of the performance metrics are printed in the verbose logs.
&&&& PASSED TensorRT.trtexec [TensorRT v110100] [b7] # trtexec --loadEngine=model.plan{extra}
"""


def test_trt11_defaults_flagged():
    r = parse_trtexec_log(TRT11_SYNTHETIC.format(extra=""))
    assert r.trt_version == "11.1.0"
    assert r.latency_includes_transfers is False
    assert r.cuda_graph is True
    assert any("not comparable" in n for n in r.notes)
    m = to_measurement(r)
    assert any("not comparable" in n for n in m["notes"])
    assert m["measured_on"] == "trtexec 11.1.0 on unknown device"


def test_trt11_include_data_transfers_flag():
    r = parse_trtexec_log(TRT11_SYNTHETIC.format(extra=" --includeDataTransfers"))
    assert r.latency_includes_transfers is True
    assert r.throughput_qps == 1000.5


@pytest.mark.parametrize(
    "raw, expected",
    [("8003", "8.0.3"), ("8502", "8.5.2"), ("8601", "8.6.1"), ("101401", "10.14.1"),
     ("101601", "10.16.1"), ("110401", "11.4.1"), ("8.2.3", "8.2.3"), (None, None), ("x", None)],
)
def test_decode_trt_version(raw, expected):
    assert decode_trt_version(raw) == expected


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize("text", ["", "   \n\t\n", "hello world\nthis is not a log\n", "Throughput: 5 qps"])
def test_not_trtexec_raises(text):
    with pytest.raises(TrtexecParseError) as exc:
        parse_trtexec_log(text)
    msg = str(exc.value)
    assert msg.startswith("not trtexec output") and "\n" not in msg


@pytest.mark.parametrize("path", _params(TEGRA_DIR, "*.log"))
def test_tegrastats_text_is_not_trtexec(path):
    with pytest.raises(TrtexecParseError, match="not trtexec output"):
        parse_trtexec_log(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("path", _params(ORT_DIR, "*.log"))
def test_onnxruntime_perf_test_text_is_not_trtexec(path):
    with pytest.raises(TrtexecParseError, match="not trtexec output"):
        parse_trtexec_log(path.read_text(encoding="utf-8"))


def test_trtexec_parse_error_is_value_error():
    assert issubclass(TrtexecParseError, ValueError)


def test_to_measurement_rejects_other_types():
    with pytest.raises(TypeError):
        to_measurement({"latency": 1})


# --------------------------------------------------------------------------- tegrastats link


def test_memory_from_tegrastats_when_log_has_none():
    r = _parse("trt8.x-xavier-nx-oe4t-mnist-summary-e2e.log")
    tpath = TEGRA_DIR / "tegrastats-xaviernx-likely-l4t35-deepstream6.3-cpu-gpu-burn.log"
    if not tpath.is_file():
        pytest.skip(SKIP_REASON)
    from targets.tegrastats import parse_tegrastats, summarize

    text = tpath.read_text(encoding="utf-8")
    for form in (text, parse_tegrastats(text), summarize(parse_tegrastats(text))):
        m = to_measurement(r, tegrastats=form)
        assert m["memory_mb"] == 5507 - 2274  # peak RAM used minus first sample
        assert m["measured_on"] == (
            "trtexec (version unknown) on Jetson Xavier NX 8GB (guessed from tegrastats)"
        )
        assert any("tegrastats" in n for n in m["notes"])


def test_device_memory_wins_over_tegrastats():
    r = _parse("trt10.16.1-h100pcie-mnist-build.log")
    fake = {"ram_growth_mb": 999, "module_guess": "Jetson Nano 4GB"}
    m = to_measurement(r, tegrastats=fake)
    assert m["memory_mb"] == pytest.approx(125440 / MIB)
    assert m["measured_on"] == "trtexec 10.16.1 on NVIDIA H100 PCIe"


# --------------------------------------------------------------------------- JSON exports


@pytest.mark.parametrize("path", _params(JSON_DIR, "*.json"))
def test_every_json_export_detected_by_shape(path):
    out = load_trtexec_json(path)
    if "exportTimes" in path.name:
        assert isinstance(out, TimesSummary) and out.n > 0
        assert out.compute.min <= out.compute.median <= out.compute.max
        assert out.latency.p90 <= out.latency.p95 <= out.latency.p99 <= out.latency.max
    elif "exportProfile" in path.name:
        assert isinstance(out, ProfileSummary) and out.layers
        assert out.total_average_ms > 0
    else:
        pytest.fail(f"fixture {path.name} names neither exportTimes nor exportProfile")


def _json(name: str):
    path = JSON_DIR / name
    if not path.is_file():
        pytest.skip(SKIP_REASON)
    return path


def test_export_times_values():
    path = _json("trt8.x-rtx3090-resnet-tf-fp32.exportTimes.json")
    raw = json.loads(path.read_text())
    s = parse_trtexec_times_json(raw)
    assert s.n == 263
    lat = sorted(r["latencyMs"] for r in raw)
    assert s.latency.median == lat[131] == 12.1682  # odd n: the middle element
    assert s.latency.min == 12.0986 and s.latency.max == 13.0181
    assert s.latency.p99 == lat[math.ceil(0.99 * 263) - 1]
    assert s.latency.cv == pytest.approx(s.latency.std / s.latency.mean)
    assert 0 < s.latency.cv < 0.05
    # --noDataTransfers: h2d/d2h are zero and latency == compute for every record
    assert s.transfers_included is False and s.h2d.max == 0 and s.d2h.max == 0
    assert s.compute.median == s.latency.median
    assert s.enqueue is not None and s.enqueue.min >= 0
    m = to_measurement(s)
    assert m["source"] == "trtexec-times-json"
    assert m["latency_ms"]["median"] == 12.1682
    assert m["latency_ms"]["std"] == s.compute.std


def test_export_profile_values():
    path = _json("trt8.x-a100-resnet-pytorch-fp32-b32.exportProfile.json")
    raw = json.loads(path.read_text())
    p = parse_trtexec_profile_json(raw)
    assert p.source == "json" and p.iterations == 1
    assert len(p.layers) == 32
    assert p.layers[0].name == "Conv_0 + Relu_1"
    assert p.layers[0].average_ms == 0.52224 and p.layers[0].percentage == 24.5902
    assert p.total_average_ms == pytest.approx(2.123776, abs=1e-6)
    assert sum(x.percentage for x in p.layers) == pytest.approx(100.0, abs=1e-3)


def test_load_json_from_text_and_object():
    path = _json("trt8.x-a100-resnet-pytorch-fp32-b32.exportProfile.json")
    text = path.read_text()
    assert isinstance(load_trtexec_json(text), ProfileSummary)
    assert isinstance(load_trtexec_json(json.loads(text)), ProfileSummary)
    assert isinstance(load_trtexec_json(str(path)), ProfileSummary)


@pytest.mark.parametrize(
    "obj",
    [{"foo": 1}, [], [{"count": 3}], [{"name": "x"}], [1, 2, 3], [{"latencyMs": 1.0}], "{not json"],
)
def test_unrelated_json_raises(obj):
    with pytest.raises(TrtexecParseError) as exc:
        load_trtexec_json(obj)
    assert "\n" not in str(exc.value)


def test_missing_json_file_raises(tmp_path):
    with pytest.raises(TrtexecParseError, match="cannot read"):
        load_trtexec_json(tmp_path / "nope.json")


def test_times_parser_rejects_profile_and_vice_versa():
    with pytest.raises(TrtexecParseError, match="exportTimes"):
        parse_trtexec_times_json([{"count": 1}, {"name": "a", "averageMs": 1.0}])
    with pytest.raises(TrtexecParseError, match="exportProfile"):
        parse_trtexec_profile_json([{"latencyMs": 1.0, "computeMs": 1.0}])
