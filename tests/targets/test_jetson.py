"""The jetson target: device profiles, version tables, trtexec command lines, and the whole SSH
flow against the loopback sshd.

No Jetson is involved here. In the remote-flow tests the "device" is this machine reached over
SSH, and ``trtexec`` / ``tegrastats`` / ``nvpmodel`` / ``jetson_clocks`` on its PATH are small
fakes: trtexec and tegrastats replay RECORDED outputs from ../shared/fixtures (a TensorRT 10.16.1
log recorded on an H100, an --exportTimes trace recorded on an RTX 3090, a tegrastats window
recorded on an Orin Nano 8GB; see fixtures/SOURCES.md), and nvpmodel / jetson_clocks print
short texts written for these tests. So these tests check the transport, the command lines
that reach the device, the fetch and the parsing; not TensorRT on a Jetson. Tests that need a
real Jetson are marked ``jetson``.
"""

from __future__ import annotations

import glob
import json
import statistics
import sys
from pathlib import Path

import pytest
import torch

from core.errors import ConfigError, StageError
from core.records import latency_stats
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import TARGETS, MeasureSettings, get_target
from targets.devices import (
    PROFILES,
    detect_profile,
    get_profile,
    jetpack_for_l4t,
    parse_jetson_clocks,
    parse_nv_tegra_release,
    parse_nvpmodel,
    tensorrt_for_l4t,
)
from targets.jetson import BuildCommand, check_profile_options, measure_argv, parse_probe
from targets.tensorrt import OnnxFacts, TrtSettings, precision_plan

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
TRT_LOG = FIXTURES / "trtexec" / "trt10.16.1-h100pcie-mnist-build.log"
TIMES = FIXTURES / "trtexec-json" / "trt8.x-rtx3090-resnet-tf-fp32.exportTimes.json"
TEGRA = FIXTURES / "tegrastats" / "tegrastats-orin-nano-8gb-jp6.2-l4t36.4.7-100ms-window.log"
FAST = MeasureSettings(warmup_s=0.05, min_duration_s=0.2, min_iters=10)

DYN = OnnxFacts("input", ("batch", 1, 32, 32), has_fp16=False, has_qdq=False)
STATIC = OnnxFacts("input", (1, 1, 32, 32), has_fp16=False, has_qdq=False)


# ---------------------------------------------------------------- profiles and versions

def test_profiles_match_the_issue_table():
    want = {  # name: (arch, GB, DLA cores)
        "orin-nano-4gb": ("sm_87", 4, 0), "orin-nano-8gb": ("sm_87", 8, 0), "orin-nx-8gb": ("sm_87", 8, 1),
        "orin-nx-16gb": ("sm_87", 16, 2), "agx-orin-32gb": ("sm_87", 32, 2), "agx-orin-64gb": ("sm_87", 64, 2),
        "xavier-nx-8gb": ("sm_72", 8, 2), "xavier-nx-16gb": ("sm_72", 16, 2), "agx-xavier-32gb": ("sm_72", 32, 2),
        "agx-xavier-64gb": ("sm_72", 64, 2)}
    assert {n: (p.gpu_arch, p.memory_gb, p.dla_cores) for n, p in PROFILES.items()} == want
    assert all(p.sparse_2_4 == (p.family == "orin") for p in PROFILES.values())  # Ampere+ only
    assert PROFILES["orin-nano-8gb"].compute_capability == "8.7"
    assert PROFILES["xavier-nx-8gb"].compute_capability == "7.2"
    assert PROFILES["orin-nx-16gb"].tensorrt_versions()["6.1"] == "10.3"
    assert PROFILES["orin-nx-16gb"].tensorrt_versions()["5.1.1"] == "8.5.2"
    xavier = PROFILES["agx-xavier-32gb"].tensorrt_versions()
    assert xavier["5.1.2"] == "8.5.2" and not any(k.startswith("6") for k in xavier)  # Xavier stops at JP 5


def test_profile_names_are_validated_with_a_suggestion():
    assert get_profile("Orin Nano 8GB").name == "orin-nano-8gb"
    assert get_profile("AGX_ORIN_64GB").name == "agx-orin-64gb"
    with pytest.raises(ConfigError, match="Did you mean 'orin-nano-8gb'") as e:
        get_profile("orin-nano-8g")
    assert "orin-nx-16gb" in e.value.hint
    with pytest.raises(ConfigError, match="unknown Jetson device profile"):
        get_target("jetson", {"device": "a@b", "device_profile": "tx2"})


