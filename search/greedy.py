"""The ``greedy`` search: per-group widths, NetAdapt's schedule priced by a measured LUT, AAP's rollback.

Each iteration sets a latency target that is a step below the current predicted latency; the
step shrinks on a decaying schedule (NetAdapt: ``ΔR_i = ΔR_0 · decay^i``). Every *unit* (a
group, or with ``uniform`` a family of groups that keep one width) proposes the *smallest cut*
among its candidate widths that alone brings the LUT-predicted latency to that target; each
proposal is pruned one-shot (+ BN re-estimation) and scored on the calibration split, and the
most accurate proposal is taken. The taken step is **measured in full** on the target (and, when
it looks within budget, measured again with more rounds before it counts), the measurement
refits the LUT's calibration (:meth:`search.lut.LatencyLUT.observe`), the step
gets a short recovery and is checked against the accuracy floor: a step that breaks the floor
is rolled back (never proposed again) and the step size halved (AAP). When the step falls below
``min_reduction`` (the LUT no longer resolves it, or mis-prices every cut), every unit proposes
its next narrower width and the measurements alone decide. The search stops when a full
measurement meets the budget (with ``latency_margin`` to spare), at its candidate and time caps,
or when every unit is at its narrowest width.

Candidate widths of a unit:

- fixed rounding (``prune.round_to: N``): multiples of ``N`` (``2 · lut_points`` of them);
- ``staircase`` (``prune.round_to: null``): the widest width of every step of the *measured*
  latency staircase (:func:`search.lut.staircase_bottoms`), so no cut lands inside a step
  where it would cost accuracy and save no time;
- ``uniform`` (MaskPrune): one keep ratio per family, every member of a family with the same
  original width keeping the same number of channels (:func:`search.families.uniform_widths`);
  with the staircase, the family's predicted cost curve gives the steps.

Only the ``latency`` objective is searched this way; the LUT prices latency, not memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from core.errors import ConfigError
from search.base import Budgeted, Candidate, SearchLimits, TuneResult, run_search
from search.budget import Budgets
from search.families import families as family_map
from search.families import uniform_widths
from search.lut import LatencyLUT, Progress, staircase_bottoms, width_grid
from search.registry import SearchContext, SearchOutcome, register
from stages.model.graph import GroupInfo


@dataclass(frozen=True)
class GreedySettings:
    initial_reduction: float = 0.1  # ΔR_0 as a fraction of the baseline latency (NetAdapt's -irr)
    decay: float = 0.96  # NetAdapt's -rd
    lut_points: int = 6  # widths per group in the LUT grid
    min_reduction: float = 0.005  # below this step (fraction of the baseline) every unit proposes its next width
    uniform: bool = False  # one kept width per family (MaskPrune)
    families: str = "stage"  # the family mode for ``uniform`` (search.families)
    staircase: bool = False  # candidate widths at the bottoms of the measured staircase, not multiples of round_to


@dataclass(frozen=True)
class Unit:
    """What one proposal cuts: a group, or a family of groups (uniform); ``steps`` from the least cut."""

    name: str
    members: tuple[str, ...]
    steps: tuple[dict[str, int], ...]


class GreedyEvaluator(Protocol):
    groups: list[GroupInfo]

    def oneshot_accuracy(self, keep_ratios: Mapping[str, float]) -> float: ...

    def measure_policy(self, keep_ratios: Mapping[str, float], policy: Mapping[str, object]) -> Candidate: ...

    def recover(self, cand: Candidate) -> float: ...


def search_greedy(ev: GreedyEvaluator, lut: LatencyLUT, objective: str, budgets: Budgets, limits: SearchLimits,
                  settings: GreedySettings, round_to: int | None, log: Callable[[str], None] = lambda s: None,
                  clock: Callable[[], float] = time.monotonic, *, progress: Progress | None = None) -> TuneResult:
    """Run the greedy search; see the module docstring.

    Args:
        progress: Called after every full measurement with (measurements, cap, current best).
    """
    if objective != "latency" or not budgets.has_latency:
        raise ConfigError("search 'greedy' needs objective 'latency' with a latency or speedup budget",
                          hint="use --search global for the memory and accuracy objectives")
    if settings.uniform and settings.families == "group":
        raise ConfigError("--uniform needs families of several groups, not tune.families 'group'",
                          hint="set tune.families to stage or block, or drop --uniform")
    units = make_units(ev.groups, lut, settings, round_to)

    def body(b: Budgeted) -> tuple[Candidate | None, str]:
        return _greedy(b, ev, lut, units, budgets, limits, settings)

    return run_search(ev, budgets, limits, body, log, clock, progress=progress)  # type: ignore[arg-type]


def _keep(widths: Mapping[str, int], full: Mapping[str, int]) -> dict[str, float]:
    return {g: w / full[g] for g, w in widths.items()}


def make_units(groups: list[GroupInfo], lut: LatencyLUT, s: GreedySettings, round_to: int | None) -> list[Unit]:
    """The units the search cuts and each one's candidate widths (see the module docstring)."""
    full = {g.id: g.width for g in groups}
    rnd = None if s.staircase else round_to

    def grid(g: GroupInfo) -> list[int]:
        if s.staircase:
            return sorted(lut.table.get(g.id, {}))  # the dense grid the LUT measured
        return width_grid(g.width, round_to, 2 * s.lut_points)

    units: list[Unit] = []
    if not s.uniform:
        for g in groups:
            ws = lut.bottoms(g.id, g.width) if s.staircase else grid(g)
            units.append(Unit(g.id, (g.id,), tuple({g.id: w} for w in sorted(ws, reverse=True))))
        return units
    fams = family_map(groups, s.families)
    by_id = {g.id: g for g in groups}
    for name, gids in fams.items():
        rep = max((by_id[i] for i in gids), key=lambda g: g.width)  # first widest member sets the ratios
        steps: list[dict[str, int]] = []
        for w in sorted(grid(rep), reverse=True):
            a = uniform_widths([by_id[i] for i in gids], {name: gids}, {name: w / rep.width}, rnd)
            if a not in steps and any(a[i] < full[i] for i in gids):
                steps.append(a)
        if s.staircase and steps:
            cost = {a[rep.id]: lut.predict_raw(a, full) / lut.base_ms for a in steps}
            cost[rep.width] = 1.0
            keep = set(staircase_bottoms(cost, lut.tolerance(gids)))
            steps = [a for a in steps if a[rep.id] in keep]
        units.append(Unit(name, tuple(gids), tuple(steps)))
    return units


