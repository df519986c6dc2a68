"""Measurement records: the typed record a target returns, and report.json's M, in the contract's keys."""

from __future__ import annotations

import json

import pytest

from core.io import atomic_write_json
from core.records import Measurement, TimingRecord, latency_stats

M_KEYS = {"latency_ms", "throughput", "memory_mb", "onnx_bytes", "engine_bytes", "params", "macs", "accuracy",
          "accuracy_metric", "measured_on"}  # DESIGN.md's M


def _timing(**extra) -> TimingRecord:
    return TimingRecord({"median": 2.0, "p90": 2.5, "p99": 3.0, "mean": 2.1, "std": 0.2, "cv": 0.1}, 100, [2.0, 2.1],
                        1.0, 480.0, 25.0, 1, 2, None, "cpu: test", threads=2, extra=extra)


def test_a_timing_record_reads_like_the_dict_it_serialises_to():
    r = _timing(latency_source="perf_counter")
    d = r.to_json()
    assert list(d)[:3] == ["latency_ms", "iterations", "round_medians_ms"] and d["latency_source"] == "perf_counter"
    assert r["latency_ms"]["median"] == 2.0 and r.get("threads") == 2 and set(r) == set(d) and len(r) == len(d)
    assert json.loads(json.dumps(d)) == d


def test_with_extra_replaces_fields_and_adds_keys_without_mutating():
    r = _timing()
    s = r.with_extra(memory_mb=30.0, runtime="ort")
    assert (r.memory_mb, s.memory_mb, s["runtime"]) == (25.0, 30.0, "ort") and "runtime" not in r
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass
        r.memory_mb = 1.0  # type: ignore[misc]


def test_measurement_has_the_contract_keys_and_keeps_the_rest_as_details(tmp_path):
    m = Measurement.from_timing(_timing(latency_source="x"), onnx_bytes=10, params=5, macs=7, accuracy=99.5,
                                metric="top1")
    d = m.to_json()
    assert set(d) == M_KEYS | {"details"} and d["details"]["latency_source"] == "x" and d["details"]["threads"] == 2
    assert "engine_bytes" not in d["details"] and Measurement.from_json(d) == m and m.median_ms == 2.0
    atomic_write_json(tmp_path / "m.json", {"final": m})  # records serialise through to_json
    assert json.loads((tmp_path / "m.json").read_text())["final"] == d


def test_latency_stats():
    s = latency_stats([1.0, 2.0, 3.0, 4.0])
    assert (s["median"], s["n"], s["mean"]) == (2.5, 4, 2.5) and s["p99"] == pytest.approx(3.97)
