"""Landing a one-dimensional family of policies on a latency budget by measurement (``sensitivity``, ``aap``).

A *path* is a list of per-group widths ordered from the unpruned model to the deepest cut. :func:`land`
finds the least-pruned state whose *measured* latency lies in the landing :class:`Window` (95-99% of
the budget with the default ``tune.latency_margin``), by regula falsi on a :class:`CostModel` that
predicts latency from MACs (:func:`macs_of`, priced on the model's conv / linear layers,
:func:`layer_prices`) and is refitted on every measurement. The searches' docs: docs/search.md.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from search.base import Budgeted, Candidate, SearchLimits
from search.budget import Budgets
from search.lut import Calibration, leave_one_out, rel_errors
from search.registry import SearchContext
from stages.model.cost import LayerTerm

WINDOW_TOP = 0.2  # the window's top edge: limit * (1 - WINDOW_TOP * margin)


# ------------------------------------------------------------------ costs

def macs_of(terms: Sequence[LayerTerm], widths: Mapping[str, int], full: Mapping[str, int]) -> float:
    """MACs of a policy: every layer keeps ``f_out · f_in`` of its full MACs, ``f`` the kept share of the
    channels its groups own (a group's share of a concatenation weighs its part)."""

    def frac(side: tuple[tuple[str, float], ...]) -> float:
        if not side:
            return 1.0
        return sum(share * widths.get(g, full[g]) / full[g] for g, share in side)

    return sum(t.macs * frac(t.out_groups) * frac(t.in_groups) for t in terms)


def width_costs(groups: Sequence) -> list[LayerTerm]:
    """A fallback cost model where the layer structure is unknown: every group one layer of its width."""
    return [LayerTerm(g.id, float(g.width), ((g.id, 1.0),)) for g in groups]


def layer_prices(ctx: SearchContext, who: str) -> list[LayerTerm]:
    """The conv / linear layers each group scales, with their MACs (one forward pass of a copy); for a model whose
    layers cannot be traced that way, :func:`width_costs` (logged)."""
    from stages.model.cost import layer_terms

    groups = list(ctx.groups)
    try:
        return layer_terms(copy.deepcopy(ctx.evaluator.model), ctx.example, groups)
    except Exception as e:  # noqa: BLE001 - an exotic model: price cuts by channel counts
        ctx.log(f"{who}: no layer structure ({type(e).__name__}: {e}); pricing cuts by channel counts")
        return width_costs(groups)


# ------------------------------------------------------------------ the cost model and the window

@dataclass
class CostModel:
    """Measured latency vs MAC-predicted latency (``base · MACs / MACs₀``): ``a + b · raw``, refitted on every
    measurement; the baseline is the first point. ``search`` names the search in the report."""

    base_ms: float
    base_macs: float
    search: str = "sensitivity"
    points: list[tuple[float, float]] = field(default_factory=list)  # (raw prediction, measured ms)

    def __post_init__(self) -> None:
        self._fit = self._refit()

    def _refit(self) -> Calibration:
        return Calibration.fit([(self.base_ms, self.base_ms), *self.points])

    def raw(self, macs: float) -> float:
        return self.base_ms * macs / self.base_macs if self.base_macs > 0 else self.base_ms

    def predict(self, macs: float) -> float:
        return self._fit(self.raw(macs))

    def observe(self, macs: float, measured_ms: float) -> None:
        self.points.append((self.raw(macs), float(measured_ms)))
        self._fit = self._refit()

    def report(self) -> dict:
        """The fit's error on the search's measurements, in the greedy LUT's ``lut_calibration`` format."""
        pts = list(self.points)
        loo = leave_one_out([(self.base_ms, self.base_ms), *pts])[1:] if pts else []
        return {"model": "macs", "search": self.search, **rel_errors([(p, m) for p, (_, m) in zip(loo, pts)]),
                "n": len(pts), "error_kind": "leave-one-out, calibrated (baseline point always in the fit)",
                "fit": self._fit.to_json(), "raw": rel_errors(pts),
                "points": [{"predicted_ms": p, "raw_ms": r, "measured_ms": m} for p, (r, m) in zip(loo, pts)]}


@dataclass(frozen=True)
class Window:
    """Where a landed candidate's measured latency must lie: ``[low, high]`` ms."""

    low: float
    high: float

    @classmethod
    def of(cls, limit_ms: float, margin: float) -> Window:
        return cls(limit_ms * (1 - margin), limit_ms * (1 - WINDOW_TOP * margin))

    @classmethod
    def for_budget(cls, budgets: Budgets, limits: SearchLimits, baseline_ms: float) -> tuple[Window, float]:
        """The window of a run's latency budget, and the budget in ms."""
        limit = budgets.latency_limit_ms(baseline_ms)
        assert limit is not None  # the registry refuses these searches without a latency budget
        return cls.of(limit, limits.latency_margin), limit


# ------------------------------------------------------------------ landing

@dataclass
class Landing:
    """The outcome of landing one path: the least-pruned measured state within budget (``None``: none was)."""

    name: str
    best: Candidate | None
    index: int | None
    measured: dict[int, float]
    reason: str


def land(b: Budgeted, kind: str, name: str, path: Sequence[Mapping[str, int]], macs: Sequence[float],
         model: CostModel, window: Window, full: Mapping[str, int]) -> Landing:
    """Regula falsi along ``path`` on measured latency; ``macs[i]`` is the MAC count of ``path[i]``, ``kind`` /
    ``name`` describe the candidates in the report (the search, the path). A state within the window's top
    counts only after :meth:`Budgeted.confirm` re-measured it."""
    goal = (window.low + window.high) / 2
    lo, hi = 0, None  # lo: measured (or known) over the window's top; hi: the least-pruned state within it
    best: Candidate | None = None
    measured: dict[int, float] = {}
    last = len(path) - 1
    while True:
        why = b.exhausted()
        if why:
            return Landing(name, best, hi, measured, why)
        upper = hi if hi is not None else last + 1
        if upper - lo <= 1:
            reason = ("bracketed: the neighbouring state is over the window" if hi is not None
                      else "the deepest state misses the budget")
            return Landing(name, best, hi, measured, reason)
        pick = next((i for i in range(lo + 1, upper) if model.predict(macs[i]) <= goal), upper - 1)
        keep = {g: w / full[g] for g, w in path[pick].items() if w != full[g]}
        c = b.measure_policy(keep, {"kind": kind, "path": name, "step": pick, "of": last},
                             f"{name} step {pick}/{last} (predicted {model.predict(macs[pick]):.3f} ms)")
        model.observe(macs[pick], c.latency_ms)
        if c.latency_ms <= window.high:
            b.confirm(c)
        measured[pick] = c.latency_ms
        if c.latency_ms <= window.high:
            hi, best = pick, c
            if c.latency_ms >= window.low:
                return Landing(name, best, hi, measured, "landed in the window")
        else:
            lo = pick


def fastest_recovered(b: Budgeted) -> Candidate | None:
    """Where no path reached the budget: the fastest candidate measured, recovered like a chosen one."""
    best = min(b.order, key=lambda c: c.latency_ms) if b.order else None
    if best is not None:
        b.recover(best)
    return best