@pytest.mark.parametrize("text, l4t, jp, trt", [
    (("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, DATE: Wed Jan  8 01:49:37 "
      "UTC 2025"), "36.4.3", "6.2", "10.3"),
    ("# R36 (release), REVISION: 4.7, GCID: 42132812, BOARD: generic, EABI: aarch64", "36.4.7", "6.2.1", "10.3"),
    ("# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64", "35.4.1", "5.1.2", "8.5.2"),
    ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64", "32.7.1", "4.6.1", "8.2.1"),
    ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64", "36.3.0", "6.0", "8.6.2"),
])
def test_l4t_to_jetpack_and_tensorrt(text, l4t, jp, trt):
    """nv_tegra_release lines in the documented format (constructed here, not recorded)."""
    assert parse_nv_tegra_release(text) == l4t
    assert jetpack_for_l4t(l4t).jetpack == jp
    assert tensorrt_for_l4t(l4t) == trt


def test_unknown_versions_stay_unknown():
    assert parse_nv_tegra_release("not a release file") is None
    assert jetpack_for_l4t("99.1.0") is None and tensorrt_for_l4t("99.1.0") is None
    assert tensorrt_for_l4t("35.5.0") == "8.5.2"  # not listed exactly: the R35 family ships TRT 8.5.2


def test_power_mode_and_clock_parsers():
    """nvpmodel / jetson_clocks texts written in the documented format (not recorded outputs)."""
    assert parse_nvpmodel("NV Fan Mode:quiet\nNV Power Mode: MAXN_SUPER\n2\n") == parse_nvpmodel(
        "NV Power Mode: MAXN_SUPER\n2")
    pm = parse_nvpmodel("NVPM WARN: fan mode is not set!\nNV Power Mode: 15W\n0")
    assert (pm.name, pm.mode_id) == ("15W", 0)
    assert parse_nvpmodel("nvpmodel: command not found").name is None
    locked = parse_jetson_clocks(
        "SOC family:tegra234  Machine:NVIDIA Jetson Orin Nano Developer Kit\nOnline CPUs: 0-5\n"
        "cpu0: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0\n"
        "cpu1: Online=1 Governor=schedutil MinFreq=1510400 MaxFreq=1510400 CurrentFreq=1510400 IdleStates: WFI=0\n"
        "GPU MinFreq=624750000 MaxFreq=624750000 CurrentFreq=624750000\n"
        "EMC MinFreq=204000000 MaxFreq=2133000000 CurrentFreq=2133000000 FreqOverride=1\nNV Power Mode: 15W\n")
    assert locked.locked is True and locked.cpus_online == 2 and locked.power_mode == "15W"
    unlocked = parse_jetson_clocks(
        "cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=1510400 CurrentFreq=729600 IdleStates: WFI=1\n"
        "GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000\n")
    assert unlocked.locked is False and unlocked.gpu_mhz == (306.0, 624.75, 306.0)
    assert parse_jetson_clocks("Error: run jetson_clocks as root").locked is None


def test_detect_profile_from_model_and_memory():
    assert detect_profile("NVIDIA Jetson Orin Nano Developer Kit", 7607).name == "orin-nano-8gb"
    assert detect_profile("NVIDIA Jetson Orin Nano Developer Kit", 3600).name == "orin-nano-4gb"
    assert detect_profile("NVIDIA Jetson AGX Orin Developer Kit", 62841).name == "agx-orin-64gb"
    assert detect_profile("NVIDIA Orin NX Developer Kit", 15503).name == "orin-nx-16gb"
    assert detect_profile("NVIDIA Jetson Xavier NX Developer Kit", 7000).name == "xavier-nx-8gb"
    assert detect_profile("Jetson-AGX", 31000).name == "agx-xavier-32gb"
    assert detect_profile("Raspberry Pi 4 Model B", 4000) is None


# ---------------------------------------------------------------- trtexec command lines

def _cmd(version: str, precision: str | None, facts: OnnxFacts = DYN, **kw) -> list[str]:
    settings = TrtSettings(precision=precision, **kw)
    plan = precision_plan(version, precision, facts)
    return BuildCommand(version, "/r/model.onnx", "/r/model.plan", "/r/timing.cache", plan, facts,
                        (1, 32, 32), settings).argv()


