"""Per-target latency lookup table (NetAdapt / HALP style), measured on the target.

For every prunable group and every width on a grid (multiples of ``round_to``), the table holds
the *measured* speedup of the whole model when that group alone is cut to that width. A policy's
latency is then predicted additively::

    predicted(widths) = base / (1 + sum_g (speedup_g(w_g) - 1))

(additive in the removed *fraction of time*, so the prediction stays positive). Fusion, kernel
choice and per-call overhead make latency non-additive, so the table only *prices* proposals:
every accepted step of a search is re-measured in full, and :meth:`LatencyLUT.calibration`
reports the prediction error against those full measurements.

Measuring a group's variants happens in one fresh process, interleaved with the unpruned model
(``CandidateEvaluator.speedups``), so the table is immune to slow drift of the machine's speed.
The table is cached on disk, keyed by target description (runtime version, device, threads),
input shape, the unpruned model's ONNX hash, ``round_to`` and the grid.
"""

from __future__ import annotations

import json
import os
import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.manifest import atomic_write_json, digest
from stages.prune.plan import keep_count
from stages.prune.tp_adapter import GroupInfo


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-pipeline" / "lut"


def width_grid(width: int, round_to: int | None, points: int) -> list[int]:
    """Candidate widths below ``width``: multiples of ``round_to``, at most ``points`` of them, evenly spread."""
    step = round_to or 1
    widths = sorted({keep_count(width, k / width, round_to) for k in range(step, width, step)} - {width})
    if len(widths) <= points:
        return widths
    idx = sorted({round(i * (len(widths) - 1) / (points - 1)) for i in range(points)})
    return [widths[i] for i in idx]


@dataclass
class LatencyLUT:
    """Measured single-group speedups; ``table[group][width] = speedup of the model with only that cut``."""

    base_ms: float
    table: dict[str, dict[int, float]]
    key: str = ""
    checks: list[tuple[float, float]] = field(default_factory=list)  # (predicted, measured) ms

    def speedup_of(self, gid: str, width: int, full: int) -> float:
        """Piecewise-linear in width between measured points; 1.0 at the full width."""
        pts = sorted({**self.table.get(gid, {}), full: 1.0}.items())
        if width >= pts[-1][0]:
            return 1.0
        if width <= pts[0][0]:
            return pts[0][1]
        for (w0, s0), (w1, s1) in zip(pts, pts[1:]):
            if w0 <= width <= w1:
                return s0 + (s1 - s0) * (width - w0) / (w1 - w0)
        return 1.0

    def predict(self, widths: Mapping[str, int], full: Mapping[str, int]) -> float:
        saved = sum(1.0 - 1.0 / self.speedup_of(g, w, full[g]) for g, w in widths.items() if w < full[g])
        return self.base_ms * max(0.05, 1.0 - saved)

    def record(self, predicted: float, measured: float) -> None:
        self.checks.append((predicted, measured))

    def calibration(self) -> dict:
        """Prediction error against full measurements: mean / max absolute relative error."""
        errs = [abs(p - m) / m for p, m in self.checks if m > 0]
        return {"n": len(errs), "mean_abs_rel_err": statistics.fmean(errs) if errs else None,
                "max_abs_rel_err": max(errs) if errs else None,
                "points": [{"predicted_ms": p, "measured_ms": m} for p, m in self.checks]}

    def to_json(self) -> dict:
        return {"format": "edge-pipeline/lut-v1", "key": self.key, "base_ms": self.base_ms,
                "table": {g: {str(w): s for w, s in t.items()} for g, t in self.table.items()}}

    @classmethod
    def from_json(cls, d: Mapping) -> LatencyLUT:
        return cls(float(d["base_ms"]), {g: {int(w): float(s) for w, s in t.items()} for g, t in d["table"].items()},
                   str(d.get("key", "")))


def monotone(points: Mapping[int, float]) -> dict[int, float]:
    """Isotonic (pool-adjacent-violators) fit: speedup must not grow with width.

    Single-group cuts change a small model's latency by a few percent, which is the size of the
    measurement noise here; the fit removes inversions without inventing a trend.
    """
    ws = sorted(points)
    blocks: list[list[float]] = []  # [sum, count] over widths in decreasing-speedup order
    for w in ws:
        blocks.append([points[w], 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] < blocks[-1][0] / blocks[-1][1]:
            a, b = blocks.pop(), blocks.pop()
            blocks.append([a[0] + b[0], a[1] + b[1]])
    out, i = {}, 0
    for total, n in blocks:
        for _ in range(int(n)):
            out[ws[i]] = max(1.0, total / n)
            i += 1
    return out


def lut_key(target_desc: str, sample_shape: tuple[int, ...], model_hash: str, round_to: int | None,
            grid: Mapping[str, list[int]], batch: int) -> str:
    return digest({"target": target_desc, "shape": list(sample_shape), "model": model_hash, "round_to": round_to,
                   "grid": grid, "batch": batch})[:24]


def build_lut(groups: list[GroupInfo], speedups: Callable[[list[dict[str, float]]], list[float]], base_ms: float,
              round_to: int | None, points: int, key_parts: Mapping[str, object],
              log: Callable[[str], None] = lambda s: None, cache: Path | None = None) -> LatencyLUT:
    """Measure (or load from the cache) the table for ``groups``.

    Args:
        speedups: Measures a list of per-group keep-ratio policies against the unpruned model
            in one interleaved run (``CandidateEvaluator.speedups``).
        key_parts: ``target_desc``, ``sample_shape``, ``model_hash``, ``batch`` for the cache key.
    """
    grid = {g.id: width_grid(g.width, round_to, points) for g in groups}
    key = lut_key(str(key_parts["target_desc"]), tuple(key_parts["sample_shape"]), str(key_parts["model_hash"]),
                  round_to, grid, int(key_parts["batch"]))
    path = (cache or cache_dir()) / f"{key}.json"
    if path.is_file():
        try:
            lut = LatencyLUT.from_json(json.loads(path.read_text()))
            lut.base_ms = base_ms
            log(f"latency LUT from cache {path}")
            return lut
        except (json.JSONDecodeError, KeyError, ValueError):
            pass
    table: dict[str, dict[int, float]] = {}
    for g in groups:
        if not grid[g.id]:
            continue
        got = speedups([{g.id: w / g.width} for w in grid[g.id]])
        table[g.id] = monotone(dict(zip(grid[g.id], got)))
        log(f"LUT {g.id}: " + ", ".join(f"{w}:{s:.3f}x" for w, s in table[g.id].items()))
    lut = LatencyLUT(base_ms, table, key)
    atomic_write_json(path, lut.to_json())
    return lut
