"""LD-Pruner: label-free, output-space structure importance (Castells, Song, Kim, Choi; Nota AI;
CVPRW 2024, arXiv 2404.11936). No code was published; this is our reconstruction [RECON].

For a fixed set of calibration samples, let ``Z`` stack the model's latent (its output, or the
output of a named module) and ``Z_o`` the same with structure ``o`` removed, one at a time:

    score(o) = ||mean(Z) - mean(Z_o)||_2 + ||std(Z) - std(Z_o)||_2

with mean and std element-wise over the samples (the std is the population std, ``1/n``), and the
norms over all latent elements. Higher = the latent distribution moves more = more important.
The paper scores U-Net operators of a diffusion model on its final denoised latents; here:

- **channels** (granularity ``channel``): every channel of every prunable group, removed by
  ``intervention``: ``zero`` sets the channel to 0 wherever the group's channel appears (what
  removing it does to the consumers), ``mean`` to its calibration mean (removal with the
  constant part compensated, like STADE's bias update);
- **blocks** (``ScoreResult.blocks``, when ``blocks`` is true): every removable residual block
  (:func:`stages.model.blocks.removable_blocks`) replaced by identity. Depth pruning drops the
  lowest first.

Options: ``latent`` (``output`` or a module name), ``blocks`` (also score blocks, default true),
``intervention`` (``zero`` | ``mean``, channels only: a block is always replaced by identity) and
``samples`` (the paper's *m*, default 16: the first calibration samples; 64 took 516 s on the default
model on a loaded 2-vCPU VM; its block order was the same at 64 and 256 samples).

Cost: every structure is one forward pass over the *m* samples, plus one reference pass, i.e.
``(1 + structures) x batches`` batch forwards (``passes["forward"]``), no backward, no labels:
O(structures x m) like the paper's O(n m k). Interventions are evaluated many at a time: the
batch is replicated once per intervention and each replica gets its own structure removed, in one
call (eval mode, so replicas are independent); for channels, :mod:`stages.score._interventions`
computes everything upstream of the intervened sites once. ``meta["forward_calls"]`` counts the
model calls actually made.

The latent must lie downstream of what is scored: a structure after the latent module does not
change it and scores 0. A named latent inside a removable block is refused (the block's removal
would not be seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from core.errors import ConfigError, did_you_mean
from stages.model.blocks import removable_blocks
from stages.model.contract import ContractModel
from stages.score._moments import Moments, ld_score
from stages.score.base import Needs, ScoreContext, ScoreResult, register

SOURCE = "LD-Pruner, Castells et al., arXiv 2404.11936 / CVPRW'24 (methods.md §7) [RECON]"
LATENT = "output"
INTERVENTIONS = ("zero", "mean")
SAMPLED_STEPS = 10  # K of the sampled-latent variant on a diffusion model (DDIM steps)
SAMPLES = 16  # m, the calibration samples every structure is scored on; cost is O(structures x m)


class Latent:
    """Reads ``Z`` from a forward pass: the model output, or the output of module ``name``."""

    def __init__(self, model: nn.Module, name: str = LATENT) -> None:
        self.model, self.name = model, name
        modules = dict(model.named_modules())
        if name != LATENT and name not in modules:
            raise ConfigError(f"ld-pruner latent {name!r} is not a module of this model.{did_you_mean(name, modules)}",
                              hint="use 'output' or a name from model.named_modules()")
        self.module = modules.get(name) if name != LATENT else None
        # token models: Z is averaged over the sequence positions (per-element moments of [L, vocab]
        # logits for every removed channel would need gigabytes, and positions are exchangeable)
        self.positions = isinstance(model, ContractModel) and model.io.integer

    def _reduce(self, z: torch.Tensor, lead: int) -> torch.Tensor:
        return z.mean(dim=lead) if self.positions and z.dim() > lead + 1 else z

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``Z`` for the batch ``x`` (one forward pass)."""
        if self.module is None:
            return self._reduce(self._tensor(self.model(x)), 1)
        return self._reduce(self._captured(lambda: self.model(x), x.shape[0]), 1)

    def during(self, run: Callable[[], torch.Tensor], replicas: int, b: int) -> torch.Tensor:
        """``[replicas, b, *latent]`` while ``run()`` computes ``replicas`` stacked copies of a batch.

        For the output, what ``run`` returns (``[replicas, b, *out]``); for a module, its output
        captured in that one forward pass (``replicas * b`` rows).
        """
        if self.module is None:
            return self._reduce(self._tensor(run()), 2)
        return self._reduce(self._captured(run, replicas * b).unflatten(0, (replicas, b)), 2)

    def _captured(self, run: Callable[[], object], rows: int) -> torch.Tensor:
        """The latent module's output during ``run()``; it must run once, on ``rows`` rows."""
        out: list[torch.Tensor] = []
        h = self.module.register_forward_hook(lambda m, i, o: out.append(self._tensor(o)))
        try:
            run()
        finally:
            h.remove()
        if len(out) != 1 or out[0].shape[0] != rows:
            raise ConfigError(f"ld-pruner latent {self.name!r} must run once per forward, on the whole batch "
                              f"(ran {len(out)} times)", hint="choose a module that runs exactly once, or 'output'")
        return out[0]

    @staticmethod
    def _tensor(o) -> torch.Tensor:
        if isinstance(o, torch.Tensor):
            return o
        if isinstance(o, (tuple, list)) and o and isinstance(o[0], torch.Tensor):
            return o[0]
        if isinstance(o, dict) and o and isinstance(next(iter(o.values())), torch.Tensor):
            return next(iter(o.values()))
        raise ConfigError(f"ld-pruner cannot read a tensor latent from a {type(o).__name__}",
                          hint="name a module whose output is a tensor with the `latent` option")