def test_build_command_trt10_uses_precision_flags():
    a = _cmd("10.3.0", "fp16", max_batch=8, workspace_mb=1024)
    assert a[:5] == ["trtexec", "--onnx=/r/model.onnx", "--saveEngine=/r/model.plan",
                     "--timingCacheFile=/r/timing.cache", "--skipInference"]
    assert "--fp16" in a and "--stronglyTyped" not in a
    assert "--minShapes=input:1x1x32x32" in a and "--optShapes=input:8x1x32x32" in a
    assert "--maxShapes=input:8x1x32x32" in a and "--memPoolSize=workspace:1024" in a
    assert _cmd("10.3.0", None)[5] == "--fp16"  # default on TRT <= 10: FP16 by flag
    int8 = _cmd("8.5.2", "int8")
    assert "--int8" in int8 and "--fp16" in int8
    assert "--workspace=512" in _cmd("8.2.1", "fp32", workspace_mb=512)  # before memPoolSize (8.4)
    assert not any(x.startswith("--minShapes") for x in _cmd("10.3.0", "fp32", STATIC))


def test_build_command_trt11_is_strongly_typed():
    a = _cmd("11.1.0", None)
    assert not any(f in a for f in ("--fp16", "--int8", "--bf16", "--best", "--stronglyTyped"))
    fp16_onnx = OnnxFacts("input", ("batch", 1, 32, 32), has_fp16=True, has_qdq=False)
    assert precision_plan("11.1.0", "fp16", fp16_onnx).precision == "fp16"
    assert "--fp16" not in _cmd("11.1.0", "fp16", fp16_onnx)
    with pytest.raises(ConfigError, match="strongly typed") as e:
        _cmd("11.1.0", "fp16")  # an FP32 ONNX cannot become FP16 by a flag on TRT 11
    assert "AutoCast" in e.value.hint
    with pytest.raises(ConfigError, match="Q/DQ"):
        _cmd("11.1.0", "int8")


def test_build_command_dla_and_sparsity():
    a = _cmd("10.3.0", "fp16", dla_core=1, sparsity=True)
    assert "--useDLACore=1" in a and "--allowGPUFallback" in a and "--sparsity=enable" in a


def test_measure_command_per_version():
    a = measure_argv("10.3.0", "/r/e0.plan", "/r/t.json", DYN, (1, 32, 32), 4, FAST, dla_core=0)
    assert a[:3] == ["trtexec", "--loadEngine=/r/e0.plan", "--exportTimes=/r/t.json"]
    assert "--shapes=input:4x1x32x32" in a and "--useSpinWait" in a and "--useDLACore=0" in a
    assert "--warmUp=50" in a and "--duration=1" in a and "--iterations=10" in a
    b = measure_argv("11.1.0", "/r/e0.plan", "/r/t.json", STATIC, (1, 32, 32), 1, FAST)
    assert "--useSpinWait" not in b and not any(x.startswith("--shapes") for x in b)
    named = measure_argv("10.3.0", "e", "t", OnnxFacts("in:0", ("b", 3), False, False), (3,), 2, FAST)
    assert "--shapes='in:0':2x3" in named  # trtexec's quoting for names with ':'


def test_profile_checks():
    with pytest.raises(ConfigError, match="no DLA"):
        check_profile_options(get_profile("orin-nano-8gb"), TrtSettings(precision="fp16", dla_core=0))
    with pytest.raises(ConfigError, match="dla_core must be < 1"):
        check_profile_options(get_profile("orin-nx-8gb"), TrtSettings(precision="fp16", dla_core=1))
    with pytest.raises(ConfigError, match="2:4"):
        check_profile_options(get_profile("xavier-nx-16gb"), TrtSettings(sparsity=True))
    with pytest.raises(ConfigError, match="DLA is not supported by TensorRT 11.1"):
        check_profile_options(get_profile("agx-orin-64gb"), TrtSettings(precision="fp16", dla_core=0), "11.1.0")
    check_profile_options(get_profile("agx-orin-64gb"), TrtSettings(precision="fp16", dla_core=1, sparsity=True))
    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8"):
        get_target("jetson", {"device": "a@b", "precision": "fp32", "dla_core": 0})