def _key(widths: Mapping[str, int]) -> tuple:
    return tuple(sorted(widths.items()))


def _narrower(a: Mapping[str, int], widths: Mapping[str, int]) -> bool:
    return all(w <= widths[g] for g, w in a.items()) and any(w < widths[g] for g, w in a.items())


def _greedy(b: Budgeted, ev: GreedyEvaluator, lut: LatencyLUT, units: list[Unit], budgets: Budgets,
            limits: SearchLimits, s: GreedySettings) -> tuple[Candidate | None, str]:
    full = {g.id: g.width for g in ev.groups}
    if s.staircase:
        for u in units:
            b.log(f"staircase {u.name}: widths " + ", ".join(
                "/".join(str(a[g]) for g in u.members) for a in reversed(u.steps)) if u.steps else
                f"staircase {u.name}: no step below the full width")
    limit = budgets.latency_limit_ms(lut.base_ms)
    assert limit is not None  # search_greedy checked there is a latency budget
    target = limit * (1 - limits.latency_margin)
    widths = dict(full)
    observed: set[tuple] = set()

    def measure(w: dict[str, int], policy: dict, label: str) -> Candidate:
        c = b.measure_policy(_keep(w, full), policy, label)
        if c.latency_ms <= target:  # a lucky measurement must not end the search: re-measured before it counts
            b.confirm(c)
        if c.key not in observed:  # a repeat of an earlier architecture is no new information
            observed.add(c.key)
            lut.observe(w, full, c.latency_ms)
        return c

    base_policy = {"kind": "greedy", "uniform": s.uniform, "staircase": s.staircase}
    current = measure(widths, {**base_policy, "iteration": 0}, "greedy start")
    b.recover(current)
    accepted = [current]
    rejected: set[tuple] = set()  # steps rolled back for accuracy: never proposed again
    step = s.initial_reduction * lut.base_ms
    it = 0
    reason = "every unit is at its narrowest width"
    while True:
        if current.latency_ms <= target:
            return current, f"budget met after {it} iterations"
        why = b.exhausted()
        if why:
            reason = why
            break
        it += 1
        now = lut.predict(widths, full)
        goal = max(target, now - step)
        fine = step < s.min_reduction * lut.base_ms  # the LUT does not resolve steps this small
        proposals = []
        for u in units:
            ok = [a for a in u.steps if _narrower(a, widths) and _key({**widths, **a}) not in rejected]
            pick = ok[0] if fine and ok else next((a for a in ok if lut.predict({**widths, **a}, full) <= goal), None)
            if pick is None:
                continue
            acc = ev.oneshot_accuracy(_keep({**widths, **pick}, full))
            proposals.append((acc, -sum(full[g] for g in u.members), u.name, pick))
        if not proposals:
            if fine:
                break
            step /= 2  # no unit reaches the goal alone: ask for less this iteration
            b.log(f"iteration {it}: no {'family' if s.uniform else 'group'} reaches {goal:.3f} ms alone; "
                  f"step -> {step:.3f} ms" + ("; next: the next narrower width of each" if
                                              step < s.min_reduction * lut.base_ms else ""))
            continue
        acc, _, name, pick = max(proposals, key=lambda p: (p[0], p[1], p[2]))
        trial = {**widths, **pick}
        cut = "/".join(f"{widths[g]}->{w}" for g, w in pick.items() if w != widths[g])
        cand = measure(trial, {**base_policy, "iteration": it, "cut": {name: pick}},
                       f"iteration {it}: {name} {cut} (predicted {lut.predict(trial, full):.3f} ms"
                       + (", smallest cut" if fine else "") + ")")
        rec = b.recover(cand)
        if budgets.accuracy_met(rec):
            widths, current = trial, cand
            accepted.append(cand)
            step *= s.decay
        else:  # AAP rollback: stay at the last good point, halve the step
            rejected.add(_key(trial))
            step /= 2
            b.log(f"iteration {it}: accuracy floor broken ({rec:.2f}); rolled back, step -> {step:.3f} ms")
    best = min(accepted, key=lambda c: c.latency_ms)
    return best, f"budget not reachable: {reason} (best {best.latency_ms:.3f} ms, budget {limit:.3f} ms)"