def _chunks(n: int, per_call: int) -> Iterable[range]:
    for s in range(0, n, per_call):
        yield range(s, min(n, s + per_call))


@torch.no_grad()
def score_blocks(model: nn.Module, batches: Sequence[torch.Tensor], blocks: Sequence[str] | None = None,
                 latent: str = LATENT, max_batch: int | None = None) -> tuple[dict[str, float], dict[str, int]]:
    """LD-Pruner importance of each removable block (replaced by identity), one at a time.

    Args:
        model: The model (not modified: forward hooks only, removed afterwards).
        batches: Calibration inputs, the same for every block.
        blocks: Block names; default :func:`~stages.model.blocks.removable_blocks` on ``batches[0]``.
        latent: ``"output"`` or the name of the module whose output is ``Z``.
        max_batch: Rows (replicas x samples) per model call; default: what keeps the largest
            activation under 128 MB (:func:`stages.score._interventions.max_rows`).

    Returns:
        (block name -> score, {"forward": batch-equivalent forwards, "calls": model calls}).
    """
    model.eval()
    if blocks is None:
        blocks = removable_blocks(model, batches[0][:2])
    blocks = list(blocks)
    z_of = Latent(model, latent)
    if z_of.module is not None:
        inside = [b for b in blocks if latent == b or latent.startswith(b + ".")]
        if inside:
            raise ConfigError(f"ld-pruner latent {latent!r} lies inside removable block {inside[0]!r}",
                              hint="choose a latent after the blocks (e.g. the pooling layer) or 'output'")
    if not blocks:
        return {}, {"forward": 0, "calls": 0}
    from stages.score._interventions import max_rows

    max_batch = max_batch or max_rows(model, batches[0])
    modules = dict(model.named_modules())
    ref, alt = Moments(), Moments(len(blocks))
    calls = 0
    for x in batches:
        b = x.shape[0]
        ref.add(z_of(x).unsqueeze(0))
        calls += 1
        for chunk in _chunks(len(blocks), max(1, max_batch // b)):
            hooks = [modules[blocks[j]].register_forward_hook(_identity_rows(k * b, (k + 1) * b))
                     for k, j in enumerate(chunk)]
            try:
                z = z_of(x.repeat(len(chunk), *([1] * (x.dim() - 1))))
            finally:
                for h in hooks:
                    h.remove()
            calls += 1
            alt.add(z.reshape(len(chunk), b, *z.shape[1:]), chunk.start)
    m0, s0 = ref.mean_std()
    m, s = alt.mean_std()
    scores = ld_score(m0, s0, m, s)
    return ({name: float(scores[j]) for j, name in enumerate(blocks)},
            {"forward": len(batches) * (1 + len(blocks)), "calls": calls})


def _identity_rows(lo: int, hi: int) -> Callable:
    """Forward hook: rows ``lo:hi`` of the block's output become its input (block = identity there)."""

    def hook(mod, args, out):
        out = out.clone()
        out[lo:hi] = args[0][lo:hi]
        return out

    return hook


@torch.no_grad()
def score_channels(model: nn.Module, groups, batches: Sequence[torch.Tensor], latent: str = LATENT,
                   intervention: str = "zero", max_batch: int | None = None,
                   maps: dict | None = None) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """LD-Pruner importance of every channel of every group, one channel removed at a time.

    Where and how a channel is removed is :mod:`stages.score._interventions`' (its sites are the
    group's BN outputs, else its conv/linear outputs). With the model output as the latent its
    ``fx`` engine computes everything upstream of an intervention once for all replicas; a
    module latent is read by a forward hook, which needs the ``hooks`` engine.

    Returns:
        (group id -> per-channel scores, {"forward": batch-equivalent forwards, "calls": model calls}).
    """
    from stages.score._interventions import (
        ReplicaRunner,
        channel_means,
        channel_sites,
        intervened_forward,
        max_rows,
    )

    model.eval()
    z_of = Latent(model, latent)
    sites = channel_sites(model, groups)
    at_site = [g for g, names in sites.items() if latent in names]
    if at_site:
        raise ConfigError(f"ld-pruner latent {latent!r} is where channels of group {at_site[0]!r} are removed",
                          hint="choose a module after it (e.g. the next activation or the pooling layer) or 'output'")
    todo = [(g.id, c) for g in groups for c in range(g.width) if sites.get(g.id)]
    if not todo:
        return {g.id: torch.zeros(g.width) for g in groups}, {"forward": 0, "calls": 0}
    means = channel_means(model, sites, batches) if intervention == "mean" else None
    runner = ReplicaRunner(model, engine="auto" if z_of.module is None else "hooks")
    max_batch = max_batch or max_rows(model, batches[0])
    ref, alt = Moments(), Moments(len(todo))
    calls = 0
    for x in batches:
        b = x.shape[0]
        ref.add(z_of(x).unsqueeze(0))
        calls += 1
        for chunk in _chunks(len(todo), max(1, max_batch // b)):
            ivs = [(todo[j][0], torch.tensor([todo[j][1]])) for j in chunk]

            def run(ivs=ivs, x=x, b=b):
                return intervened_forward(model, x, sites, ivs, mode=intervention, means=means,
                                          max_batch=len(ivs) * b, runner=runner, maps=maps)

            alt.add(z_of.during(run, len(ivs), b), chunk.start)
    calls += runner.forwards
    flat = ld_score(*ref.mean_std(), *alt.mean_std())
    pos = {key: j for j, key in enumerate(todo)}
    out = {g.id: torch.tensor([float(flat[pos[(g.id, c)]]) if (g.id, c) in pos else 0.0 for c in range(g.width)])
           for g in groups}
    return out, {"forward": len(batches) * (1 + len(todo)), "calls": calls}


def calib_samples(batches: Iterable[torch.Tensor], samples: int) -> list[torch.Tensor]:
    """The first ``samples`` calibration inputs, in their batches (the last one cut)."""
    if samples < 1:
        raise ConfigError(f"ld-pruner samples must be >= 1, got {samples}", hint=f"default is {SAMPLES}")
    out, n = [], 0
    for x in batches:
        if n >= samples:
            break
        out.append(x[: samples - n])
        n += len(out[-1])
    if not out:
        raise ConfigError("ld-pruner needs calibration samples and got none", hint="check the data split")
    return out


def sampler_steps(model: nn.Module, option: object) -> int:
    """The ``steps`` option: ``auto`` is :data:`SAMPLED_STEPS` for a diffusion model (a ``diffusion`` schedule,
    :mod:`stages.model.diffusion`) and 0 (one forward pass on the calibration inputs) otherwise."""
    diffusion = getattr(model, "diffusion", None) is not None
    if option in (None, "auto"):
        return SAMPLED_STEPS if diffusion else 0
    try:
        steps = int(option)
    except (TypeError, ValueError):
        raise ConfigError(f"ld-pruner steps={option!r} is not an integer", hint="use auto, 0 or a step count") from None
    if steps < 0 or (steps and not diffusion):
        raise ConfigError(f"ld-pruner steps={steps} needs a diffusion model (sampled latents)" if steps > 0 else
                          f"ld-pruner steps={steps} is negative",
                          hint="use steps=0 (one forward pass on the calibration inputs) for this model")
    return steps


def _sampled_scores(ctx: ScoreContext, steps: int, samples: int, with_blocks: bool) -> ScoreResult:
    """The K-step variant (:mod:`stages.score.ld_sampled`): channels and blocks on the final sampled latents."""
    from stages.score.ld_sampled import score_sampled

    groups = ctx.graph.groups()
    blocks = removable_blocks(ctx.model, ctx.graph.example_input) if with_blocks else []
    structures = [("block", b) for b in blocks] + [("channel", (g.id, c)) for g in groups for c in range(g.width)]
    t0 = time.perf_counter()
    flat, calls = score_sampled(ctx.model, structures, ctx.graph.channel_sites(), samples, steps,
                                maps=ctx.graph.site_index())
    at = len(blocks)
    scores = {}
    for g in groups:
        scores[g.id] = torch.tensor(flat[at:at + g.width])
        at += g.width
    return ScoreResult(scores, blocks=dict(zip(blocks, flat[:len(blocks)])) if with_blocks else None,
                       passes={"forward": calls["sample_rows"] // max(samples, 1)},
                       meta={"forward_calls": calls["sample_calls"], "samples": samples, "sampler_steps": steps,
                             "sampled_s": round(time.perf_counter() - t0, 3)})


@register("ld-pruner", needs=Needs(forward=True), granularity="channel", source=SOURCE,
          summary="||d mean|| + ||d std|| of the output (or a latent; a diffusion model's sampled latents) "
                  "when one channel / residual block is removed; label-free",
          params={"latent": LATENT, "blocks": True, "intervention": "zero", "samples": SAMPLES, "steps": "auto"})
@torch.no_grad()
def ld_pruner(ctx: ScoreContext) -> ScoreResult:
    steps = sampler_steps(ctx.model, ctx.options.get("steps", "auto"))
    if steps:
        samples = int(ctx.options.get("samples", SAMPLES))
        if samples < 2:
            raise ConfigError(f"ld-pruner samples={samples}: a std needs at least 2 samples", hint=f"default {SAMPLES}")
        return _sampled_scores(ctx, steps, samples, bool(ctx.options.get("blocks", True)))
    latent = str(ctx.options.get("latent", LATENT))
    mode = str(ctx.options.get("intervention", "zero"))
    if mode not in INTERVENTIONS:
        raise ConfigError(f"ld-pruner intervention {mode!r} is not one of {', '.join(INTERVENTIONS)}",
                          hint="--criterion-option intervention=zero (or mean)")
    batches = calib_samples((x for x, _ in ctx.calib_batches()), int(ctx.options.get("samples", SAMPLES)))
    t0 = time.perf_counter()
    blocks = None
    bpass = {"forward": 0, "calls": 0}
    if ctx.options.get("blocks", True):
        blocks, bpass = score_blocks(ctx.model, batches, removable_blocks(ctx.model, ctx.graph.example_input),
                                     latent)
    t1 = time.perf_counter()
    scores, cpass = score_channels(ctx.model, ctx.graph.groups(), batches, latent, mode, maps=ctx.graph.site_index())
    t2 = time.perf_counter()
    return ScoreResult(scores, blocks=blocks, passes={"forward": bpass["forward"] + cpass["forward"]},
                       meta={"forward_calls": bpass["calls"] + cpass["calls"], "samples": sum(len(x) for x in batches),
                             "blocks_s": round(t1 - t0, 3), "channels_s": round(t2 - t1, 3)})
