"""Per-target latency lookup table (NetAdapt / HALP style), measured on the target, and its calibration.

**What is measured.** For every prunable group and every width on a grid, the *speedup of the
whole model* when that group alone is cut to that width, measured in one fresh process
interleaved with the unpruned model (``CandidateEvaluator.speedups``), so slow drift of the
machine's speed cancels out. The same run also times the unpruned model as if it were a
variant, first and last: its "speedup" over itself should be 1.0, and what it measures instead
(the first engine of a round timed differently, drift within the round) divides every entry of
the group (:func:`null_bias`: the median of the two and 1.0, so one spoiled null cannot skew
the group). The table is made monotone (a narrower group is never slower) and cached on disk,
keyed by target description (runtime version, device, threads), input shape, the unpruned
model's ONNX hash, ``round_to``, the grid, the batch and the table format.

**How a policy is predicted.** ``latency = baseline - saved``. A single cut's saving is what the
table measured, ``Δ_g(w) = base · (1 - 1 / speedup_g(w))``. Summing those savings over groups
(``model="additive"``) double-counts: every convolution sits between two groups (its input
channels belong to one, its output channels to the next), its cost is ~ ``f_in · f_out`` of its
full cost, and cutting both to half removes 3/4 of it, not 1/2 + 1/2. That is why the additive
sum was far too optimistic on deep cuts (47% mean error on the default model). The
``interaction`` model keeps the measured single-cut savings exactly but places them on the
layers: each conv / linear layer ``L`` gets a full-width cost ``c_L`` (its MACs times the
measured time per MAC of the groups it touches), every group an effective remaining fraction
``φ_g(w) = 1 - Δ_g(w) / T_g`` (``T_g``: the cost of its layers), and::

    predicted(widths) = base - Σ_L c_L · (1 - φ_out(L) · φ_in(L))

A single cut reproduces the table; joint cuts get the product. Depthwise convolutions (their
input channels follow their output channels) scale with ``φ_out`` alone.

**Calibration.** Fusion, kernel choice and per-call overhead still make the table an
approximation, so every full-model measurement the search takes anyway refits a linear
correction ``measured ≈ a + b · predicted`` (NetAdapt-style searches re-measure too). The error
is reported honestly: leave-one-out (each point predicted by a fit on the others), and
"online" (each point predicted before it was measured, with the fit of that moment).

**Latency staircase.** Runtimes pad channels to their kernels' block size, so latency over width
is a staircase. :func:`stair_grid` gives a grid dense enough to see it and
:func:`staircase_bottoms` keeps, for every step, the widest width with the same measured cost:
cutting further inside a step costs accuracy and saves no time.
"""

from __future__ import annotations

import json
import math
import os
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from core.io import atomic_write_json, digest
from stages.model.cost import LayerTerm
from stages.model.graph import GroupInfo
from stages.prune.plan import keep_count

FORMAT = "edge-pipeline/lut-v2"  # v2: speedups divided by the unpruned model's own measured "speedup"
MODELS = ("interaction", "additive")
STAIR_TOL_FLOOR = 0.002  # smallest cost difference (fraction of the baseline) that counts as a new step
STAIR_TOL_SIGMAS = 3.0  # a new step must be this many noise sigmas below the current one

Progress = Callable[[int, int, str], None]  # (done, total, text)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "edge-pipeline" / "lut"


# ------------------------------------------------------------------ grids and the staircase

def width_grid(width: int, round_to: int | None, points: int) -> list[int]:
    """Candidate widths below ``width``: multiples of ``round_to``, at most ``points`` of them, evenly spread."""
    step = round_to or 1
    widths = sorted({keep_count(width, k / width, round_to) for k in range(step, width, step)} - {width})
    if len(widths) <= points:
        return widths
    idx = sorted({round(i * (len(widths) - 1) / (points - 1)) for i in range(points)})
    return [widths[i] for i in idx]


def stair_resolution(width: int, points: int) -> int:
    """The finest power-of-two channel step that keeps at most ``points`` widths below ``width``."""
    r = 1
    while (width - 1) // r > points:
        r *= 2
    return r


def stair_grid(width: int, points: int) -> list[int]:
    """Every width below ``width`` at the resolution of :func:`stair_resolution` (a dense, regular grid).

    Unlike :func:`width_grid` the step is fixed in channels, not spread over the range, so
    steps of the runtime's staircase wider than twice the resolution are seen everywhere.
    """
    r = stair_resolution(width, points)
    return list(range(r, width, r))


