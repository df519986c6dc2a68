"""The ``aap`` search: AAP's one global activation threshold, scaled per layer, landed on measured latency.

AAP (Zhao, Jain, Zhao; methods.md §10) prunes every filter whose activation score is at most the
layer's threshold ``T_l = T · nnz(W_l) / Σ_l nnz(W_l)``, one global ``T`` for the whole network, and
steps ``T`` up round after round (prune, retrain, re-score), rolling back and halving the step when
a round breaks its policy (accuracy loss, parameter reduction or FLOPs reduction).

What this search keeps, and what it changes (decided; docs/search.md ## aap):

- **Kept:** one global threshold on the criterion's scores, scaled per group by the group's share of
  non-zero weights (its root layer's), so larger layers get a higher threshold; a group keeps the
  channels (whole heads of an attention group, positions of a grouped conv) scoring above it.
  With ``--criterion aap`` the scores are AAP's own activation score.
- **Changed:** the latency policy is the *measured* latency on the target, not a FLOPs count (the
  authors' ``givenFlopsReduce`` also mixes FLOPs with params, a bug noted in methods.md). The
  threshold is not stepped by a fixed ``λ`` with rollbacks: every distinct threshold is a state on a
  one-dimensional path (the unpruned model, then one channel fewer at each breakpoint), and the
  state is found by the same measured landing as ``sensitivity`` (regula falsi on measured latency
  into the 95-99% window). Scores are taken once, on the unpruned model, not after every round of
  retraining: a round of retraining per step is what the authors' 100 rounds of 182 epochs paid for.
- No group loses more than ``prune.max_ratio`` of its channels (AAP has no such floor; without it a
  threshold empties small layers).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence

import torch

from search.base import Budgeted, Candidate, SearchLimits, TuneResult, run_search
from search.budget import Budgets
from search.landing import CostModel, Window, fastest_recovered, land, layer_prices, macs_of
from search.registry import SearchContext, SearchOutcome, register
from stages.model.cost import LayerTerm
from stages.model.graph import GroupInfo
from stages.prune.plan import kept_width


def unit_scores(g: GroupInfo, s: torch.Tensor) -> torch.Tensor:
    """One score per removable unit: a head's mean (attention), a position's mean over the conv groups (grouped
    conv), else the channel's own."""
    s = s.float().flatten()
    if g.heads:  # channel c is head (c // head_dim) % heads
        return s.reshape(-1, g.heads, g.head_dim).mean(dim=(0, 2))
    if g.channel_groups > 1:
        return s.reshape(g.channel_groups, -1).mean(dim=0)
    return s


def shares(groups: Sequence[GroupInfo], nnz: Mapping[str, int]) -> dict[str, float]:
    """AAP's per-layer scale: the group's share of the non-zero weights of all groups' root layers."""
    total = sum(nnz.get(g.id, 0) for g in groups) or 1
    return {g.id: max(nnz.get(g.id, 0), 1) / total for g in groups}


def threshold_path(groups: Sequence[GroupInfo], scores: Mapping[str, torch.Tensor], share: Mapping[str, float],
                   max_ratio: float, round_to: int | None) -> tuple[list[dict[str, int]], list[float]]:
    """Every distinct plan a global threshold ``T`` gives, from ``T = 0`` up: group ``g`` keeps its units scoring
    above ``T · share_g`` (at least ``1 - max_ratio`` of them), rounded as plans round. Returns the states and
    the threshold at which each begins."""
    events = []  # (T at which a unit drops, group id)
    units = {}
    for g in groups:
        u = unit_scores(g, scores[g.id])
        units[g.id] = len(u)
        events += [(float(v) / share[g.id], g.id) for v in u]
    events.sort()
    floor = {g.id: max(1, math.ceil((1.0 - max_ratio) * units[g.id] - 1e-9)) for g in groups}
    alive = dict(units)
    by_id = {g.id: g for g in groups}

    def widths() -> dict[str, int]:
        return {gid: kept_width(by_id[gid], max(alive[gid], floor[gid]) / units[gid], round_to) for gid in alive}

    path, at = [widths()], [0.0]
    for t, gid in events:
        alive[gid] -= 1
        w = widths()
        if w != path[-1]:
            path.append(w)
            at.append(t)
    return path, at


def search_aap(ev, terms: Sequence[LayerTerm], share: Mapping[str, float], budgets: Budgets, limits: SearchLimits,
               round_to: int | None, baseline_ms: float, log: Callable[[str], None] = lambda s: None,
               clock: Callable[[], float] = time.monotonic, *,
               progress: Callable[[int, int, str], None] | None = None) -> tuple[TuneResult, dict]:
    """Land the threshold path on the latency budget (module docstring); returns the result and its record."""
    groups = list(ev.groups)
    full = {g.id: g.width for g in groups}
    window, _ = Window.for_budget(budgets, limits, baseline_ms)
    path, at = threshold_path(groups, ev.scores, share, limits.max_ratio, round_to)
    macs = [macs_of(terms, w, full) for w in path]
    model = CostModel(baseline_ms, macs[0], search="aap")
    extra: dict = {"aap": {"states": len(path), "window_ms": [window.low, window.high],
                           "share": {g: round(v, 6) for g, v in share.items()}}}

    def body(b: Budgeted) -> tuple[Candidate | None, str]:
        log(f"AAP threshold path: {len(path)} states; landing window {window.low:.3f}-{window.high:.3f} ms")
        ld = land(b, "aap", "threshold", path, macs, model, window, full)
        extra["aap"].update(step=ld.index, reason=ld.reason,
                            threshold=None if ld.index is None else at[ld.index],
                            measured_ms={str(k): v for k, v in ld.measured.items()})
        if ld.best is None:
            return fastest_recovered(b), f"budget not reachable: {ld.reason}"
        b.recover(ld.best)
        return ld.best, f"threshold {at[ld.index]:.4g}: {ld.reason}"

    res = run_search(ev, budgets, limits, body, log, clock, progress=progress)
    extra["lut_calibration"] = model.report()
    return res, extra


def _nnz(model: torch.nn.Module, groups: Sequence[GroupInfo]) -> dict[str, int]:
    mods = dict(model.named_modules())
    out = {}
    for g in groups:
        w = getattr(mods.get(g.id), "weight", None)
        out[g.id] = int(torch.count_nonzero(w).item()) if isinstance(w, torch.Tensor) else g.width
    return out


@register("aap", summary="AAP: one global threshold on the criterion's scores (with --criterion aap, AAP's "
                         "activation score), scaled per layer by its share of non-zero weights, landed on measured "
                         "latency", objectives=("latency",), needs_latency=True,
          options=("max_candidates", "time_limit_s", "latency_margin"))
def run_aap(ctx: SearchContext) -> SearchOutcome:
    """The registered ``aap`` search."""
    ev, groups = ctx.evaluator, list(ctx.groups)
    terms = layer_prices(ctx, "aap")
    with ctx.progress("aap") as tick:
        res, extra = search_aap(ev, terms, shares(groups, _nnz(ev.model, groups)), ctx.budgets, ctx.limits,
                                ctx.round_to, ctx.baseline_ms, log=ctx.log, progress=tick)
    return SearchOutcome(res, extra)