@register("greedy", summary="per-group widths, NetAdapt's schedule priced by a latency LUT measured on the target, "
                            "AAP's rollback on the accuracy floor",
          objectives=("latency",), needs_latency=True,
          options=("initial_reduction", "decay", "lut_points", "uniform", "families", "max_candidates", "time_limit_s",
                   "latency_margin"))
def run_greedy(ctx: SearchContext) -> SearchOutcome:
    """The registered ``greedy`` search: build (or reuse) the latency LUT, then search.

    ``prune.round_to: null`` (``ctx.tune.staircase``) takes the widths from the measured staircase.
    """
    import copy

    from search.lut import build_lut
    from stages.model.cost import layer_terms

    t, ev, groups = ctx.tune, ctx.evaluator, list(ctx.groups)
    settings = GreedySettings(t.initial_reduction, t.decay, t.lut_points, uniform=t.uniform, families=t.families,
                              staircase=t.staircase)
    with ctx.progress("latency LUT") as tick:
        lut = build_lut(groups, ev.speedups, ctx.baseline_ms, ctx.round_to, t.lut_points, dict(ctx.lut_key),
                        log=ctx.log, staircase=t.staircase, progress=tick)
    try:  # which conv / linear layers each group scales: the LUT's interaction model
        lut.layers = layer_terms(copy.deepcopy(ev.model), ctx.example, groups)
    except Exception as e:  # noqa: BLE001 - an exotic model: the additive model still works
        ctx.log(f"LUT: no layer structure ({type(e).__name__}: {e}); predicting with the additive model")
    with ctx.progress("greedy") as tick:
        res = search_greedy(ev, lut, ctx.objective, ctx.budgets, ctx.limits, settings, ctx.round_to, log=ctx.log,
                            progress=tick)
    cal = lut.calibration({g.id: g.width for g in groups})
    if cal["n"]:
        loo = (f"leave-one-out mean {100 * cal['mean_abs_rel_err']:.1f}%, max {100 * cal['max_abs_rel_err']:.1f}%"
               if cal["mean_abs_rel_err"] is not None else "no leave-one-out error (one point)")
        ctx.log(f"LUT ({cal['model']}) vs {cal['n']} full measurements: {loo}; uncalibrated mean "
                f"{100 * cal['raw']['mean_abs_rel_err']:.1f}% (additive model "
                f"{100 * cal['additive_raw']['mean_abs_rel_err']:.1f}%)")
    extra = {"lut": lut.to_json(), "lut_calibration": cal, "uniform": t.uniform}
    if t.staircase:
        extra["staircase"] = {g.id: lut.bottoms(g.id, g.width) for g in groups}
    return SearchOutcome(res, extra)
