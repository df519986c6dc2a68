"""The ``greedy`` search: per-group widths, NetAdapt's schedule priced by a measured LUT, AAP's rollback.

Each iteration sets a latency target that is a step below the current predicted latency; the
step shrinks on a decaying schedule (NetAdapt: ``ΔR_i = ΔR_0 · decay^i``). Every group proposes
the *smallest cut* (largest width on its grid) that alone brings the LUT-predicted latency to
that target; each proposal is pruned one-shot (+ BN re-estimation) and scored on the calibration
split, and the most accurate proposal is taken. The taken step is **measured in full** on the
target, given a short recovery, and checked against the accuracy floor: a step that breaks the
floor is rolled back and the step size halved (AAP). The search stops when a full measurement
meets the budget (with ``latency_margin`` to spare), and at its candidate and time caps.

Only the ``latency`` objective is searched this way; the LUT prices latency, not memory.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from pipeline.errors import ConfigError
from pipeline.lut import LatencyLUT, width_grid
from pipeline.tuner import Budgets, Candidate, SearchLimits, TuneResult, _Budgeted, run_search
from stages.prune.tp_adapter import GroupInfo


@dataclass(frozen=True)
class GreedySettings:
    initial_reduction: float = 0.1  # ΔR_0 as a fraction of the baseline latency (NetAdapt's -irr)
    decay: float = 0.96  # NetAdapt's -rd
    lut_points: int = 6  # widths per group in the LUT grid
    min_reduction: float = 0.005  # stop when the step falls below this fraction of the baseline


class GreedyEvaluator(Protocol):
    groups: list[GroupInfo]

    def oneshot_accuracy(self, keep_ratios: Mapping[str, float]) -> float: ...

    def measure_policy(self, keep_ratios: Mapping[str, float], policy: Mapping[str, object]) -> Candidate: ...

    def recover(self, cand: Candidate) -> float: ...


def search_greedy(ev: GreedyEvaluator, lut: LatencyLUT, objective: str, budgets: Budgets, limits: SearchLimits,
                  settings: GreedySettings, round_to: int | None, log: Callable[[str], None] = lambda s: None,
                  clock: Callable[[], float] = time.monotonic) -> TuneResult:
    """Run the greedy search; see the module docstring."""
    if objective != "latency" or budgets.latency_ms is None:
        raise ConfigError("search 'greedy' needs objective 'latency' with a latency or speedup budget",
                          hint="use --search global for the memory and accuracy objectives")

    def body(b: _Budgeted) -> tuple[Candidate | None, str]:
        return _greedy(b, ev, lut, budgets, limits, settings, round_to)

    return run_search(ev, budgets, limits, body, log, clock)  # type: ignore[arg-type]


def _keep(widths: Mapping[str, int], full: Mapping[str, int]) -> dict[str, float]:
    return {g: w / full[g] for g, w in widths.items()}


def _greedy(b: _Budgeted, ev: GreedyEvaluator, lut: LatencyLUT, budgets: Budgets, limits: SearchLimits,
            s: GreedySettings, round_to: int | None) -> tuple[Candidate | None, str]:
    full = {g.id: g.width for g in ev.groups}
    grids = {g.id: width_grid(g.width, round_to, max(s.lut_points, 2 * s.lut_points)) for g in ev.groups}
    target = budgets.latency_ms * (1 - limits.latency_margin)
    widths = dict(full)
    current = b.measure_policy(_keep(widths, full), {"kind": "greedy", "iteration": 0}, "greedy start")
    b.recover(current)
    accepted = [current]
    step = s.initial_reduction * lut.base_ms
    it = 0
    reason = "step fell below min_reduction"
    while True:
        if current.latency_ms <= target:
            return current, f"budget met after {it} iterations"
        why = b.exhausted()
        if why:
            reason = why
            break
        if step < s.min_reduction * lut.base_ms:
            break
        it += 1
        now = lut.predict(widths, full)
        goal = max(target, now - step)
        proposals = []
        for gid, grid in grids.items():
            smaller = [w for w in sorted(grid, reverse=True) if w < widths[gid]]
            pick = next((w for w in smaller if lut.predict({**widths, gid: w}, full) <= goal), None)
            if pick is None:
                continue
            acc = ev.oneshot_accuracy(_keep({**widths, gid: pick}, full))
            proposals.append((acc, -full[gid], gid, pick))
        if not proposals:  # no single group reaches the goal: ask for less this iteration
            step /= 2
            b.log(f"iteration {it}: no group reaches {goal:.3f} ms alone; step -> {step:.3f} ms")
            continue
        acc, _, gid, w = max(proposals)
        trial = {**widths, gid: w}
        cand = b.measure_policy(_keep(trial, full), {"kind": "greedy", "iteration": it, "cut": {gid: w}},
                                f"iteration {it}: {gid} {widths[gid]}->{w}")
        lut.record(lut.predict(trial, full), cand.latency_ms)
        rec = b.recover(cand)
        if budgets.accuracy_met(rec):
            widths, current = trial, cand
            accepted.append(cand)
            step *= s.decay
        else:  # AAP rollback: stay at the last good point, halve the step
            step /= 2
            b.log(f"iteration {it}: accuracy floor broken ({rec:.2f}); rolled back, step -> {step:.3f} ms")
    best = min(accepted, key=lambda c: c.latency_ms)
    return best, f"budget not reachable: {reason} (best {best.latency_ms:.3f} ms, budget {budgets.latency_ms:.3f} ms)"
