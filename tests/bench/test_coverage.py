"""bench/coverage.py: a row is ok (with MAC reduction, measured speedup and parity), refused in one line, or a crash."""

from __future__ import annotations

from pathlib import Path

from bench import coverage as bench
from targets import get_target


def test_rows_and_table(tmp_path: Path):
    target = get_target("cpu", {})
    ok = bench.one("mobilenet_v3_small", target, tmp_path)
    refused = bench.one("shufflenet_v2_x0_5", target, tmp_path)
    crash = bench.one("no_such_arch", target, tmp_path)
    assert ok["status"] == "ok" and ok["mac_ratio"] > 1 and ok["speedup"] > 0 and ok["parity_max_abs"] < 1e-3
    assert refused["status"] == "refused" and "channel shuffle" in refused["reason"] and refused["stage"] == "trace"
    assert crash["status"] == "crash" and crash["stage"] == "build"
    md = bench.markdown({"date": "d", "machine": "m", "versions": {"torch": "x"}, "ratio": 0.4,
                         "rows": [ok, refused, crash]})
    assert "**1 of 3 ok**, 1 refused" in md and "| mobilenet_v3_small | 64x64 |" in md
