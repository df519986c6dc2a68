"""C-SWAP: causal channel scores and progressive pruning without fine-tuning (Bauvin, Baret, Ahmad;
arXiv 2510.18636). No public code; everything below except the idea is a reconstruction
([RECON] in ``shared/research/methods.md`` §1, from a secondary summary of the paper).

Score [RECON]. For channel ``n`` of a group, over the scoring samples ``x`` with class ``y`` (the
label, or the unpruned model's prediction where the label is < 0)::

    d_n(x) = p_y(x) - p_y(x | do(a_n = 0))        (softmax probability of class y)
    xi_n   = mean_x d_n(x)

``do(a_n = 0)`` zeroes the channel at every site that carries it (its BatchNorm outputs, else its
conv/linear outputs: :func:`stages.score._interventions.channel_sites`), i.e. it removes the
structure; with ``intervention="mean"`` the channel is set to its calibration mean instead. A
two-sided one-sample t-test of ``d_n(x)`` against 0 at level ``alpha`` sorts each channel into
*critical* (``xi > 0``, significant), *detrimental* (``xi < 0``, significant) or *neutral*.

Progressive pruning [RECON]. The calibration samples are split into a scoring half (the first
half) and a held-out half. Candidates are the detrimental channels (most negative ``xi`` first),
then the neutral ones (smallest ``|xi|`` first). They are removed cumulatively (zeroed, the same
interventions) in chunks of ``chunk`` x all channels; after each chunk the held-out top-1
agreement with ``y`` is measured. A chunk that drops it by more than ``tolerance`` points below
the unpruned model is undone and its members are tried again as two half-size sub-chunks (our
reading of "swap"); a sub-chunk that still breaks the tolerance is undone for good and its members
are kept. So no accepted state ever breaks the tolerance. It stops at ``max_fraction`` of all
channels, when the candidates run out, or (ours, for cost; ``patience=0`` turns it off) after
``patience`` chunks in a row of which nothing could be accepted: candidates come in order of
growing ``|xi|``, so once chunks keep failing the rest rarely pass. It never empties a group (the
last channel of a group is always kept: a plan cannot remove a whole group). No weights change;
no fine-tuning.

Plan. With ``progressive`` on, ``ScoreResult.proposal`` is the procedure's own answer to *how
much*: per group, its width minus its accepted channels. ``search: cswap``
(:mod:`search.cswap`) prunes exactly that, with no fine-tuning; the other searches ignore it
and use the ranking below.

Scores. The procedure becomes a ranking: accepted channels get the lowest scores, in acceptance
order (first accepted = lowest), and all other channels score their ``xi``, above every accepted
one. Keeping the top-k channels of a group at any ratio therefore prunes a prefix of the
procedure's order within that group. With ``progressive=False`` the held-out check is skipped,
all samples are used for scoring, and the candidates (up to ``max_fraction``) take the lowest
scores in candidate order, unverified.

Cost: one clean pass over the calibration samples, one intervention per channel on ``samples``
scoring samples, plus one held-out pass per chunk and two more per undone chunk. The batched
engine of :mod:`stages.score._interventions` runs the part of a pass above the intervened layer
once for all the replicas of a pass (up to 512 rows), on an inference copy with BatchNorms folded
into their convs. The
paper's cost is one forward over the scoring set per structure; ``samples`` (ours, not the
paper's) caps it. ``ScoreResult.passes["forward"]`` counts rows (replicas x samples) in units of
``ctx.batch_size``: an upper bound, since the shared prefix is counted for every replica.

The held-out check zeroes channels without re-estimating BatchNorm statistics, so it is stricter
than the pipeline's one-shot prune (which re-estimates them).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import torch

from core.errors import ConfigError, StageError
from stages.score._interventions import (
    ReplicaRunner,
    channel_means,
    channel_sites,
    intervened_forward,
    max_rows,
    stack_batches,
    working_copy,
)
from stages.score.base import Needs, ScoreContext, ScoreResult, register

SOURCE = "C-SWAP, Bauvin, Baret, Ahmad, arXiv 2510.18636 [RECON] (methods.md §1)"
PARAMS = {
    "alpha": 0.05,  # t-test level
    "intervention": "zero",  # zero | mean
    "chunk": 0.05,  # fraction of all channels per progressive chunk
    "tolerance": 1.0,  # max drop, in points of held-out top-1 agreement, vs the unpruned model
    "max_fraction": 0.9,  # how far the progressive procedure goes (fraction of all channels)
    "progressive": True,
    "samples": 16,  # scoring samples per intervention (0 = the whole scoring half); ours, for cost
    "patience": 3,  # stop after this many chunks in a row with nothing accepted (0 = never); ours, for cost
}
MAX_ROWS = 512  # rows per forward pass (fewer where activations are large: interventions.max_rows)
ZERO_EFFECT = 1e-6  # |d| below this (float32 noise on a probability) counts as exactly no effect


def _options(o: Mapping[str, object]) -> dict:
    o = dict(o)
    checks = [
        (0 < o["alpha"] < 1, "alpha must be in (0, 1)", "e.g. 0.05"),
        (o["intervention"] in ("zero", "mean"), f"intervention must be 'zero' or 'mean', got {o['intervention']!r}",
         "zero removes the channel; mean replaces it by its calibration mean"),
        (0 < o["chunk"] <= 1, "chunk must be in (0, 1]", "a fraction of all channels, e.g. 0.05"),
        (o["tolerance"] >= 0, "tolerance must be >= 0", "points of held-out top-1, e.g. 1.0"),
        (0 <= o["max_fraction"] <= 1, "max_fraction must be in [0, 1]", "e.g. 0.9"),
        (o["samples"] >= 0, "samples must be >= 0", "0 uses the whole scoring half"),
        (o["patience"] >= 0, "patience must be >= 0", "0 runs through all candidates"),
    ]
    for ok, msg, hint in checks:
        if not ok:
            raise ConfigError(f"cswap: {msg}", hint=hint)
    return o


def ttest_classes(d: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two-sided one-sample t-test of each row of ``d`` ``[channels, samples]`` against 0.

    Returns ``(xi, p, cls)`` with ``cls`` 1 = critical, -1 = detrimental, 0 = neutral. A row with
    zero variance is significant iff its mean is not 0; with fewer than 2 samples nothing is.
    """
    from scipy import stats

    d = d.to(torch.float64)
    m = d.shape[1]
    xi = d.mean(1)
    if m < 2:
        p = torch.ones_like(xi)
    else:
        sd = d.std(1, unbiased=True)
        t = xi / (sd / math.sqrt(m))
        p = torch.from_numpy(2 * stats.t.sf(t.abs().numpy(), m - 1))
        zero_var = sd == 0
        p = torch.where(zero_var, (xi == 0).to(torch.float64), p)
        p = torch.nan_to_num(p, nan=1.0)
    sig = p <= alpha
    cls = torch.where(sig & (xi > 0), 1, torch.where(sig & (xi < 0), -1, 0))
    return xi, p, cls