def isotonic_increasing(points: Mapping[int, float]) -> dict[int, float]:
    """Pool-adjacent-violators fit of ``points`` (width -> value) that never decreases with width."""
    ws = sorted(points)
    blocks: list[list[float]] = []  # [sum, count]
    for w in ws:
        blocks.append([float(points[w]), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            a, b = blocks.pop(), blocks.pop()
            blocks.append([a[0] + b[0], a[1] + b[1]])
    out, i = {}, 0
    for total, n in blocks:
        for _ in range(int(n)):
            out[ws[i]] = total / n
            i += 1
    return out


def monotone(points: Mapping[int, float]) -> dict[int, float]:
    """Isotonic (pool-adjacent-violators) fit: speedup must not grow with width, and is at least 1.

    Single-group cuts change a small model's latency by a few percent, which is the size of the
    measurement noise here; the fit removes inversions without inventing a trend.
    """
    fit = isotonic_increasing({w: -s for w, s in points.items()})
    return {w: max(1.0, -v) for w, v in fit.items()}


def noise_sigma(values_by_width: Mapping[int, float]) -> float:
    """Measurement noise of one value, from the differences of neighbouring widths (robust).

    On a staircase most neighbours sit on the same step, so the median absolute deviation of the
    differences is the noise, not the steps: ``1.4826 · MAD(diff) / sqrt(2)``.
    """
    ws = sorted(values_by_width)
    d = [values_by_width[b] - values_by_width[a] for a, b in zip(ws, ws[1:])]
    if len(d) < 3:
        return 0.0
    med = statistics.median(d)
    return 1.4826 * statistics.median(abs(x - med) for x in d) / math.sqrt(2)


def staircase_bottoms(costs: Mapping[int, float], tol: float) -> list[int]:
    """The widest width of every step of a measured cost curve (width -> cost, higher = slower).

    The curve is first made non-decreasing in width (isotonic fit). Walking down from the widest
    width, a width whose cost is more than ``tol`` below the cost where the current step began
    starts a new step; each step is represented by its widest member, the width that keeps the
    most channels for that cost. With no staircase at all the result is the grid thinned to
    points at least ``tol`` apart in cost.

    Returns:
        The step widths in increasing order (the widest width of ``costs`` always included).
    """
    if not costs:
        return []
    fit = isotonic_increasing(costs)
    ws = sorted(fit, reverse=True)
    out, level = [ws[0]], fit[ws[0]]
    for w in ws[1:]:
        if level - fit[w] > tol:
            out.append(w)
            level = fit[w]
    return sorted(out)


def stair_tolerance(raw_speedups: Mapping[int, float]) -> float:
    """Cost difference (fraction of the baseline) below which two widths count as the same step."""
    cost = {w: 1.0 / s for w, s in raw_speedups.items() if s > 0}
    return max(STAIR_TOL_FLOOR, STAIR_TOL_SIGMAS * noise_sigma(cost))


# ------------------------------------------------------------------ structure: which layers a group scales

# ------------------------------------------------------------------ calibration

@dataclass(frozen=True)
class Calibration:
    """``measured ≈ a + b · predicted``, least squares over full-model measurements.

    With fewer than two distinct predictions only the offset is fitted (``b = 1``); a slope
    outside ``[0.2, 5]`` (a fit on points too close together) falls back to the offset, too.
    """

    a: float = 0.0
    b: float = 1.0
    n: int = 0

    def __call__(self, raw: float) -> float:
        return self.a + self.b * raw

    @classmethod
    def fit(cls, points: Sequence[tuple[float, float]]) -> Calibration:
        """Fit on ``(predicted, measured)`` pairs."""
        n = len(points)
        if n == 0:
            return cls()
        ps, ms = [p for p, _ in points], [m for _, m in points]
        mp, mm = statistics.fmean(ps), statistics.fmean(ms)
        sxx = sum((p - mp) ** 2 for p in ps)
        if n >= 2 and sxx > (1e-3 * max(abs(mp), 1e-12)) ** 2 * n:
            b = sum((p - mp) * (m - mm) for p, m in zip(ps, ms)) / sxx
            if 0.2 <= b <= 5.0:
                return cls(mm - b * mp, b, n)
        return cls(mm - mp, 1.0, n)

    def to_json(self) -> dict:
        return {"a": self.a, "b": self.b, "n": self.n}


def rel_errors(pairs: Sequence[tuple[float, float]]) -> dict:
    """Relative errors of ``(predicted, measured)`` pairs: count, mean and max of ``|p - m| / m``."""
    errs = [abs(p - m) / m for p, m in pairs if m > 0]
    return {"n": len(errs), "mean_abs_rel_err": statistics.fmean(errs) if errs else None,
            "max_abs_rel_err": max(errs) if errs else None}


def leave_one_out(points: Sequence[tuple[float, float]]) -> list[float]:
    """Each point's prediction by a :class:`Calibration` fitted on all the *other* points."""
    return [Calibration.fit([q for j, q in enumerate(points) if j != i])(p) for i, (p, _) in enumerate(points)]


@dataclass
class Check:
    """One full-model measurement the search made: the widths, the measurement and what was predicted."""

    widths: dict[str, int]
    measured_ms: float
    online_ms: float  # the calibrated prediction made before the measurement was known


# ------------------------------------------------------------------ the table

@dataclass
class LatencyLUT:
    """Measured single-group speedups (``table[group][width]``) plus the structure and calibration to use them.

    Attributes:
        base_ms: The unpruned model's latency every prediction is relative to.
        table: Monotone single-group speedups (what predictions use).
        raw: The speedups as measured, divided by the unpruned model's self-speedup of the same
            run, before the monotone fit (the staircase's noise estimate needs them).
        null: Per group, the unpruned model's measured "speedup" over itself, first and last.
        layers: Conv / linear layers and the groups that scale them (:func:`layer_terms`); without
            them the prediction falls back to the additive model.
        model: ``interaction`` (default when ``layers`` are known) or ``additive``.
    """

    base_ms: float
    table: dict[str, dict[int, float]]
    key: str = ""
    raw: dict[str, dict[int, float]] = field(default_factory=dict)
    null: dict[str, list[float]] = field(default_factory=dict)  # the unpruned model's measured self-speedups
    layers: list[LayerTerm] = field(default_factory=list)
    model: str = "interaction"
    checks: list[Check] = field(default_factory=list)
    calib: Calibration = field(default_factory=Calibration)
    _struct: dict | None = field(default=None, repr=False)

    # -- single groups
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

    def saving_ms(self, gid: str, width: int, full: int) -> float:
        """Time saved by cutting group ``gid`` alone to ``width`` (as measured, monotone)."""
        if width >= full:
            return 0.0
        return self.base_ms * (1.0 - 1.0 / self.speedup_of(gid, width, full))

    # -- whole policies
    def predict_raw(self, widths: Mapping[str, int], full: Mapping[str, int], model: str | None = None) -> float:
        """Uncalibrated prediction of the full model's latency (ms) for ``widths`` (missing groups: full)."""
        model = model or self.active_model()
        cut = {g: w for g, w in widths.items() if w < full[g]}
        if model == "additive":
            saved = sum(self.saving_ms(g, w, full[g]) for g, w in cut.items())
        else:
            saved = self._interaction_saving(cut, full)
        return max(0.05 * self.base_ms, self.base_ms - saved)

    def predict(self, widths: Mapping[str, int], full: Mapping[str, int]) -> float:
        """Calibrated prediction (ms): ``a + b · predict_raw``."""
        return self.calib(self.predict_raw(widths, full))

    def active_model(self) -> str:
        return self.model if (self.model == "additive" or self.layers) else "additive"

    def _structure(self, full: Mapping[str, int]) -> dict:
        """Per-layer full-width costs ``c_L`` and per-group costs ``T_g`` (see the module doc)."""
        sig = (tuple(sorted(full.items())), id(self.layers), len(self.layers), id(self.table))
        if self._struct is not None and self._struct["sig"] == sig:
            return self._struct
        touching: dict[str, float] = {}  # group -> MACs of its layers (by share)
        for t in self.layers:
            for g, s in (*t.out_groups, *t.in_groups):
                touching[g] = touching.get(g, 0.0) + s * t.macs
        kappa: dict[str, float] = {}  # group -> measured ms per MAC of its layers (least squares through 0)
        for g, m in touching.items():
            pts = [(1.0 - w / full[g], self.saving_ms(g, w, full[g])) for w in self.table.get(g, {}) if g in full]
            sxx = sum(x * x for x, _ in pts)
            if m > 0 and sxx > 0:
                kappa[g] = max(0.0, sum(x * y for x, y in pts) / (sxx * m))
        cost: list[float] = []
        for t in self.layers:
            ks = [kappa[g] for g in t.groups() if g in kappa]
            cost.append(t.macs * statistics.fmean(ks) if ks else 0.0)
        total: dict[str, float] = {}
        for t, c in zip(self.layers, cost):
            for g, s in (*t.out_groups, *t.in_groups):
                total[g] = total.get(g, 0.0) + s * c
        self._struct = {"sig": sig, "cost": cost, "total": total}
        return self._struct

    def _interaction_saving(self, cut: Mapping[str, int], full: Mapping[str, int]) -> float:
        st = self._structure(full)
        phi: dict[str, float] = {}
        extra = 0.0  # saving beyond what the layers can hold (time per MAC above the neighbours'): additive
        for g, w in cut.items():
            d, tot = self.saving_ms(g, w, full[g]), st["total"].get(g, 0.0)
            if tot <= 0:
                extra += d
                continue
            phi[g] = max(0.0, 1.0 - d / tot)
            extra += max(0.0, d - tot)
        if not phi:
            return extra

        def frac(side: tuple[tuple[str, float], ...]) -> float:
            return 1.0 - sum(s * (1.0 - phi.get(g, 1.0)) for g, s in side) if side else 1.0

        saved = sum(c * (1.0 - frac(t.out_groups) * frac(t.in_groups))
                    for t, c in zip(self.layers, st["cost"]) if c > 0 and t.groups() & phi.keys())
        return saved + extra

    # -- full measurements and the calibration
    def observe(self, widths: Mapping[str, int], full: Mapping[str, int], measured_ms: float) -> None:
        """Record a full-model measurement of ``widths`` and refit the calibration on every point so far."""
        w = {g: int(widths.get(g, full[g])) for g in full}
        self.checks.append(Check(w, float(measured_ms), self.predict(w, full)))
        self.calib = Calibration.fit([(self.predict_raw(c.widths, full), c.measured_ms) for c in self.checks])

    def calibration(self, full: Mapping[str, int] | None = None) -> dict:
        """Prediction error against the full measurements, honestly (see the module doc).

        ``mean_abs_rel_err`` / ``max_abs_rel_err`` are the leave-one-out errors of the calibrated
        model the search used; ``online``: each prediction made before its measurement;
        ``raw``: no calibration; ``additive_raw`` / ``additive_loo``: the additive model on the
        same points, for comparison. ``points[i].predicted_ms`` is the leave-one-out prediction.
        """
        if full is None:
            full = self._full_from_checks()
        model = self.active_model()
        meas = [c.measured_ms for c in self.checks]
        raw = [self.predict_raw(c.widths, full, model) for c in self.checks]
        loo = leave_one_out(list(zip(raw, meas)))
        add = [self.predict_raw(c.widths, full, "additive") for c in self.checks]
        out_loo = rel_errors(list(zip(loo, meas)))
        return {
            "model": model, "n": len(self.checks),
            "mean_abs_rel_err": out_loo["mean_abs_rel_err"], "max_abs_rel_err": out_loo["max_abs_rel_err"],
            "error_kind": "leave-one-out, calibrated",
            "fit": Calibration.fit(list(zip(raw, meas))).to_json(),
            "online": rel_errors([(c.online_ms, c.measured_ms) for c in self.checks]),
            "raw": rel_errors(list(zip(raw, meas))),
            "additive_raw": rel_errors(list(zip(add, meas))),
            "additive_loo": rel_errors(list(zip(leave_one_out(list(zip(add, meas))), meas))),
            "points": [{"predicted_ms": p, "raw_ms": r, "online_ms": c.online_ms, "measured_ms": c.measured_ms}
                       for p, r, c in zip(loo, raw, self.checks)],
        }

    def _full_from_checks(self) -> dict[str, int]:
        full: dict[str, int] = {}
        for c in self.checks:
            for g, w in c.widths.items():
                full[g] = max(full.get(g, 0), w)
        return full

    # -- staircase
    def bottoms(self, gid: str, full: int) -> list[int]:
        """The widest width of every measured step of group ``gid`` below ``full`` (:func:`staircase_bottoms`)."""
        table = self.table.get(gid, {})
        if not table:
            return []
        tol = stair_tolerance(self.raw.get(gid) or table)
        cost = {w: 1.0 / s for w, s in table.items()}
        cost[full] = 1.0
        return [w for w in staircase_bottoms(cost, tol) if w < full]

    def tolerance(self, gids: Sequence[str]) -> float:
        """The step tolerance (fraction of the baseline) of a set of groups: the noisiest one's."""
        return max((stair_tolerance(self.raw.get(g) or self.table[g]) for g in gids if g in self.table),
                   default=STAIR_TOL_FLOOR)

    # -- storage
    def to_json(self) -> dict:
        return {"format": FORMAT, "key": self.key, "base_ms": self.base_ms, "model": self.active_model(),
                "table": {g: {str(w): s for w, s in t.items()} for g, t in self.table.items()},
                "raw": {g: {str(w): s for w, s in t.items()} for g, t in self.raw.items()},
                "null": self.null}

    @classmethod
    def from_json(cls, d: Mapping) -> LatencyLUT:
        def ints(t: Mapping) -> dict[str, dict[int, float]]:
            return {g: {int(w): float(s) for w, s in v.items()} for g, v in t.items()}

        if d.get("format") != FORMAT:
            raise ValueError(f"LUT format {d.get('format')!r}, expected {FORMAT!r}")
        return cls(float(d["base_ms"]), ints(d["table"]), str(d.get("key", "")), ints(d.get("raw", {})),
                   {g: [float(x) for x in v] for g, v in d.get("null", {}).items()})


def null_bias(first: float, last: float) -> float:
    """The measurement's bias from the unpruned model's two self-speedups: the median of (first, last, 1.0).

    When the two agree, that is about their value; when a burst of outside load spoiled one of
    them, the median stays between the other one and 1.0 instead of following the outlier.
    """
    if not (first > 0 and last > 0):
        return 1.0
    return statistics.median([first, last, 1.0])


def lut_key(target_desc: str, sample_shape: tuple[int, ...], model_hash: str, round_to: int | None,
            grid: Mapping[str, list[int]], batch: int) -> str:
    return digest({"target": target_desc, "shape": list(sample_shape), "model": model_hash, "round_to": round_to,
                   "grid": grid, "batch": batch, "format": FORMAT})[:24]


def lut_grid(groups: Sequence[GroupInfo], round_to: int | None, points: int, staircase: bool) -> dict[str, list[int]]:
    """The widths measured per group: :func:`stair_grid` for the staircase, else :func:`width_grid`."""
    if staircase:
        return {g.id: stair_grid(g.width, points) for g in groups}
    return {g.id: width_grid(g.width, round_to, points) for g in groups}


def build_lut(groups: list[GroupInfo], speedups: Callable[[list[dict[str, float]]], list[float]], base_ms: float,
              round_to: int | None, points: int, key_parts: Mapping[str, object],
              log: Callable[[str], None] = lambda s: None, cache: Path | None = None, *,
              staircase: bool = False, progress: Progress | None = None) -> LatencyLUT:
    """Measure (or load from the cache) the table for ``groups``.

    Args:
        speedups: Measures a list of per-group keep-ratio policies against the unpruned model
            in one interleaved run (``CandidateEvaluator.speedups``).
        round_to: Channel multiple of the grid (ignored with ``staircase``).
        points: Widths per group at most.
        key_parts: ``target_desc``, ``sample_shape``, ``model_hash``, ``batch`` for the cache key.
        staircase: Measure the dense :func:`stair_grid` (no fixed rounding) instead of multiples
            of ``round_to``.
        progress: Called after each group with (groups done, groups, text).
    """
    grid = lut_grid(groups, round_to, points, staircase)
    key = lut_key(str(key_parts["target_desc"]), tuple(key_parts["sample_shape"]), str(key_parts["model_hash"]),
                  None if staircase else round_to, grid, int(key_parts["batch"]))
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
    raw: dict[str, dict[int, float]] = {}
    null: dict[str, list[float]] = {}
    todo = [g for g in groups if grid[g.id]]
    for i, g in enumerate(todo):
        # the unpruned model first and last among the variants: its self-speedup is the run's bias
        got = [float(s) for s in speedups([{g.id: 1.0}, *({g.id: w / g.width} for w in grid[g.id]), {g.id: 1.0}])]
        null[g.id] = [got[0], got[-1]]
        bias = null_bias(*null[g.id])
        raw[g.id] = {w: s / bias for w, s in zip(grid[g.id], got[1:-1])}
        table[g.id] = monotone(raw[g.id])
        shown = list(table[g.id].items())
        if len(shown) > 8:
            shown = shown[:: math.ceil(len(shown) / 8)]
        log(f"LUT {g.id} ({len(grid[g.id])} widths, unpruned self-speedup {got[0]:.3f}x / {got[-1]:.3f}x): "
            + ", ".join(f"{w}:{s:.3f}x" for w, s in shown))
        if progress is not None:
            progress(i + 1, len(todo), g.id)
    lut = LatencyLUT(base_ms, table, key, raw, null)
    atomic_write_json(path, lut.to_json())
    return lut