def test_parse_probe():
    """A probe output assembled for this test in the format PROBE_SCRIPT prints."""
    text = ("@@model\nNVIDIA Jetson Orin Nano Developer Kit\n@@nv_tegra_release\n"
            "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64\n"
            "@@meminfo\nMemTotal:        7789732 kB\n@@nvpmodel\nNV Power Mode: 15W\n0\n@@jetson_clocks\n"
            "cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=1510400 CurrentFreq=729600\n"
            "@@trtexec\n/usr/src/tensorrt/bin/trtexec\n&&&& RUNNING TensorRT.trtexec [TensorRT v100300] # trtexec "
            "--help\n@@tegrastats\n/usr/bin/tegrastats\n@@end\n")
    i = parse_probe(text)
    assert (i.l4t, i.jetpack, i.trt_version, i.trt_version_source) == ("36.4.3", "6.2", "10.3.0", "trtexec banner")
    assert (i.power_mode, i.power_mode_id, i.clocks_locked) == ("15W", 0, False)
    assert detect_profile(i.model, i.mem_total_mb).name == "orin-nano-8gb"
    assert any("clocks are not locked" in w for w in i.warnings())
    bare = parse_probe("@@model\n\n@@nv_tegra_release\n# R35 (release), REVISION: 4.1, GCID: 1\n@@trtexec\n"
                       "/usr/src/tensorrt/bin/trtexec\n@@end\n")
    assert (bare.trt_version, bare.trt_version_source) == ("8.5.2", "JetPack table for L4T 35.4.1")
    assert bare.clocks_locked is None and bare.tegrastats is None


def test_jetson_without_device_on_a_non_jetson_says_how():
    if Path("/etc/nv_tegra_release").exists():
        pytest.skip("this is a Jetson")
    why = TARGETS.get("jetson").unavailable_reason()
    assert "not a Jetson" in why and "--device" in why
    with pytest.raises(ConfigError, match="not available here") as e:
        get_target("jetson", {"device_profile": "orin-nano-8gb"})
    assert "--device" in e.value.hint
    assert get_target("jetson", {"device": "nvidia@orin.local", "device_profile": "orin-nano-8gb"}).name == "jetson"


# ---------------------------------------------------------------- the remote flow, loopback + recorded logs

FAKE_TRTEXEC = r'''#!PYTHON
# Test fake: replays RECORDED trtexec output (see fake.json); not TensorRT. On real inputs
# (--loadInputs/--exportOutput) it runs the ONNX the fake plan names with ONNX Runtime.
import hashlib, json, os, shutil, sys, time
here = os.path.dirname(os.path.abspath(__file__))
conf = json.load(open(os.path.join(here, "fake.json")))
args = sys.argv[1:]
opts = dict(a[2:].split("=", 1) for a in args if a.startswith("--") and "=" in a)
log = open(conf["log"]).read()
call = {"argv": args, "cache_existed": os.path.exists(opts.get("timingCacheFile", "/nonexistent"))}
with open(os.path.join(here, "calls.jsonl"), "a") as f:
    f.write(json.dumps(call) + "\n")
if "--help" in args:
    print(log.splitlines()[0].split(" # ")[0] + " # trtexec --help")
    sys.exit(0)
if "onnx" in opts:
    if os.path.exists(os.path.join(here, "fail_build")):
        print("[E] Error[4]: fake build failure requested by the test")
        sys.exit(1)
    data = open(opts["onnx"], "rb").read()
    sha = hashlib.sha256(data).hexdigest()
    open(opts["saveEngine"], "wb").write(b"fake-plan:" + sha.encode())
    os.makedirs(os.path.join(here, "plans"), exist_ok=True)
    shutil.copyfile(opts["onnx"], os.path.join(here, "plans", sha + ".onnx"))
    with open(opts["timingCacheFile"], "ab") as f:
        f.write(b"x")
    sys.stdout.write(log)
    sys.exit(0)
if "loadEngine" in opts and "exportOutput" in opts:
    # real inputs: run the ONNX the "plan" was built from with ONNX Runtime, write trtexec's format
    import numpy as np, onnxruntime as ort
    sha = open(opts["loadEngine"], "rb").read().split(b":", 1)[1].decode()
    sess = ort.InferenceSession(os.path.join(here, "plans", sha + ".onnx"), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    name, path = opts["loadInputs"].rsplit(":", 1)
    assert name.strip("'") == inp.name, (name, inp.name)
    shape = [int(d) for d in opts["shapes"].rsplit(":", 1)[1].split("x")] if "shapes" in opts else inp.shape
    x = np.fromfile(path, dtype=np.float32).reshape(shape)
    outs = sess.run(None, {inp.name: x})
    if os.path.exists(os.path.join(here, "nan_output")):
        outs[0].flat[0] = float("nan")
    with open(opts["exportOutput"], "w") as f:
        f.write("[\n")
        for i, (o, y) in enumerate(zip(sess.get_outputs(), outs)):
            f.write(("  " if i == 0 else ", ") + '{ "name" : "%s"\n' % o.name)
            f.write('  , "dimensions" : "%s"\n' % "x".join(map(str, y.shape)))
            f.write('  , "values" : [ ' + ", ".join("%g" % v for v in y.ravel()) + " ]\n  }\n")
        f.write("]\n")
    sys.stdout.write(log)
    sys.exit(0)
if "loadEngine" in opts:
    assert open(opts["loadEngine"], "rb").read().startswith(b"fake-plan:")
    shutil.copyfile(conf["times"], opts["exportTimes"])
    time.sleep(0.5)  # long enough for tegrastats to write a few lines
    sys.stdout.write(log)
    sys.exit(0)
sys.exit(2)
'''

