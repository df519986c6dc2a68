"""The cuda target.

Unmarked tests run everywhere: option checks (before any GPU is touched), the availability
reason and the ``pipeline targets`` row, the timing loops and the record assembly (with a fake
clock and timer), the refusal of an ONNX file without a module, and the pipeline's hand-over of
the module to the target. Tests marked ``cuda`` run the real measurement on a GPU (eager and
CUDA graphs, fp32 and fp16, batch 1 and 8) and skip, with the reason, where there is none.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from core.errors import ConfigError, StageError
from stages.export import ExportSettings, export_onnx
from stages.load.cifar_resnet import CifarResNet
from targets import TARGETS, MeasureSettings, get_target
from targets.base import Engine
from targets.cuda import (
    CudaSettings,
    CudaTarget,
    cuda_records,
    make_cuda,
    ort_cuda_unavailable_reason,
    ort_numpy_type,
    output_shape,
    torch_cuda_unavailable_reason,
)
from targets.timing import Prepared, Timer, interleave, time_calls

FAST = MeasureSettings(warmup_s=0.05, min_duration_s=0.2, min_iters=20)
CPU_KEYS = {"latency_ms", "iterations", "round_medians_ms", "ratio_to_first", "throughput", "peak_rss_mb",
            "empty_rss_mb", "memory_mb", "session_create_s", "first_run_ms", "batch", "threads", "rounds",
            "engine_bytes", "measured_on"}


# ---------------------------------------------------------------- options, availability, table row

def test_options_defaults_and_parsing():
    assert CudaSettings.from_options({}) == CudaSettings("torch", "fp32", False, False, None)
    s = CudaSettings.from_options({"precision": "FP16", "graphs": "true", "channels_last": 1, "batch": "32"})
    assert (s.runtime, s.precision, s.graphs, s.channels_last, s.batch, s.mode) == \
        ("torch", "fp16", True, True, 32, "cuda-graphs")
    assert CudaSettings.from_options({"runtime": "ort", "graphs": False}).mode == "eager"


@pytest.mark.parametrize("options, message", [
    ({"cuda_graphs": True}, "does not accept option 'cuda_graphs'. Did you mean 'graphs'"),
    ({"precision": "int8"}, "precision 'int8' is not one of fp32, fp16"),
    ({"precision": "fp61"}, "Did you mean 'fp16'"),
    ({"runtime": "tensorrt"}, "runtime 'tensorrt' is not one of torch, ort"),
    ({"runtime": "torhc"}, "Did you mean 'torch'"),
    ({"graphs": "maybe"}, "graphs must be true or false"),
    ({"batch": 0}, "batch must be an integer >= 1"),
    ({"batch": "many"}, "batch must be an integer >= 1"),
    ({"runtime": "ort", "channels_last": True}, "channels_last applies to runtime torch only"),
    ({"device": "a@b"}, "does not accept option 'device'"),
])
def test_bad_options_are_rejected_before_the_gpu_is_looked_at(options, message):
    with pytest.raises(ConfigError, match=message):
        get_target("cuda", options)  # the same error with or without a GPU
    with pytest.raises(ConfigError, match=message):
        TARGETS.get("cuda").check_options(options)  # what `pipeline run --dry-run` checks


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_availability_says_exactly_why_not():
    why_torch = torch_cuda_unavailable_reason()
    assert why_torch.startswith(("torch.cuda.is_available() is False: no CUDA device visible",
                                 f"torch {torch.__version__} is a CPU-only build"))
    row = TARGETS.get("cuda").unavailable_reason()
    if ort_cuda_unavailable_reason() is None:
        assert row is None  # runtime ort works here
        return
    assert row.startswith(why_torch) and "runtime ort:" in row and "onnxruntime-gpu" in row
    with pytest.raises(ConfigError, match="target 'cuda' is not available here: torch.cuda") as e:
        get_target("cuda", {"precision": "fp16"})
    assert "--target cpu" in e.value.hint
    with pytest.raises(ConfigError, match=r"\(runtime ort\) is not available here: .*CUDAExecutionProvider"):
        make_cuda({"runtime": "ort"})


def test_pipeline_targets_row_is_honest(cli):
    code, text, _ = cli("targets")
    assert code == 0
    lines = [ln.strip() for ln in text.splitlines()]  # 80 columns (not a terminal): one block per target
    why = TARGETS.get("cuda").unavailable_reason()
    assert lines[lines.index("cuda") + 1] == f"available here: {'yes' if why is None else 'no'}"
    if why is not None:
        assert why.split(":")[0] in " ".join(text.split())  # the reason's head, however the table wraps it


# ---------------------------------------------------------------- timing loops and records (no GPU)

class FakeClock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class FakeTimer(Timer):
    """Each timed call takes ``ms`` on the fake clock; ``log`` records which engine ran."""

    def __init__(self, clock: FakeClock, ms: dict[str, float]) -> None:
        self.clock, self.ms, self.log, self.syncs = clock, ms, [], 0

    def time(self, call) -> float:
        name = call()
        self.log.append(name)
        self.clock.t += self.ms[name] / 1e3
        return self.ms[name]

    def sync(self) -> None:
        self.syncs += 1


def _prepared(name: str, clock: FakeClock, untimed: list) -> Prepared:
    def call():
        untimed.append(name)
        clock.t += 0.001  # warm-up calls advance the clock too
        return name
    return Prepared(call, 0.5, 2.0)


def test_time_calls_meets_both_minimums_and_the_cap():
    clock = FakeClock()
    timer = FakeTimer(clock, {"a": 10.0})
    untimed: list = []
    samples, wall = time_calls(_prepared("a", clock, untimed).call, timer, 0.05, 0.1, 3, clock)
    assert len(samples) == 10 and all(s == 10.0 for s in samples)  # 0.1 s of 11 ms calls (10 ms timed)
    assert wall == pytest.approx(0.11) and timer.syncs == 1
    samples, _ = time_calls(_prepared("a", clock, untimed).call, timer, 0.0, 0.001, 25, clock)
    assert len(samples) == 25  # the count wins over a short duration
    slow = FakeTimer(clock, {"a": 5000.0})
    samples, wall = time_calls(_prepared("a", clock, untimed).call, slow, 0.0, 1.0, 1000, clock)
    assert len(samples) == 6 and wall >= 30.0  # never past max(10 * min_s, 30 s)


def test_interleave_discards_one_round_then_alternates():
    clock = FakeClock()
    timer = FakeTimer(clock, {"base": 2.0, "pruned": 1.0})
    untimed: list = []
    runs = [_prepared("base", clock, untimed), _prepared("pruned", clock, untimed)]
    s = MeasureSettings(warmup_s=0.0, min_duration_s=0.01, min_iters=4)
    lat = interleave(runs, s, 3, timer, clock)
    # discarded round: one timed call each; then base x>=4, pruned x>=4, three times over
    blocks = [k for k, _ in itertools.groupby(timer.log)]
    assert blocks == ["base", "pruned"] * 4
    assert len(lat["rounds"]) == 2 and all(len(r) == 3 for r in lat["rounds"])
    assert all(len(samples) >= 4 for r in lat["rounds"] for samples in r)
    assert lat["session_create_s"] == [0.5, 0.5] and lat["first_run_ms"] == [2.0, 2.0]
    assert all(w > 0 for w in lat["wall_s"])


def _engine(name: str) -> Engine:
    return Engine("cuda", Path(name), None, None, 0.1, (3, 8, 8), {})


def test_records_have_the_cpu_keys_gpu_memory_and_the_speedup():
    lat = {"rounds": [[[2.0, 2.0, 2.2], [2.1, 2.0, 2.0]], [[1.0, 1.1, 1.0], [1.0, 1.0, 0.9]]],
           "wall_s": [0.0125, 0.00625], "session_create_s": [0.2, 0.3], "first_run_ms": [5.0, 4.0]}
    mem = [{"memory_mb": 120.0, "reserved_peak_mb": 160.0}, {"memory_mb": 60.0, "reserved_peak_mb": 90.0}]
    recs = cuda_records([_engine("base"), _engine("pruned")], lat, mem, 8, 2, "cuda: test",
                        {"runtime": "torch", "mode": "eager"})
    for r, m in zip(recs, mem):
        assert CPU_KEYS <= set(r)
        assert r["memory_mb"] == m["memory_mb"] and r["cuda_memory"] == m
        assert r["peak_rss_mb"] is None and r["empty_rss_mb"] is None and r["threads"] is None
        assert r["batch"] == 8 and r["rounds"] == 2 and r["runtime"] == "torch" and r["measured_on"] == "cuda: test"
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["ratio_to_first"] == pytest.approx(2.0)
    assert recs[0]["latency_ms"]["median"] == pytest.approx(2.0) and recs[1]["throughput"] > recs[0]["throughput"]


def test_ort_binding_helpers():
    assert output_shape(["batch", 10], 8) == (8, 10)
    assert output_shape([4, 10], 8) == (4, 10)
    assert output_shape(["batch", "tokens", 10], 8) is None
    assert ort_numpy_type("tensor(float16)") is np.float16 and ort_numpy_type("tensor(float)") is np.float32
    with pytest.raises(ConfigError, match="tensor\\(int64\\)"):
        ort_numpy_type("tensor(int64)")


# ---------------------------------------------------------------- what the target is handed

def test_torch_runtime_refuses_an_onnx_without_its_module(tmp_path):
    t = CudaTarget({"precision": "fp16"})  # options only: no GPU needed to get this far
    assert t.build_inputs == frozenset({"module"})
    assert CudaTarget({"runtime": "ort"}).build_inputs == frozenset()
    with pytest.raises(ConfigError, match="measures torch modules, and baseline.onnx came without one") as e:
        t.build(tmp_path / "baseline.onnx", (1, 32, 32), tmp_path)
    assert "runtime: ort" in e.value.hint
    with pytest.raises(ConfigError, match="build_module needs runtime torch"):
        CudaTarget({"runtime": "ort"}).build_module(nn.Identity(), (3,))
    with pytest.raises(StageError, match="was not built by this cuda target"):
        t.runner(Engine("cuda", Path("x"), None, None, 0.0, (1,), {"module_key": "nope"}))


def test_build_and_measure_stages_hand_over_what_the_target_asks_for(tmp_path):
    from pipeline.steps import _build_engine

    class Recorder:
        def __init__(self, wants):
            self.build_inputs, self.calls = frozenset(wants), []

        def build(self, onnx_path, sample_shape, out_dir, **extra):
            self.calls.append((Path(onnx_path).name, tuple(sample_shape), sorted(extra), extra))
            return "engine"

    module, calib = nn.Linear(2, 2), [(torch.zeros(2), 0)]
    for wants in ((), ("module",), ("calibration",)):
        target = Recorder(wants)
        state = SimpleNamespace(target=target, run_dir=tmp_path, loaded=SimpleNamespace(input_shape=(2,)),
                                data=SimpleNamespace(calib=calib))
        assert _build_engine(state, "model.onnx", module) == "engine"
        name, shape, keys, extra = target.calls[0]
        assert (name, shape, keys) == ("model.onnx", (2,), sorted(wants))
        assert extra.get("module", module) is module and extra.get("calibration", calib) is calib
    plain = SimpleNamespace(target=SimpleNamespace(build=lambda p, s, d: (Path(p).name, s, d)), run_dir=tmp_path,
                            loaded=SimpleNamespace(input_shape=(2,)), data=SimpleNamespace(calib=calib))
    assert _build_engine(plain, "baseline.onnx", module) == ("baseline.onnx", (2,), tmp_path)  # cpu, jetson: ONNX only


# ---------------------------------------------------------------- on a GPU (marked cuda)

@pytest.fixture(scope="module")
def two_modules():
    torch.manual_seed(0)
    return CifarResNet(8, 16, 1).eval(), CifarResNet(8, 8, 1).eval()


@pytest.mark.cuda
@pytest.mark.parametrize("graphs, precision, batch", [
    (False, "fp32", 1), (True, "fp32", 1), (False, "fp16", 8), (True, "fp16", 8), (True, "fp16", 1),
])
def test_torch_measurement_on_the_gpu(two_modules, graphs, precision, batch):
    t = get_target("cuda", {"graphs": graphs, "precision": precision, "channels_last": precision == "fp16"})
    engines = [t.build_module(m, (1, 32, 32), name) for m, name in zip(two_modules, ("wide", "narrow"))]
    before = [p.clone() for p in two_modules[0].parameters()]
    allocated = torch.cuda.memory_allocated()
    recs = t.measure(engines, MeasureSettings(batch=batch, warmup_s=0.05, min_duration_s=0.2, min_iters=20), rounds=2)
    assert all(torch.equal(a, b) for a, b in zip(before, two_modules[0].parameters()))  # the caller's module untouched
    for r in recs:
        assert CPU_KEYS <= set(r)
        lat = r["latency_ms"]
        assert 0 < lat["median"] <= lat["p90"] <= lat["p99"] and r["iterations"] >= 40
        assert r["batch"] == batch and r["mode"] == ("cuda-graphs" if graphs else "eager")
        assert r["precision"] == precision and r["runtime"] == "torch"
        assert r["memory_mb"] > 0 and r["cuda_memory"]["reserved_peak_mb"] >= r["cuda_memory"]["allocated_peak_mb"]
        assert r["measured_on"].startswith(f"cuda: torch {torch.__version__} {r['mode']} {precision}")
    assert recs[0]["ratio_to_first"] == 1.0 and recs[1]["ratio_to_first"] > 0
    # nothing of the measurement is left on the GPU (bar cuBLAS's workspace, kept per stream)
    assert torch.cuda.memory_allocated() - allocated < 64 * 2**20


@pytest.mark.cuda
@pytest.mark.parametrize("precision, atol", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_accuracy_runs_through_what_was_measured(two_modules, precision, atol, tmp_path):
    module = two_modules[1]
    onnx = tmp_path / "narrow.onnx"
    export_onnx(module, (1, 32, 32), onnx, ExportSettings())
    t = get_target("cuda", {"precision": precision})
    e = t.build(onnx, (1, 32, 32), tmp_path, module=module)  # what s_build / s_measure do
    assert e.meta["onnx"] == str(onnx) and e.meta["cuda_runtime"] == "torch" and e.path is None
    x = np.random.default_rng(0).standard_normal((5, 1, 32, 32)).astype(np.float32)
    with t.runner(e) as r:
        got = r.run(x)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=atol)


class _HostSync(nn.Module):
    def forward(self, x):
        return x * 2 if float(x.sum()) > 0 else x  # reads a GPU value on the host: not capturable


class _Overflow(nn.Module):
    def forward(self, x):
        return x * 6e4 * 6e4


@pytest.mark.cuda
def test_fp16_overflow_and_graph_capture_failure_are_clear_errors():
    with pytest.raises(StageError, match="NaN/inf on the GPU in fp16") as err:
        get_target("cuda", {"precision": "fp16"}).build_module(_Overflow(), (4,), "overflow")
    assert "fp32" in err.value.hint
    t = get_target("cuda", {"graphs": True})
    e = t.build_module(_HostSync(), (4,), "hostsync")  # eager at build: fine
    with pytest.raises(StageError, match="CUDA graph capture failed") as err:
        t.measure([e], FAST)
    assert "graphs: false" in err.value.hint


@pytest.mark.cuda
def test_ort_cuda_execution_provider(two_modules, tmp_path):
    why = ort_cuda_unavailable_reason()
    if why is not None:
        pytest.skip(why)
    paths = []
    for m, name in zip(two_modules, ("wide", "narrow")):
        export_onnx(m, (1, 32, 32), tmp_path / f"{name}.onnx", ExportSettings())
        paths.append(tmp_path / f"{name}.onnx")
    for graphs in (False, True):
        t = get_target("cuda", {"runtime": "ort", "graphs": graphs})
        engines = [t.build(p, (1, 32, 32), tmp_path) for p in paths]
        recs = t.measure(engines, MeasureSettings(batch=4, warmup_s=0.05, min_duration_s=0.2, min_iters=20), rounds=2)
        assert all(r["latency_ms"]["median"] > 0 and r["runtime"] == "ort" for r in recs)
        assert "CUDAExecutionProvider" in recs[0]["measured_on"]
        x = np.random.default_rng(0).standard_normal((3, 1, 32, 32)).astype(np.float32)
        with t.runner(engines[1]) as r:
            np.testing.assert_allclose(r.run(x), two_modules[1](torch.from_numpy(x)).detach().numpy(), atol=1e-2)
    with pytest.raises(ConfigError, match="is FP32: precision fp16"):
        get_target("cuda", {"runtime": "ort", "precision": "fp16"}).build(paths[0], (1, 32, 32), tmp_path)


# ---------------------------------------------------------------- bench/cuda_speedup.py up to the GPU

def test_bench_dry_run_prunes_aligned_and_prints_the_plan(capsys):
    from bench import cuda_speedup as bench

    rc = bench.main(["--dry-run", "--models", "tiny=example:digits-resnet:all", "--ratios", "0.3,0.5",
                     "--round-to", "8", "--batches", "1,32"])
    out = capsys.readouterr().out
    assert rc == 0 and "dry run: nothing measured" in out
    assert "tiny (example:digits-resnet" in out and "prune 50 %:" in out and "(multiples of 8)" in out
    assert "4 interleaved measurements of 3 engines" in out  # 2 modes x 2 batches
    m = bench.prune_variants("example:digits-resnet", "all", [0.5], 8)
    v = m["variants"][0]
    assert v["mac_reduction"] > 1.5 and v["macs"] < m["base_macs"]
    assert all(k % 8 == 0 or k == w for w, k in v["widths"]["per_group"].values())  # hardware-aligned widths
    with pytest.raises(SystemExit):
        bench.parse_args(["--models", "tiny=example:digits-resnet:heads"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible here")
def test_bench_without_a_gpu_stops_with_the_reason(capsys, tmp_path):
    from bench import cuda_speedup as bench

    assert bench.main(["--models", "tiny=example:digits-resnet:all", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "error: this benchmark measures on a CUDA GPU" in err and "torch.cuda.is_available() is False" in err
    assert "--dry-run" in err and not list(tmp_path.iterdir())