def candidate_order(xi: Mapping[str, torch.Tensor], cls: Mapping[str, torch.Tensor]) -> list[tuple[str, int]]:
    """Detrimental channels (most negative xi first), then neutral ones (smallest |xi| first)."""
    det, neu = [], []
    for gi, (gid, x) in enumerate(xi.items()):
        for c in range(len(x)):
            k = int(cls[gid][c])
            if k == -1:
                det.append((float(x[c]), gi, c, gid))
            elif k == 0:
                neu.append((abs(float(x[c])), gi, c, gid))
    return [(gid, c) for *_, c, gid in sorted(det)] + [(gid, c) for *_, c, gid in sorted(neu)]


def progressive(cands: Sequence[tuple[str, int]], widths: Mapping[str, int], evaluate, base: float, *,
                chunk: int, budget: int, tolerance: float, patience: int = 0) -> tuple[list[tuple[str, int]], dict]:
    """Accept candidates chunk by chunk while ``base - evaluate(removed) <= tolerance``.

    Args:
        cands: Candidates in removal order.
        widths: Channels per group (a group keeps at least one).
        evaluate: ``{group: [channels]} -> metric``, the held-out metric with those removed.
        base: The unpruned model's metric.
        chunk: Candidates per chunk.
        budget: Most channels to accept.
        tolerance: Largest allowed drop below ``base``.
        patience: Stop after this many chunks in a row of which nothing was accepted (0: never).

    Returns:
        The accepted channels in acceptance order, and counters for the record.
    """
    removed: dict[str, list[int]] = {g: [] for g in widths}
    accepted: list[tuple[str, int]] = []
    stats = {"evaluations": 0, "undone_chunks": 0, "swapped_in": 0, "kept_by_swap": 0, "kept_last_channel": 0,
             "heldout_final": base, "stopped": "candidates", "trace": []}

    def attempt(members: list[tuple[str, int]]) -> bool:
        trial = {g: list(v) for g, v in removed.items()}
        for g, c in members:
            trial[g].append(c)
        m = float(evaluate(trial))
        stats["evaluations"] += 1
        ok = base - m <= tolerance + 1e-9
        stats["trace"].append({"size": len(members), "metric": round(m, 4), "accepted": ok})
        if ok:
            for g, c in members:
                removed[g].append(c)
            accepted.extend(members)
            stats["heldout_final"] = m
        return ok

    i = fruitless = 0
    while i < len(cands) and len(accepted) < budget:
        if patience and fruitless >= patience:
            stats["stopped"] = "patience"
            break
        take: list[tuple[str, int]] = []
        pending: Counter = Counter()
        while i < len(cands) and len(take) < min(chunk, budget - len(accepted)):
            g, c = cands[i]
            i += 1
            if len(removed[g]) + pending[g] >= widths[g] - 1:
                stats["kept_last_channel"] += 1
                continue
            take.append((g, c))
            pending[g] += 1
        if not take or attempt(take):
            fruitless = 0
            continue
        stats["undone_chunks"] += 1
        fruitless += 1
        if len(take) == 1:
            stats["kept_by_swap"] += 1
            continue
        half = math.ceil(len(take) / 2)
        for sub in (take[:half], take[half:]):
            if attempt(sub):
                stats["swapped_in"] += len(sub)
                fruitless = 0
            else:
                stats["kept_by_swap"] += len(sub)
    if len(accepted) >= budget:
        stats["stopped"] = "max_fraction"
    return accepted, stats