FAKE_TEGRASTATS = r'''#!/usr/bin/env python3
# Test fake: replays a RECORDED tegrastats window (see fake.json), one line per interval.
import json, os, sys, time
here = os.path.dirname(os.path.abspath(__file__))
conf = json.load(open(os.path.join(here, "fake.json")))
a = sys.argv[1:]
interval = int(a[a.index("--interval") + 1]) / 1000.0
lines = open(conf["tegrastats"]).read().splitlines()
with open(a[a.index("--logfile") + 1], "w") as f:
    i = 0
    while True:
        f.write(lines[i % len(lines)] + "\n")
        f.flush()
        i += 1
        time.sleep(interval)
'''

FAKE_NVPMODEL = "#!/bin/sh\n# Test fake (text written for the test)\necho 'NV Power Mode: 15W'\necho 0\n"
FAKE_CLOCKS = ("#!/bin/sh\n# Test fake (text written for the test): clocks NOT locked\n"
               "echo 'cpu0: Online=1 Governor=schedutil MinFreq=115200 MaxFreq=1510400 CurrentFreq=729600'\n"
               "echo 'GPU MinFreq=306000000 MaxFreq=624750000 CurrentFreq=306000000'\n")


@pytest.fixture
def fakebin(tmp_path):
    for p in (TRT_LOG, TIMES, TEGRA):
        if not p.is_file():
            pytest.skip(f"recorded fixture {p} is absent")
    d = tmp_path / "fakebin"
    d.mkdir()
    for name, text in (("trtexec", FAKE_TRTEXEC), ("tegrastats", FAKE_TEGRASTATS), ("nvpmodel", FAKE_NVPMODEL),
                       ("jetson_clocks", FAKE_CLOCKS)):
        (d / name).write_text(text.replace("#!PYTHON", "#!" + sys.executable, 1))
        (d / name).chmod(0o755)
    (d / "fake.json").write_text(json.dumps({"log": str(TRT_LOG), "times": str(TIMES), "tegrastats": str(TEGRA)}))
    return d


@pytest.fixture(scope="module")
def onnx_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("jetson-models")
    torch.manual_seed(0)
    export_onnx(CifarResNet(8, 8, 1).eval(), (1, 32, 32), d / "small.onnx", ExportSettings())
    export_onnx(CifarResNet(8, 16, 1).eval(), (1, 32, 32), d / "wider.onnx", ExportSettings())
    return d / "small.onnx", d / "wider.onnx"


def _calls(fakebin: Path) -> list[dict]:
    return [json.loads(ln) for ln in (fakebin / "calls.jsonl").read_text().splitlines()]


