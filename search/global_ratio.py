"""The ``global`` search: one pruning ratio for every group, chosen on *measured* cost.

The tuner decides *how much* to prune. Which channels go is the criterion's business, and what a
candidate costs is the target's; both arrive through the :class:`Evaluator` callbacks, so the
search logic is testable with a deterministic cost model.

Objectives (the three AAP policies):

- ``latency`` / ``memory``: bisection on the ratio for the *smallest* ratio whose measured
  resources meet every given budget (latency, memory). A candidate that looks feasible is
  re-measured with more rounds before it counts (a lucky first measurement is common on a busy
  machine). Less pruning means more accuracy, so that
  point maximises accuracy; it gets a short recovery and its accuracy is checked against the
  floor.
- ``accuracy``: AAP's adaptive rule (``apdaptive_pruning_given_target``). Step the ratio up by
  ``step``; a step whose recovered accuracy keeps the floor is accepted, one that breaks it is
  rolled back to the last good point and the step is halved; stop when the step is below
  ``min_step``. The accepted candidate with the lowest measured latency wins.

Every search is bounded by ``max_candidates`` evaluations and ``time_limit_s``; an impossible
budget ends with the best candidate and ``met = False``, never a loop.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from search.base import Budgeted, Candidate, Evaluator, SearchLimits, TuneResult, run_search
from search.budget import Budgets
from search.registry import SearchContext, SearchOutcome, register


def search_global(ev: Evaluator, objective: str, budgets: Budgets, limits: SearchLimits,
                  log: Callable[[str], None] = lambda s: None,
                  clock: Callable[[], float] = time.monotonic, *,
                  progress: Callable[[int, int, str], None] | None = None) -> TuneResult:
    """Run the global-ratio search for ``objective``; see the module docstring. ``progress`` as in
    :func:`run_search`."""
    body = _aap_stepping if objective == "accuracy" else _bisect_resources
    return run_search(ev, budgets, limits, lambda b: body(b, budgets, limits), log, clock, progress=progress)


def _bisect_resources(b: Budgeted, budgets: Budgets, limits: SearchLimits) -> tuple[Candidate | None, str]:
    margin = limits.latency_margin
    lo = b.measure(0.0)
    if budgets.resources_met(lo, margin) and budgets.resources_met(b.confirm(lo), margin):
        b.recover(lo)
        return lo, "the unpruned model already meets the budget"
    hi = b.measure(limits.max_ratio)
    if not (budgets.resources_met(hi, margin) and budgets.resources_met(b.confirm(hi), margin)):
        best = min(b.order, key=lambda c: (c.latency_ms, c.memory_mb))
        b.recover(best)
        return best, f"budget not reachable: even ratio {limits.max_ratio} misses it (best candidate kept)"
    b.recover(hi)
    r_lo, r_hi, best = 0.0, limits.max_ratio, hi
    reason = "bisection converged"
    while r_hi - r_lo > limits.min_step:
        why = b.exhausted()
        if why:
            reason = why
            break
        mid = round((r_lo + r_hi) / 2, 4)
        c = b.measure(mid)
        if budgets.resources_met(c, margin) and budgets.resources_met(b.confirm(c), margin):
            r_hi = mid
            if c.ratio <= best.ratio:
                best = c
                b.recover(c)
        else:
            r_lo = mid
    return best, reason


def _aap_stepping(b: Budgeted, budgets: Budgets, limits: SearchLimits) -> tuple[Candidate | None, str]:
    good = b.measure(0.0)
    b.recover(good)
    accepted = [good]
    ratio, step, resets = 0.0, limits.step, 0
    reason = "step fell below min_step"
    while step >= limits.min_step:
        why = b.exhausted()
        if why:
            reason = why
            break
        nxt = round(min(limits.max_ratio, ratio + step), 4)
        if nxt <= ratio + 1e-9:
            reason = f"reached max_ratio {limits.max_ratio}"
            break
        c = b.measure(nxt)
        acc = b.recover(c)
        if budgets.accuracy_met(acc):
            accepted.append(c)
            ratio, resets = nxt, 0
        else:  # AAP rollback: back to the last good point, halve the step
            resets += 1
            step /= 2
            if resets >= 3 and len(accepted) > 1:  # AAP: after the 3rd reset, back off one more accepted round
                accepted.pop()
                ratio = accepted[-1].ratio
                resets = 0
    feasible = [c for c in accepted if budgets.resources_met(c)] or accepted
    return min(feasible, key=lambda c: (c.latency_ms, -c.ratio)), reason


@register("global", summary="one pruning ratio for every group: bisection on measured cost (latency / memory), "
                            "AAP's step-and-rollback for the accuracy objective",
          uses_allocation=True, options=("step", "min_step", "max_candidates", "time_limit_s", "latency_margin"))
def run_global(ctx: SearchContext) -> SearchOutcome:
    """The registered ``global`` search (a criterion's allocation, e.g. SBPF's, shares the ratio out)."""
    with ctx.progress("global") as tick:
        res = search_global(ctx.evaluator, ctx.objective, ctx.budgets, ctx.limits, log=ctx.log, progress=tick)
    return SearchOutcome(res)
