"""LD-Pruner on what the paper scores: the **final sampled latents** of a diffusion model after ``K`` sampler
steps, with one structure removed during every step (:mod:`stages.score.ld_pruner` has the score itself).

For a noise predictor (a model with a ``diffusion`` schedule, :mod:`stages.model.diffusion`), ``m``
fixed-seed start noises are sampled ``K`` DDIM steps by the unpruned model (the reference ``Z``) and,
for every structure ``o``, by the model with ``o`` removed in every call (``Z_o``); the score is
``||mean(Z) - mean(Z_o)|| + ||std(Z) - std(Z_o)||`` over the ``m`` samples.

Removal, as in the single-pass variant but over all ``K`` calls:

- a **channel** is zeroed at every site of its group (:meth:`stages.model.graph.PruneGraph.channel_sites`:
  the group's norm outputs and the producers that do not feed one of them), which is what removing it does
  (attention channels are scored one by one like any other; the plan removes whole heads by their summed
  scores);
- a **residual block** is replaced by identity (its output rows are its input rows).

Interventions are batched like the single-pass variant: the ``m`` samples are replicated once per structure
and every replica carries its own removal through the whole sampling loop (each replica's latent evolves
with its own model), ``rows`` rows a call. Cost: ``K x (1 + structures) x m`` sample evaluations.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from stages.model.diffusion import ddim_sample, start_noise
from stages.score._interventions import channel_dim, max_rows
from stages.score._moments import Moments, ld_score

SEED = 4321  # the start noise of the scored samples


def _zero_rows(channels: Sequence[tuple[int, int]], m: int, dim: int) -> Callable:
    """Forward hook: in replica ``j``'s rows (``j*m : (j+1)*m``) set output channel ``c`` to 0, for each ``(j, c)``."""

    def hook(mod, args, out):
        out = out.clone()
        for j, c in channels:
            rows = out[j * m:(j + 1) * m]
            rows.select(dim if dim >= 0 else rows.dim() + dim, c).zero_()
        return out

    return hook


def _identity_rows(replicas: Sequence[int], m: int) -> Callable:
    def hook(mod, args, out):
        out = out.clone()
        for j in replicas:
            out[j * m:(j + 1) * m] = args[0][j * m:(j + 1) * m]
        return out

    return hook


def _sampled(model: nn.Module, noise: torch.Tensor, steps: int, hooks: Mapping[str, Callable]) -> torch.Tensor:
    """Final latents of ``noise`` (all rows at once) with ``hooks`` (module name -> forward hook) on."""
    modules = dict(model.named_modules())
    handles = [modules[name].register_forward_hook(h) for name, h in hooks.items()]
    try:
        return ddim_sample(model, noise, steps, model.diffusion, batch=len(noise))
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def score_sampled(model: nn.Module, structures: Sequence[tuple[str, object]], sites: Mapping[str, Sequence[str]],
                  samples: int, steps: int, rows: int | None = None,
                  maps: Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]] | None = None
                  ) -> tuple[list[float], dict[str, int]]:
    """LD-Pruner scores of ``structures`` on ``K = steps`` sampled latents of ``samples`` start noises.

    Args:
        model: A noise predictor with a ``diffusion`` schedule (not modified; hooks are removed).
        structures: ``("channel", (group id, c))`` or ``("block", name)`` items.
        sites: Per group id, the modules whose outputs carry its channels.
        maps: Per group id and site, ``(index, channel)`` where the site's output channels are not the group's
            in order (:meth:`stages.model.graph.PruneGraph.site_index`: a norm after a concatenation).
        rows: Rows a model call (default: what keeps the largest activation under 128 MB).

    Returns:
        (a score per structure, {"sample_calls": model calls, "sample_rows": rows evaluated}).
    """
    model.eval()
    shape = model.io.shape_of(model.io.inputs[0])
    noise = start_noise(samples, shape, SEED)
    modules = dict(model.named_modules())
    rows = rows or max_rows(model, model.io.pack({n: t for n, t in zip(model.io.names, model.io.example(1))}))
    per_call = max(1, rows // samples)
    ref = _sampled(model, noise, steps, {})
    ref_moments, alt = Moments(), Moments(len(structures))
    ref_moments.add(ref.unsqueeze(0))
    calls = steps
    for start in range(0, len(structures), per_call):
        chunk = structures[start:start + per_call]
        zero: dict[str, list[tuple[int, int]]] = {}
        blocks: dict[str, list[int]] = {}
        for j, (kind, what) in enumerate(chunk):
            if kind == "block":
                blocks.setdefault(str(what), []).append(j)
            else:
                gid, c = what
                for site in sites.get(gid, ()):
                    where = (maps or {}).get(gid, {}).get(site)
                    at = [int(c)] if where is None else [int(i) for i in where[0][where[1] == int(c)]]
                    zero.setdefault(site, []).extend((j, i) for i in at)
        hooks = {name: _zero_rows(ch, samples, channel_dim(modules[name])) for name, ch in zero.items()}
        for name, reps in blocks.items():
            if name in hooks:
                raise ValueError(f"block {name} is also a channel site")
            hooks[name] = _identity_rows(reps, samples)
        z = _sampled(model, noise.repeat(len(chunk), *([1] * (noise.dim() - 1))), steps, hooks)
        alt.add(z.reshape(len(chunk), samples, *shape), start)
        calls += steps
    scores = ld_score(*ref_moments.mean_std(), *alt.mean_std())
    return [float(v) for v in scores], {"sample_calls": calls, "sample_rows": steps * samples * (1 + len(structures))}