def test_remote_jetson_flow_with_recorded_outputs(sshd, fakebin, onnx_models, tmp_path):
    """Build and measure over SSH; trtexec/tegrastats are fakes replaying recorded logs (see module doc)."""
    from targets.tegrastats import parse_tegrastats, summarize
    from targets.trtexec.log import parse_trtexec_log, to_measurement

    before = set(glob.glob("/tmp/edge-pipeline.*"))
    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin), precision="fp16",
                                          max_batch=2))
    engines = [t.build(p, (1, 32, 32), tmp_path) for p in onnx_models]
    e = engines[0]
    assert e.path == tmp_path / "small.orin-nano-8gb.fp16.plan" and e.path.read_bytes().startswith(b"fake-plan:")
    assert e.engine_bytes == e.path.stat().st_size
    meta = json.loads(Path(str(e.path) + ".json").read_text())
    assert meta["tensorrt"] == "10.16.1" and meta["precision"] == "fp16" and not meta["strongly_typed"]
    calls = _calls(fakebin)
    builds = [c for c in calls if any(a.startswith("--onnx=") for a in c["argv"])]
    assert builds[0]["argv"] == meta["trtexec_argv"][1:]  # the argv arrived through ssh unchanged
    assert "--fp16" in builds[0]["argv"] and "--minShapes=input:1x1x32x32" in builds[0]["argv"]
    assert "--maxShapes=input:2x1x32x32" in builds[0]["argv"]
    assert Path(meta["timing_cache"]).is_file()  # fetched back
    # same device, TRT version, precision and shape profile: the second model reuses the first's cache
    assert [b["cache_existed"] for b in builds] == [False, True]
    t16 = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin),
                                            precision="fp32", max_batch=2))
    t16.build(onnx_models[0], (1, 32, 32), tmp_path)
    assert _calls(fakebin)[-1]["cache_existed"] is False  # another precision: another cache
    assert (tmp_path / "logs" / "small.orin-nano-8gb.fp16.plan.build.log").read_text() == TRT_LOG.read_text()

    recs = t.measure(engines, FAST, rounds=2)
    computes = [r["computeMs"] for r in json.loads(TIMES.read_text())]
    log_rec = to_measurement(parse_trtexec_log(TRT_LOG.read_text()), summarize(parse_tegrastats(TEGRA.read_text())))
    local_keys = {  # the cpu target's record keys
        "latency_ms", "iterations", "round_medians_ms", "ratio_to_first", "throughput", "peak_rss_mb",
        "empty_rss_mb", "memory_mb", "session_create_s", "first_run_ms", "batch", "threads", "rounds",
        "engine_bytes", "measured_on"}
    for r in recs:
        assert local_keys <= set(r)
        assert r["latency_ms"]["median"] == pytest.approx(statistics.median(computes))
        assert r["latency_ms"]["p99"] == pytest.approx(latency_stats(computes * 2)["p99"])
        assert r["iterations"] == 2 * len(computes) and len(r["round_medians_ms"]) == 2
        assert r["throughput"] == pytest.approx(15374.3)
        assert r["memory_mb"] == pytest.approx(log_rec["memory_mb"]) == pytest.approx(0.119629)
        assert r["tegrastats"]["n"] >= 2 and r["tegrastats"]["ram_total_mb"] == 7607
        assert "power mode 15W" in r["measured_on"] and "clocks NOT locked" in r["measured_on"]
        assert "TensorRT 10.16.1" in r["measured_on"] and "Jetson Orin Nano 8GB" in r["measured_on"]
        assert any("clocks are not locked" in w for w in r["warnings"])
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["ratio_to_first"] == pytest.approx(1.0)
    runs = [c["argv"] for c in _calls(fakebin) if any(a.startswith("--loadEngine=") for a in c["argv"])]
    assert len(runs) == 4 and all("--shapes=input:1x1x32x32" in a and "--useSpinWait" in a for a in runs)
    assert [Path(a[0].split("=", 1)[1]).name for a in runs] == ["e0.plan", "e1.plan", "e0.plan", "e1.plan"]
    logs = sorted(p.name for p in (tmp_path / "logs").iterdir())
    assert sum(n.endswith(".times.json") for n in logs) == 4 and sum(n.endswith(".tegrastats.log") for n in logs) == 4
    assert set(glob.glob("/tmp/edge-pipeline.*")) == before  # every remote folder removed
    assert not [p for p in tmp_path.rglob("*.part")]  # nothing half-written


