"""The ``sensitivity`` search: per-group widths from measured one-shot sensitivity, landed on the budget by
measurement, and kept only where they beat the uniform ratio at the same measured latency.

Why a third per-group search. On transformers a latency LUT of single-group cuts cannot be
measured on a CPU: cutting one of MiniLM's twelve groups moves the whole model's latency by
1-8%, while the unpruned model's own "speedup" over itself varies by 0.96-1.03 between runs on
the shared 2-vCPU VM; the LUT took 80 s per group and came back as noise. Greedy's 10-step
recovery proxy, in turn, picked cuts that the final recovery could not undo
(``bench/results/tuner_vs_uniform.md``). This search needs neither.

The procedure (``search: sensitivity``, latency objective):

1. **Damage curves.** For every group ``g`` and every candidate width ``w`` (``2 · lut_points``
   widths from full down to ``1 - max_ratio``; whole heads for attention groups, multiples of
   ``round_to`` otherwise), the model is pruned at ``g = w`` alone (one shot, BN re-estimated) and
   its calibration metric taken: ``d_g(w) = metric(unpruned) - metric``. No latency measurement.
2. **Allocation path.** A greedy knapsack on those curves, priced by MACs: from the unpruned model,
   repeatedly take the one move (one group to any narrower width) with the least damage per MAC
   saved, until every group is at its narrowest width. MACs of a policy come from the model's
   conv / linear layers (:func:`stages.model.cost.layer_terms`): a layer whose input and output
   channels are both cut keeps ``f_in · f_out`` of its MACs. The path is a one-dimensional family
   from the unpruned model to the deepest cut; its states are the allocations (damage is assumed
   additive over groups, the usual sensitivity-analysis assumption).
3. **Uniform path.** The same for one prune ratio for every group (``0 .. max_ratio`` in steps of
   0.005, shared out by a criterion's allocation where it makes one, e.g. SBPF).
4. **Landing by measurement.** On each path, regula falsi on *measured* latency: a linear model
   ``latency = a + b · base · MACs / MACs₀`` fitted on the baseline and every measurement so far
   picks the next state; a state counts as within budget only when a re-measure with more rounds
   agrees. The search wants the least-pruned state in the *landing window*: measured latency
   between ``limit · (1 - margin)`` and ``limit · (1 - margin / 5)`` (``margin``:
   ``tune.latency_margin``; with the default 0.05, 95-99% of the latency budget), so it neither
   misses the budget nor over-delivers it. It stops when a state lands, when two neighbouring
   states bracket the window (the path's resolution), or at the candidate / time cap.
5. **The choice.** Both landed candidates get the same short recovery (``recovery.tune_steps``)
   and the one with the higher recovered calibration metric is chosen; a tie keeps the uniform one.
   So the search prunes per group only where that wins on the calibration split at the same
   measured latency.

The cost model's fit (measured vs MAC-predicted latency, leave-one-out) is reported like the
greedy LUT's, as ``lut_calibration`` with ``model: "macs"``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from search.base import Budgeted, Candidate, SearchLimits, TuneResult, run_search
from search.budget import Budgets
from search.landing import CostModel, Window, fastest_recovered, land, layer_prices, macs_of
from search.registry import SearchContext, SearchOutcome, register
from stages.model.cost import LayerTerm
from stages.model.graph import GroupInfo
from stages.prune.plan import kept_width

UNIFORM_STEP = 0.005  # prune-ratio resolution of the uniform path


class SensitivityEvaluator(Protocol):
    groups: list[GroupInfo]

    def oneshot_accuracy(self, keep_ratios: Mapping[str, float]) -> float: ...

    def global_keep_ratios(self, ratio: float) -> dict[str, float]: ...

    def measure_policy(self, keep_ratios: Mapping[str, float], policy: Mapping[str, object]) -> Candidate: ...

    def recover(self, cand: Candidate) -> float: ...


@dataclass(frozen=True)
class SensitivitySettings:
    points: int = 12  # candidate widths per group in the damage curves
    max_ratio: float = 0.9  # the most any group may lose
    round_to: int | None = 8


# ------------------------------------------------------------------ damage curves and paths

def candidate_widths(g: GroupInfo, s: SensitivitySettings) -> list[int]:
    """Widths below full a group may be cut to, narrowest last: whole heads / conv-group positions / multiples
    of ``round_to`` (the plans' own rounding), never below ``1 - max_ratio`` of the group."""
    ratios = [s.max_ratio * k / s.points for k in range(1, s.points + 1)]
    floor = max(1, math.ceil((1.0 - s.max_ratio) * g.width - 1e-9))
    ws = {kept_width(g, 1.0 - r, s.round_to) for r in ratios}
    return sorted((w for w in ws if w < g.width and w >= min(floor, max(ws))), reverse=True)


def damage_curves(groups: Sequence[GroupInfo], oneshot: Callable[[Mapping[str, float]], float], base: float,
                  s: SensitivitySettings, progress: Callable[[int, int, str], None] | None = None
                  ) -> dict[str, dict[int, float]]:
    """``d_g(w)``: the calibration metric lost when group ``g`` alone is cut to ``w`` (one shot)."""
    out: dict[str, dict[int, float]] = {}
    for i, g in enumerate(groups):
        out[g.id] = {w: base - oneshot({g.id: w / g.width}) for w in candidate_widths(g, s)}
        if progress is not None:
            progress(i + 1, len(groups), g.id)
    return out


def allocation_path(curves: Mapping[str, Mapping[int, float]], full: Mapping[str, int],
                    cost: Callable[[Mapping[str, int]], float]) -> list[dict[str, int]]:
    """Greedy knapsack: from full widths, repeatedly the move (one group to any narrower candidate width) with the
    least added damage per cost saved; every state on the way, the unpruned model first.

    A move that saves nothing is never taken; ties go to the larger saving, then the group id (deterministic).
    """
    widths = dict(full)
    now = cost(widths)
    path = [dict(widths)]
    while True:
        best = None
        for gid, curve in curves.items():
            d0 = curve.get(widths[gid], 0.0) if widths[gid] != full[gid] else 0.0
            for w, d in curve.items():
                if w >= widths[gid]:
                    continue
                saved = now - cost({**widths, gid: w})
                if saved <= 0:
                    continue
                key = ((d - d0) / saved, -saved, gid, -w)
                if best is None or key < best[0]:
                    best = (key, gid, w, saved)
        if best is None:
            return path
        _, gid, w, saved = best
        widths[gid] = w
        now -= saved
        path.append(dict(widths))


def uniform_path(groups: Sequence[GroupInfo], keep_ratios: Callable[[float], Mapping[str, float]],
                 s: SensitivitySettings) -> list[dict[str, int]]:
    """The widths of one prune ratio for every group, ``0 .. max_ratio`` in steps of :data:`UNIFORM_STEP`,
    consecutive repeats dropped."""
    path: list[dict[str, int]] = []
    n = int(round(s.max_ratio / UNIFORM_STEP))
    for k in range(n + 1):
        keep = keep_ratios(k * UNIFORM_STEP)
        w = {g.id: kept_width(g, float(keep.get(g.id, 1.0)), s.round_to) for g in groups}
        if not path or w != path[-1]:
            path.append(w)
    return path


# ------------------------------------------------------------------ the search

def search_sensitivity(ev: SensitivityEvaluator, terms: Sequence[LayerTerm], curves: Mapping[str, Mapping[int, float]],
                       budgets: Budgets, limits: SearchLimits, settings: SensitivitySettings, baseline_ms: float,
                       log: Callable[[str], None] = lambda s: None, clock: Callable[[], float] = time.monotonic, *,
                       progress: Callable[[int, int, str], None] | None = None) -> tuple[TuneResult, dict]:
    """Run the search (module docstring) on the damage ``curves`` (:func:`damage_curves`); returns the result
    and what goes into ``candidates.json``."""
    groups = list(ev.groups)
    full = {g.id: g.width for g in groups}
    window, limit = Window.for_budget(budgets, limits, baseline_ms)

    def cost(w: Mapping[str, int]) -> float:
        return macs_of(terms, w, full)

    paths = {"uniform": uniform_path(groups, ev.global_keep_ratios, settings),
             "allocation": allocation_path(curves, full, cost)}
    model = CostModel(baseline_ms, cost(full))
    extra: dict = {"sensitivity": {"damage": {g: {str(w): round(d, 4) for w, d in c.items()} for g, c in curves.items()},
                                   "window_ms": [window.low, window.high],
                                   "paths": {k: len(v) for k, v in paths.items()}}}

    def body(b: Budgeted) -> tuple[Candidate | None, str]:
        log(f"landing window {window.low:.3f}-{window.high:.3f} ms (budget {limit:.3f} ms); paths: "
            + ", ".join(f"{k} {len(v)} states" for k, v in paths.items()))
        if baseline_ms <= window.high:
            c = b.measure_policy({}, {"kind": "sensitivity", "path": "unpruned"}, "unpruned")
            if c.latency_ms <= limit:
                b.recover(c)
                return c, "the unpruned model already meets the budget"
        landings = []
        for name, path in paths.items():
            macs = [cost(w) for w in path]
            ld = land(b, "sensitivity", name, path, macs, model, window, full)
            log(f"{name}: {ld.reason}" + (f"; step {ld.index}, {ld.best.latency_ms:.3f} ms" if ld.best else ""))
            landings.append(ld)
        extra["sensitivity"]["landings"] = {ld.name: {"step": ld.index, "reason": ld.reason,
                                                      "measured_ms": {str(k): v for k, v in ld.measured.items()}}
                                            for ld in landings}
        found = [ld for ld in landings if ld.best is not None]
        if not found:
            return fastest_recovered(b), f"budget not reachable: no path reached {window.high:.3f} ms"
        scored = []
        for ld in found:
            acc = b.recover(ld.best)
            scored.append((-1e9 if acc is None else acc, ld.name == "uniform", ld))
        acc, _, pick = max(scored, key=lambda t: (t[0], t[1]))
        extra["sensitivity"]["chosen"] = pick.name
        extra["sensitivity"]["recovered"] = {ld.name: a for a, _, ld in scored}
        return pick.best, f"{pick.name} path chosen (recovered calib {acc:.2f}; " + ", ".join(
            f"{ld.name} {a:.2f}" for a, _, ld in scored) + ")"

    res = run_search(ev, budgets, limits, body, log, clock, progress=progress)  # type: ignore[arg-type]
    extra["lut_calibration"] = model.report()
    return res, extra


@register("sensitivity", summary="per-group widths from one-shot sensitivity curves (a knapsack priced by MACs), "
                                 "landed on measured latency; kept only where it beats the uniform ratio after the "
                                 "same short recovery",
          objectives=("latency",), needs_latency=True, uses_allocation=True,
          options=("lut_points", "max_candidates", "time_limit_s", "latency_margin"))
def run_sensitivity(ctx: SearchContext) -> SearchOutcome:
    """The registered ``sensitivity`` search."""
    ev, groups = ctx.evaluator, list(ctx.groups)
    terms = layer_prices(ctx, "sensitivity")
    settings = SensitivitySettings(points=2 * ctx.tune.lut_points, max_ratio=ctx.limits.max_ratio,
                                   round_to=ctx.round_to)
    t0 = time.monotonic()
    with ctx.progress("sensitivity curves") as tick:
        base = ev.oneshot_accuracy({})
        curves = damage_curves(groups, ev.oneshot_accuracy, base, settings, tick)
    ctx.log(f"sensitivity curves: {sum(map(len, curves.values()))} one-shot evaluations of {len(groups)} groups in "
            f"{time.monotonic() - t0:.0f}s (unpruned calibration metric {base:.2f})")
    with ctx.progress("landing") as tick:
        res, extra = search_sensitivity(ev, terms, curves, ctx.budgets, ctx.limits, settings, ctx.baseline_ms,
                                        log=ctx.log, progress=tick)
    extra["sensitivity"]["base_metric"] = base
    return SearchOutcome(res, extra)
