"""Hessian (Optimal Brain Damage) baseline through Torch-Pruning's ``GroupHessianImportance``.

OBD (LeCun et al., NeurIPS'89) scores a weight by ``½ h w²`` with ``h`` the Hessian diagonal.
Torch-Pruning approximates ``h`` by the empirical Fisher diagonal, the mean over samples of the
squared *per-sample* gradient, and sums ``w² h`` over a channel's weights in each layer of the
group (mean over layers, then divided by the group's mean).

Torch-Pruning 1.6.1's own accumulation (``accumulate_grad`` after one ``backward`` per sample)
keys its buffers by parameter but checks membership by name, so every call overwrites them: the
importance it computes is that of the *last* sample only. We compute the per-sample gradients
ourselves (``torch.func.vmap`` over samples, model in eval mode), put their mean square in
``param.grad``, and let Torch-Pruning's importance read it there (its documented fallback when
nothing was accumulated). The result is Torch-Pruning's formula with the mean over all samples.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.model.losses import task_loss
from stages.score.base import Needs, ScoreContext, ScoreResult, register

CHUNK = 16  # samples per vmap call (memory: CHUNK × parameter count floats)


def mean_squared_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                              chunk: int = CHUNK, loss: str = "classes") -> dict[str, torch.Tensor]:
    """``E_i[(∂ L(f(x_i), y_i) / ∂θ)²]`` per parameter name, the model in eval mode, ``L`` the task loss of
    kind ``loss`` (:mod:`stages.model.losses`; cross-entropy for classes).

    A class label < 0 is replaced by the model's own prediction for that sample. Per-sample gradients come
    from ``vmap``; a model with data-dependent control flow (Hugging Face attention-mask checks) gets them
    one sample at a time.
    """
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    buffers = dict(model.named_buffers())
    was_training = model.training
    model.eval()
    try:
        if loss == "classes":
            with torch.no_grad():
                out = model(x)
                y = torch.where(y.long().reshape(out.shape[:-1]) >= 0, y.long().reshape(out.shape[:-1]),
                                out.argmax(-1))

        def sample_loss(p, xi, yi):
            out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
            return task_loss(loss, out, xi.unsqueeze(0), yi.unsqueeze(0))

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0, 0))
        acc = {n: torch.zeros_like(p) for n, p in params.items()}
        for i in range(0, len(x), chunk):
            try:
                batch = per_sample(params, x[i:i + chunk], y[i:i + chunk])
            except RuntimeError as e:  # data-dependent control flow in the model (HF attention masks): one by one
                if "vmap" not in str(e):
                    raise
                batch = {n: torch.stack(g) for n, g in zip(params, zip(*(
                    grad(sample_loss)(params, xi, yi).values() for xi, yi in zip(x[i:i + chunk], y[i:i + chunk]))))}
            for n, gs in batch.items():
                acc[n] += gs.pow(2).sum(0)
    finally:
        model.train(was_training)
    return {n: a / len(x) for n, a in acc.items()}


@register("hessian", needs=Needs(forward=True, labels=True, gradients=True), granularity="channel",
          source="Torch-Pruning baseline: GroupHessianImportance (Optimal Brain Damage, LeCun et al., NeurIPS'89)",
          summary="sum of w^2 * E[g^2] (OBD, empirical-Fisher diagonal from per-sample gradients) over the "
                  "channel's weights",
          params={"samples": 64})
def hessian(ctx: ScoreContext) -> ScoreResult:
    """Option ``samples``: per-sample gradients taken from the calibration batches (64)."""
    want = max(1, int(ctx.options.get("samples", 64)))
    xs, ys, have = [], [], 0
    for x, y in ctx.loader():
        xs.append(x)
        ys.append(y)
        have += len(x)
        if have >= want:
            break
    x, y = torch.cat(xs)[:want], torch.cat(ys)[:want]
    device = next(ctx.model.parameters()).device
    fisher = mean_squared_sample_grads(ctx.model, x.to(device), y.to(device), loss=ctx.loss)
    named = dict(ctx.model.named_parameters())
    try:
        for n, h in fisher.items():
            named[n].grad = h
        scores = ctx.graph.importance("hessian")
    finally:
        ctx.model.zero_grad(set_to_none=True)
    batches = -(-len(x) // ctx.batch_size)  # in calibration-batch units, like the other criteria
    return ScoreResult(scores, passes={"forward": batches, "backward": batches},
                       meta={"samples": len(x), "per_sample_gradients": f"torch.func.vmap, {CHUNK} at a time"})