def _static_onnx(path: Path, batch: int) -> Path:
    torch.manual_seed(1)
    torch.onnx.export(CifarResNet(8, 8, 1).eval(), (torch.zeros(batch, 1, 32, 32),), str(path), input_names=["input"],
                      output_names=["logits"], opset_version=18, dynamo=False)
    return path


@pytest.mark.parametrize("kind", ["dynamic", "static"])
def test_accuracy_through_the_device_engine(sshd, fakebin, onnx_models, tmp_path, kind):
    """runner(): real inputs through the plan on the device (trtexec --loadInputs / --exportOutput),
    chunked to the engine's batch; the fake runs the ONNX the plan came from, so the outputs must
    equal ONNX Runtime's here up to trtexec's 6 printed digits."""
    import numpy as np

    from targets.ort.runner import OrtRunner

    before = set(glob.glob("/tmp/edge-pipeline.*"))
    onnx = onnx_models[0] if kind == "dynamic" else _static_onnx(tmp_path / "static4.onnx", 4)
    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin), max_batch=2))
    e = t.build(onnx, (1, 32, 32), tmp_path)
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    with t.runner(e) as r:
        y = r.run(x)
    with t.runner(e) as r:  # a second evaluation reuses the evaluation twin (one build)
        assert r.run(x[:1]).shape == (1, 10)
    with OrtRunner(onnx) as ref:
        padded = np.concatenate([x, np.zeros((3, 1, 32, 32), np.float32)])
        want = np.concatenate([ref.run(padded[:4]), ref.run(padded[4:])])[:5] if kind == "static" else ref.run(x)
    assert y.shape == want.shape == (5, 10)
    np.testing.assert_allclose(y, want, rtol=2e-5, atol=1e-6)
    runs = [c["argv"] for c in _calls(fakebin) if any(a.startswith("--exportOutput=") for a in c["argv"])]
    shapes = [next((a for a in c if a.startswith("--shapes=")), None) for c in runs]
    builds = [c["argv"] for c in _calls(fakebin) if any(a.startswith("--onnx=") for a in c["argv"])]
    if kind == "dynamic":  # max_batch 2 < 32: an evaluation twin with batch 1..32 takes all 5 in one call
        assert shapes == ["--shapes=input:5x1x32x32", "--shapes=input:1x1x32x32"]
        assert len(builds) == 2 and "--maxShapes=input:32x1x32x32" in builds[1]
        twin = tmp_path / "small.orin-nano-8gb.fp16.eval32.plan"
        assert twin.is_file() and json.loads(Path(str(twin) + ".json").read_text())["max_batch"] == 32
    else:  # the ONNX's batch of 4: 4 + 1 padded to 4; no twin
        assert shapes == [None, None, None] and len(builds) == 1
    assert all("--iterations=1" in c and "--loadInputs=input:" in " ".join(c) for c in runs)
    assert t.measure([e], FAST)[0]["accuracy_on"].startswith("device")
    assert set(glob.glob("/tmp/edge-pipeline.*")) == before


def test_device_accuracy_failure_says_how_to_fall_back(sshd, fakebin, onnx_models, tmp_path):
    import numpy as np

    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin), max_batch=32))
    e = t.build(onnx_models[0], (1, 32, 32), tmp_path)
    (fakebin / "plans").rename(fakebin / "plans-gone")  # the fake cannot find the model: trtexec fails
    with pytest.raises(StageError, match="could not run small.orin-nano-8gb.fp16.plan on real inputs") as err:
        with t.runner(e) as r:
            r.run(np.zeros((2, 1, 32, 32), np.float32))
    assert "accuracy_on: host" in err.value.hint
    assert list((tmp_path / "logs").glob("*.eval-00000.trtexec.log"))


def test_accuracy_on_host_and_bad_values(sshd, fakebin, onnx_models, tmp_path):
    from targets.ort.runner import OrtRunner

    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin),
                                          accuracy_on="host"))
    assert isinstance(t.runner(t.build(onnx_models[0], (1, 32, 32), tmp_path)), OrtRunner)
    with pytest.raises(ConfigError, match="accuracy_on 'devise' is not one of device, host") as e:
        get_target("jetson", sshd.options(accuracy_on="devise"))
    assert "did you mean" in str(e.value).lower()
    with pytest.raises(ConfigError, match="'accuracy_on' applies to runtime trtexec"):
        get_target("jetson", sshd.options(runtime="ort", accuracy_on="device"))