def ranking_scores(xi: Mapping[str, torch.Tensor], order: Sequence[tuple[str, int]]) -> dict[str, torch.Tensor]:
    """``xi`` for every channel, except the channels in ``order``, which score below all of them in
    that order (the first lowest)."""
    scores = {g: x.to(torch.float64).clone() for g, x in xi.items()}
    lo = min((float(x.min()) for x in xi.values() if len(x)), default=0.0) - 1.0
    n = len(order)
    for k, (g, c) in enumerate(order):
        scores[g][c] = lo - (n - k)
    return {g: s.float() for g, s in scores.items()}


@register("cswap", needs=Needs(forward=True, classes=True), granularity="channel", source=SOURCE, params=PARAMS,
          summary="causal effect of zeroing each channel on p_y, t-tested; progressive held-out-verified removal")
@torch.no_grad()
def cswap(ctx: ScoreContext) -> ScoreResult:
    o = _options(ctx.options)
    t0 = time.perf_counter()
    groups = ctx.graph.groups()
    work, prep = working_copy(ctx.model, fold_bn=True)  # BN folded: its sites become Identity outputs
    xs, labels = stack_batches(ctx.calib_batches(), prep)
    sites, maps = channel_sites(ctx.model, groups), ctx.graph.site_index()  # maps: norms after a concatenation
    runner = ReplicaRunner(work)
    rows = max_rows(work, xs[:1], cap=MAX_ROWS)

    n = len(xs)
    n_score = math.ceil(n / 2) if o["progressive"] and n > 1 else n
    means, extra_rows = None, 0
    if o["intervention"] == "mean":  # the scoring half's channel means
        means = channel_means(work, sites, [xs[i:min(i + rows, n_score)] for i in range(0, n_score, rows)])
        extra_rows = n_score

    def forward(x, ivs):
        return intervened_forward(work, x, sites, ivs, o["intervention"], means, max_batch=rows, runner=runner,
                                  maps=maps)

    clean = forward(xs, [{}])[0]
    if clean.dim() != 2 or labels.is_floating_point():
        raise StageError(f"cswap reads the probability of a class, and this model's output has shape "
                         f"{tuple(clean.shape[1:])} per sample, not class logits",
                         hint="use a criterion for any output: wanda, stade, magnitude-l2, sbpf or ld-pruner")
    y = torch.where(labels >= 0, labels, clean.argmax(-1))
    m = n_score if o["samples"] == 0 else min(o["samples"], n_score)
    sx, sy = xs[:m], y[:m]
    p_clean = torch.softmax(clean[:m].double(), -1).gather(-1, sy[:, None])[:, 0]

    xi: dict[str, torch.Tensor] = {}
    cls: dict[str, torch.Tensor] = {}
    for g in groups:
        if not sites[g.id]:  # nothing to intervene on: counted as critical, never a candidate
            xi[g.id], cls[g.id] = torch.zeros(g.width, dtype=torch.float64), torch.ones(g.width, dtype=torch.long)
            continue
        out = forward(sx, [(g.id, torch.tensor([c])) for c in range(g.width)])
        p = torch.softmax(out.double(), -1).gather(-1, sy[None, :, None].expand(g.width, m, 1))[..., 0]
        d = p_clean[None] - p
        d = torch.where(d.abs() < ZERO_EFFECT, torch.zeros_like(d), d)
        xi[g.id], _, cls[g.id] = ttest_classes(d, o["alpha"])

    t_scored = time.perf_counter()
    cands = candidate_order(xi, cls)
    widths = {g.id: g.width for g in groups}
    total = sum(g.width for g in groups if sites[g.id])
    budget = math.floor(o["max_fraction"] * total + 1e-9)
    counts = {k: int(sum(int((c == v).sum()) for c in cls.values())) for k, v in
              (("critical", 1), ("neutral", 0), ("detrimental", -1))}
    meta: dict = {**counts, "candidates": len(cands), "scoring_samples": m, "channels": total}
    if o["progressive"] and n > 1:
        hx, hy = xs[n_score:], y[n_score:]

        def evaluate(removed: Mapping[str, list[int]]) -> float:
            iv = {gid: torch.tensor(sorted(c)) for gid, c in removed.items() if c}
            logits = forward(hx, [iv])[0]
            return 100.0 * float((logits.argmax(-1) == hy).double().mean())

        base = 100.0 * float((clean[n_score:].argmax(-1) == hy).double().mean())  # the unpruned model
        order, stats = progressive(cands, widths, evaluate, base, chunk=max(1, round(o["chunk"] * total)),
                                   budget=budget, tolerance=o["tolerance"], patience=o["patience"])
        meta.update({"accepted": len(order), "heldout_samples": n - n_score, "heldout_base": base, **stats})
        gone = Counter(g for g, _ in order)
        proposal: dict[str, int] | None = {g.id: g.width - gone[g.id] for g in groups}
    else:
        order, proposal = cands[:budget], None
        meta.update({"accepted": 0, "ordered_unverified": len(order)})
    rows_used = runner.rows + extra_rows
    meta["seconds"] = {"scoring": round(t_scored - t0, 2), "progressive": round(time.perf_counter() - t_scored, 2)}
    meta.update({"forward_calls": runner.forwards, "forward_rows": rows_used,
                 "engines": sorted(set(runner.engines.values())),
                 "xi": {g: [round(float(v), 8) for v in x] for g, x in xi.items()}})
    return ScoreResult(ranking_scores(xi, order), passes={"forward": math.ceil(rows_used / max(1, ctx.batch_size))},
                       meta=meta, proposal=proposal)
