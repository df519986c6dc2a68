"""The ``cswap`` search: no search. It prunes what C-SWAP's progressive procedure accepted.

C-SWAP (Bauvin, Baret, Ahmad; arXiv 2510.18636; reconstructed, [RECON] in
``shared/research/methods.md`` §1, see :mod:`stages.score.cswap`) decides *how much* to prune as
well as *which* channels: its progressive procedure removes candidates chunk by chunk and keeps a
chunk only while the held-out top-1 stays within ``tolerance`` points of the unpruned model, with
no fine-tuning. The criterion hands that plan over as ``ScoreResult.proposal`` (channels to keep
per group); this search turns it into one candidate, measured like any other
(:meth:`search.base.Budgeted.measure_policy`: one-shot prune + BN re-estimation, export,
interleaved timing against the unpruned model), then given the run's candidate recovery
(``b.recover``; with ``recovery.method: none``, the paper's no-fine-tune setting, that is a plain
calibration evaluation).

Widths: ``prune.round_to`` is honoured by rounding each kept width **up** to a multiple of it
(never past the group's width; attention groups: up to whole heads), so the candidate never
removes a channel the held-out check did not accept: it removes the procedure's accepted
channels minus at most ``round_to - 1`` per group (the last-accepted ones are kept first, since
accepted channels score in acceptance order). Other searches round to the *nearest* multiple
(:func:`stages.prune.plan.keep_count`), which here would prune unverified channels.
``prune.round_to: 1`` (or ``null``) prunes the accepted set exactly. Why rounding is on by
default: on the embedded digits ResNet the exact widths (127 of 128, 57 of 64, ...) ran *slower*
than the unpruned model on the ``cpu`` target (0.82x, ``bench/results/cswap_procedure.md``).
Any group whose pruned width still differs from the rounded plan is listed in ``inexact``.

It serves every objective and needs no budget: a budget the plan misses is reported (the
verdict says "not met"), not chased. How far the procedure got, what the candidate costs and
whether the budgets hold go to report.json's ``tune.cswap``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

from core.errors import ConfigError, StageError
from search.base import Budgeted, Candidate, SearchLimits, TuneResult, run_search
from search.budget import Budgets
from search.registry import SearchContext, SearchOutcome, register


def _checked(groups: Sequence, proposal: Mapping[str, int] | None) -> dict[str, int]:
    """The plan as channels to keep for every group (unnamed groups keep all); refuses a missing or bad plan."""
    if not proposal:
        raise ConfigError("search 'cswap' needs the plan of criterion cswap's progressive procedure",
                          hint="use --criterion cswap (with its progressive option on, the default)")
    widths = {g.id: g.width for g in groups}
    unknown = sorted(set(proposal) - set(widths))
    if unknown:
        raise StageError(f"the C-SWAP plan names groups this model does not have: {', '.join(unknown[:5])}",
                         hint="score again (drop --resume): the scores were made for another model")
    bad = [g for g, k in proposal.items() if not 1 <= int(k) <= widths[g]]
    if bad:
        raise StageError(f"the C-SWAP plan keeps {proposal[bad[0]]} of {widths[bad[0]]} channels of group '{bad[0]}'",
                         hint="a plan keeps between 1 and all channels of a group; score again")
    return {g: int(proposal.get(g, w)) for g, w in widths.items()}


def plan_widths(groups: Sequence, proposal: Mapping[str, int] | None, round_to: int | None) -> dict[str, int]:
    """Kept width per group (``.id``, ``.width``, optional ``.heads``) for the C-SWAP plan ``proposal`` (channels
    to keep per group id): rounded **up** to a multiple of ``round_to`` (``None`` or 1: exact), never past the
    width; an attention group up to whole heads. A group the plan does not name keeps everything.

    Raises:
        ConfigError: There is no plan (another criterion, or its progressive procedure off).
        StageError: The plan names a group the model does not have, or a keep outside ``1..width``.
    """
    kept = _checked(groups, proposal)
    out = {}
    for g in groups:
        heads = getattr(g, "heads", 0)
        unit = g.width // heads if heads else (round_to or 1)
        out[g.id] = min(g.width, math.ceil(kept[g.id] / unit) * unit)
    return out


def proposal_keep_ratios(groups: Sequence, proposal: Mapping[str, int] | None,
                         round_to: int | None = None) -> dict[str, float]:
    """Keep ratio ``width kept / width`` per group (:func:`plan_widths`); ``make_plan`` at the same ``round_to``
    gives exactly those widths back (each is a multiple of ``round_to``, or the whole group)."""
    widths = plan_widths(groups, proposal, round_to)
    return {g.id: widths[g.id] / g.width for g in groups}


def search_cswap(ev, groups: Sequence, proposal: Mapping[str, int] | None, budgets: Budgets, limits: SearchLimits,
                 baseline_ms: float, round_to: int | None = None, log: Callable[[str], None] = lambda s: None,
                 clock: Callable[[], float] = time.monotonic, *,
                 progress: Callable[[int, int, str], None] | None = None) -> tuple[TuneResult, dict]:
    """Measure the C-SWAP plan as the one candidate; returns the result and report.json's ``tune.cswap``.

    Args:
        ev: The evaluator (``measure_policy`` and ``recover``).
        groups: The prunable groups (``.id``, ``.width``).
        proposal: Channels to keep per group id (``ScoreResult.proposal``).
        baseline_ms: The unpruned model's median latency (the speedup where the candidate has none).
        round_to: The run's ``prune.round_to``: kept widths are rounded up to it.
    """
    accepted_kept = _checked(groups, proposal)
    widths = plan_widths(groups, proposal, round_to)
    keep = {g.id: widths[g.id] / g.width for g in groups}
    total = sum(g.width for g in groups)
    accepted, pruned = total - sum(accepted_kept.values()), total - sum(widths.values())
    reason = f"C-SWAP procedure's plan (no search): {accepted} of {total} channels"
    if pruned != accepted:
        reason += f"; {pruned} pruned, widths rounded up to prune.round_to {round_to}"
    policy = {"kind": "cswap", "accepted": accepted, "pruned": pruned, "channels": total, "round_up_to": round_to}

    def body(b: Budgeted) -> tuple[Candidate | None, str]:
        c = b.measure_policy(keep, policy, f"C-SWAP plan ({pruned} of {total} channels)")
        b.recover(c)
        return c, reason

    res = run_search(ev, budgets, limits, body, log, clock, progress=progress)
    extra = {"accepted": accepted, "pruned": pruned, "channels": total,
             "fraction": round(accepted / total, 4) if total else 0.0, "round_to": round_to, "baseline_ms": baseline_ms}
    return res, {**extra, **candidate_costs(res.chosen, widths, budgets, baseline_ms)}


def candidate_costs(c: Candidate | None, widths: Mapping[str, int], budgets: Budgets, baseline_ms: float) -> dict:
    """What the candidate of the plan ``widths`` (kept per group) costs: params, MACs, latency, speedup, whether
    the budgets and the floor hold, and the groups whose pruned width differs from the plan (``inexact``)."""
    if c is None:
        return {}
    speedup = c.speedup if c.speedup is not None else (baseline_ms / c.latency_ms if c.latency_ms else None)
    got = dict(c.key) if all(isinstance(k, tuple) and len(k) == 2 for k in c.key) else {}
    return {"params": getattr(c, "params", None), "macs": getattr(c, "macs", None), "latency_ms": c.latency_ms,
            "speedup": speedup, "accuracy_oneshot": c.accuracy_oneshot, "accuracy": c.accuracy,
            "budgets_met": budgets.resources_met(c), "floor_met": budgets.accuracy_met(c.accuracy),
            "inexact": {g: [k, got[g]] for g, k in widths.items() if g in got and got[g] != k}}


@register("cswap", summary="no search: prunes the channels C-SWAP's progressive, held-out-verified procedure "
                           "accepted (no fine-tuning; widths rounded up to prune.round_to)",
          needs_criterion="cswap")
def run_cswap(ctx: SearchContext) -> SearchOutcome:
    """The registered ``cswap`` search: the C-SWAP plan (``ctx.proposal``) as the one candidate."""
    _checked(ctx.groups, ctx.proposal)  # before any work: the refusal does not wait for a progress bar
    with ctx.progress("cswap") as tick:
        res, extra = search_cswap(ctx.evaluator, ctx.groups, ctx.proposal, ctx.budgets, ctx.limits, ctx.baseline_ms,
                                  ctx.round_to, log=ctx.log, progress=tick)
    if res.chosen is not None:
        spd = f"{extra['speedup']:.2f}x" if extra.get("speedup") else "n/a"
        ctx.log(f"C-SWAP plan: {extra['accepted']} of {extra['channels']} channels accepted, {extra['pruned']} "
                f"pruned (round_to {ctx.round_to}), {spd} vs the unpruned model; budgets "
                f"{'met' if extra['budgets_met'] else 'NOT met (reported, not chased)'}")
    return SearchOutcome(res, {"cswap": extra})