E2E_YAML = """
model: example:digits-resnet
data: digits
objective: latency
constraints: {{speedup: 1.0, max_accuracy_drop: 5.0}}
criterion: magnitude-l2
recovery: {{steps: 0, tune_steps: 0}}
measure: {{warmup_s: 0.05, min_duration_s: 0.1, min_iters: 20, final_rounds: 1, verdict_level: 0.75, candidate_rounds: 1,
          candidate_duration_s: 0.1}}
tune: {{max_candidates: 1, time_limit_s: 60, min_step: 0.2}}
target_options: {{known_hosts: {kh}, identity_file: {key}, ssh_config: none, remote_path: {bin},
                 device_profile: orin-nano-8gb, max_batch: 64}}
"""


def test_pipeline_run_jetson_accuracy_is_taken_on_the_device(sshd, fakebin, cli, tmp_path):
    """``pipeline run --target jetson --device ...`` (trtexec): every test-split accuracy in the report
    comes from the device engine (the fake trtexec runs the ONNX with ONNX Runtime, so the numbers
    equal the host's); latency is the recorded replay, so only the plumbing is judged here."""
    from stages.load.data import load_data

    cfg = tmp_path / "e2e.yaml"
    cfg.write_text(E2E_YAML.format(kh=sshd.keys.known_hosts, key=sshd.keys.user_key, bin=fakebin))
    out = tmp_path / "run"
    code, _, err = cli("run", "--config", cfg, "--target", "jetson", "--device", sshd.address, "--out", out, "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((out / "report.json").read_text())
    for m in (rep["baseline"], rep["final"]):
        assert m["details"]["accuracy_on"].startswith("device") and m["accuracy"] is not None
    assert rep["baseline"]["accuracy"] > 95
    calls = [c["argv"] for c in _calls(fakebin) if any(a.startswith("--exportOutput=") for a in c["argv"])]
    n_test = len(load_data("digits", (1, 32, 32)).test)
    per_eval = -(-n_test // 64)
    assert len(calls) == 3 * per_eval  # baseline stage, then baseline + final in the measure stage
    assert {a for c in calls for a in c if a.startswith("--shapes=")} == {
        "--shapes=input:64x1x32x32", f"--shapes=input:{n_test % 64 or 64}x1x32x32"}


def test_remote_jetson_build_failure_is_one_clear_line(sshd, fakebin, onnx_models, tmp_path):
    (fakebin / "fail_build").write_text("")
    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(fakebin)))
    with pytest.raises(StageError) as e:
        t.build(onnx_models[0], (1, 32, 32), tmp_path)
    assert "could not build small.onnx" in str(e.value) and "fake build failure requested" in str(e.value)
    assert "logs/small.orin-nano-8gb.fp16.plan.build.log" in e.value.hint
    assert not list(tmp_path.glob("*.plan"))


def test_remote_jetson_without_trtexec_says_where_it_should_be(sshd, tmp_path, onnx_models):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    t = get_target("jetson", sshd.options(device_profile="orin-nano-8gb", remote_path=str(empty)))
    with pytest.raises(StageError, match="trtexec not found") as e:
        t.build(onnx_models[0], (1, 32, 32), tmp_path)
    assert "/usr/src/tensorrt/bin" in e.value.hint


def test_module_cannot_be_detected_without_a_profile(sshd, fakebin, onnx_models, tmp_path):
    t = get_target("jetson", sshd.options(remote_path=str(fakebin)))
    with pytest.raises(ConfigError, match="cannot detect the Jetson module") as e:
        t.build(onnx_models[0], (1, 32, 32), tmp_path)
    assert "device_profile" in e.value.hint


@pytest.mark.jetson
def test_on_device_build_and_measure(onnx_models, tmp_path):
    """On a real Jetson: build with trtexec and measure with tegrastats (no SSH)."""
    t = get_target("jetson", {"precision": "fp16"})
    e = t.build(onnx_models[0], (1, 32, 32), tmp_path)
    r = t.measure([e], FAST)[0]
    assert e.engine_bytes and e.engine_bytes > 1000
    assert 0 < r["latency_ms"]["median"] < 1000 and r["device"]["l4t"]
    print(r["measured_on"], file=sys.stderr)
