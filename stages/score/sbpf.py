"""SBPF: sensitiveness-based layer allocation (Lu, Gong, Zhao, Feng, Li; arXiv 2208.04588).

No public code; the paper's abstract says layers are ranked by the inference accuracy left after
*extra damage* to one layer at a time, and filters are removed from each layer in proportion to
that sensitiveness. The formulas below are a reconstruction ([RECON] in
``shared/research/methods.md`` §9).

Sensitiveness [RECON]. Per prunable group ``g`` (all conv/linear layers that produce its
channels are damaged together, since they are pruned together)::

    s_g = metric(theta) - mean_{d = 1..draws} metric(theta with g damaged, draw d)

``metric`` is top-1 agreement (in %) with the labels (the unpruned model's prediction where a
label is < 0) on the calibration batches; for outputs that are not class logits against class
labels (sentence embeddings, token logits of an LM, whose references are the unpruned outputs) it
is 100 x the mean cosine of the flattened output with the undamaged model's. Damage ``noise``: ``W += N(0, (noise_scale * std(W))^2)``
for each damaged layer's weight; damage ``zero``: the same ``zero_fraction`` of the group's
channels (drawn at random per draw) zeroed in every damaged layer, bias included. Draws use a
generator seeded with ``ctx.seed``. ``s_g`` is floored at ``floor`` (damage can also *raise* the
metric) so that ``1/s_g`` is finite.

Allocation [RECON]. ``w_g = (1/s_g) / mean_g(1/s_g)``: a group's prune ratio is ``R * w_g`` for a
global ratio ``R``, so less sensitive groups lose more (``ScoreResult.allocation``; turned into
keep ratios by :func:`allocated_keep_ratios`, which clips and redistributes).

Within a group the paper does not say which filters go; ``within`` picks Torch-Pruning's group
magnitude (``l1`` or ``l2``, the same scores as ``magnitude-l1`` / ``magnitude-l2``).

Not implemented: the paper's multi-step schedule with fine-tuning between steps (the pipeline
prunes once, then recovers).

The model is never modified: a damaged layer's output is computed from ``W + noise`` by an
override in the replica engine of :mod:`stages.score._interventions`, so all draws of a group run
in one batched pass and the weights are never written. Cost: one calibration pass, plus one
per group with ``draws`` replicas (the part above the damaged layers computed once).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ConfigError
from stages.score._interventions import (
    ReplicaRunner,
    channel_dim,
    max_rows,
    stack_batches,
    working_copy,
)
from stages.score.base import Needs, ScoreContext, ScoreResult, register

SOURCE = "SBPF, Lu et al., arXiv 2208.04588 [RECON] (methods.md §9)"
PARAMS = {
    "damage": "noise",  # noise | zero
    "noise_scale": 1.0,  # Gaussian std = noise_scale * std(W) of each damaged layer
    "zero_fraction": 0.5,  # damage=zero: fraction of the group's channels zeroed per draw
    "draws": 3,
    "within": "l2",  # l1 | l2: magnitude score that ranks channels inside a group
    "floor": 1.0,  # smallest sensitiveness, in points of top-1 (about the metric's noise; bounds 1/s)
}
MAX_ROWS = 512
PRODUCERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)


def _options(o: Mapping[str, object]) -> dict:
    o = dict(o)
    checks = [
        (o["damage"] in ("noise", "zero"), f"damage must be 'noise' or 'zero', got {o['damage']!r}",
         "noise adds Gaussian noise to the weights; zero zeroes a fraction of the filters"),
        (o["noise_scale"] > 0, "noise_scale must be > 0", "e.g. 0.5 (std of the noise / std of the weights)"),
        (0 < o["zero_fraction"] <= 1, "zero_fraction must be in (0, 1]", "e.g. 0.5"),
        (o["draws"] >= 1, "draws must be >= 1", "e.g. 3"),
        (o["within"] in ("l1", "l2"), f"within must be 'l1' or 'l2', got {o['within']!r}",
         "the magnitude norm that ranks channels inside a group"),
        (o["floor"] > 0, "floor must be > 0", "e.g. 0.1 (points of top-1)"),
    ]
    for ok, msg, hint in checks:
        if not ok:
            raise ConfigError(f"sbpf: {msg}", hint=hint)
    return o


def _layer_forward(module: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    if isinstance(module, nn.Linear):
        return F.linear(x, weight, module.bias)
    return module._conv_forward(x, weight, module.bias)


def _damage(o: dict, width: int, layers: Mapping[str, nn.Module], gen: torch.Generator):
    """The override that damages ``layers`` differently in each of ``draws`` replicas."""
    draws = int(o["draws"])
    if o["damage"] == "noise":
        damaged: dict[str, list[torch.Tensor]] = {}
        for name, mod in layers.items():
            w = mod.weight.detach()
            std = float(w.double().std()) if w.numel() > 1 else float(w.abs().double().mean())
            fmt = torch.channels_last if w.dim() == 4 and w.is_contiguous(memory_format=torch.channels_last) \
                else torch.contiguous_format
            damaged[name] = [(w + torch.randn(w.shape, generator=gen, dtype=w.dtype) * (o["noise_scale"] * std))
                             .contiguous(memory_format=fmt) for _ in range(draws)]

        def override(name, module, args, kwargs, replicas, shared):
            x = args[0]
            b = x.shape[0] if shared else x.shape[0] // replicas
            return torch.cat([_layer_forward(module, x if shared else x[j * b:(j + 1) * b], damaged[name][j])
                              for j in range(replicas)])

        return override
    k = max(1, round(o["zero_fraction"] * width))
    idx = [torch.randperm(width, generator=gen)[:k] for _ in range(draws)]

    def override(name, module, args, kwargs, replicas, shared):
        out = module(*args, **kwargs)
        d = channel_dim(module) % out.dim()
        if out.shape[d] != width:  # a producer whose channels do not map 1:1 to the group's: untouched
            return out
        keep = torch.ones(replicas, width, dtype=out.dtype)
        for j in range(replicas):
            keep[j, idx[j]] = 0
        shape = [replicas] + [1] * out.dim()
        shape[d + 1] = width
        rows = out.unsqueeze(0) if shared else out.unflatten(0, (replicas, out.shape[0] // replicas))
        return (rows * keep.view(shape)).flatten(0, 1)

    return override


def _quality(out: torch.Tensor, ref: torch.Tensor, classes: bool) -> torch.Tensor:
    """Per sample (last axis of the result): 100 x top-1 hit against class labels, or, for any other output
    (embeddings, token logits), 100 x the cosine of the flattened output with the undamaged one."""
    if classes:
        return 100.0 * (out.argmax(-1) == ref).double()
    flat = out.flatten(out.dim() - ref.dim() + 1).double()
    return 100.0 * torch.nn.functional.cosine_similarity(flat, ref.flatten(1).double(), dim=-1)


@register("sbpf", needs=Needs(forward=True), granularity="layer", source=SOURCE, params=PARAMS,
          summary="per-group prune weights from the top-1 (other outputs: cosine) lost when the group's layers are "
                  "damaged; magnitude within")
@torch.no_grad()
def sbpf(ctx: ScoreContext) -> ScoreResult:
    o = _options(ctx.options)
    groups = ctx.graph.groups()
    work, prep = working_copy(ctx.model)
    xs, labels = stack_batches(ctx.calib_batches(), prep)
    modules = dict(work.named_modules())
    runner = ReplicaRunner(work)
    rows = max_rows(work, xs[:1], cap=MAX_ROWS)
    draws = int(o["draws"])
    b = max(1, rows // draws)

    clean = torch.cat([runner.run(xs[i:i + rows], 1, (), lambda *a: None) for i in range(0, len(xs), rows)])
    classes = not labels.is_floating_point() and labels.dim() == 1 and clean.dim() == 2
    y = torch.where(labels >= 0, labels, clean.argmax(-1)) if classes else clean
    n = len(xs)
    base = _quality(clean, y, classes).sum().item() / n
    gen = torch.Generator().manual_seed(int(ctx.seed))
    sens: dict[str, float] = {}
    damaged_metric: dict[str, list[float]] = {}
    for g in groups:
        layers = {name: modules[name] for name in g.out_layers if isinstance(modules.get(name), PRODUCERS)}
        if not layers:
            continue
        override = _damage(o, g.width, layers, gen)
        total = torch.zeros(draws, dtype=torch.float64)
        for i in range(0, n, b):
            out = runner.run(xs[i:i + b], draws, layers, override)
            out = out.unflatten(0, (draws, len(xs[i:i + b])))
            total += _quality(out, y[i:i + b], classes).sum(-1)
        metrics = (total / n).tolist()
        damaged_metric[g.id] = [round(v, 4) for v in metrics]
        sens[g.id] = base - sum(metrics) / draws
    floored = {gid: max(s, o["floor"]) for gid, s in sens.items()}
    inv = {gid: 1.0 / s for gid, s in floored.items()}
    mean_inv = sum(inv.values()) / len(inv) if inv else 1.0
    allocation = {g.id: inv[g.id] / mean_inv if g.id in inv else 1.0 for g in groups}
    scores = ctx.graph.importance("magnitude", p=1 if o["within"] == "l1" else 2)
    meta = {"metric_base": base, "sensitiveness": {k: round(v, 4) for k, v in sens.items()},
            "damaged_metric": damaged_metric, "floored": sorted(k for k, s in sens.items() if s < o["floor"]),
            "forward_calls": runner.forwards, "forward_rows": runner.rows,
            "engines": sorted(set(runner.engines.values()))}
    return ScoreResult(scores, allocation=allocation, meta=meta,
                       passes={"forward": math.ceil(runner.rows / max(1, ctx.batch_size))})


def allocated_keep_ratios(allocation: Mapping[str, float], widths: Mapping[str, int], global_ratio: float,
                          max_ratio: float) -> dict[str, float]:
    """Per-group keep ratios from relative prune weights, meeting a global prune ratio.

    Prune ratio ``r_g = global_ratio * w_g`` (a group missing from ``allocation`` has ``w_g = 1``,
    a negative weight counts as 0), clipped to ``[0, max_ratio]``. Clipped groups stay at
    ``max_ratio`` and the others are scaled up together (repeatedly, as more clip) until the
    channel-weighted mean prune ratio ``sum(width * r) / sum(width)`` equals ``global_ratio``.
    That is feasible when ``global_ratio <= max_ratio`` and some group with a positive weight
    is left to take up the rest; otherwise the result is the closest the clip allows.

    Args:
        allocation: group id -> relative prune weight ``w_g`` (SBPF's ``ScoreResult.allocation``).
        widths: group id -> channels; defines the groups.
        global_ratio: Target fraction of all channels removed, in ``[0, 1)``.
        max_ratio: Largest prune ratio of one group, in ``[0, 1]``.

    Returns:
        group id -> keep ratio ``1 - r_g``.
    """
    if not 0 <= global_ratio < 1:
        raise ConfigError(f"global prune ratio must be in [0, 1), got {global_ratio}", hint="e.g. 0.5")
    if not 0 <= max_ratio <= 1:
        raise ConfigError(f"max_ratio must be in [0, 1], got {max_ratio}", hint="e.g. 0.9")
    w = {g: max(0.0, float(allocation.get(g, 1.0))) for g in widths}
    total = sum(widths.values())
    target = global_ratio * total
    ratio = {g: 0.0 for g in widths}
    free = {g for g in widths if w[g] > 0 and widths[g] > 0}
    clipped: set[str] = set()
    while free:
        left = target - sum(widths[g] * max_ratio for g in clipped)
        mass = sum(widths[g] * w[g] for g in free)
        scale = max(0.0, left) / mass
        over = {g for g in free if scale * w[g] > max_ratio}
        if not over:
            for g in free:
                ratio[g] = scale * w[g]
            break
        clipped |= over
        free -= over
    for g in clipped:
        ratio[g] = max_ratio
    return {g: 1.0 - ratio[g] for g in widths}
