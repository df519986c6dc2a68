"""Gradient-Flow criterion (Wan et al., ICASSP'25, arXiv 2501.09464; methods.md §5).

The paper's pruning *criterion*: prune first the parameters whose removal **increases** the
gradient norm of the loss (GraSP-style), because those keep the pruned model training fast. The
formulas below are our reconstruction [RECON]: the paper body and code were not available.

Derivation. With g = ∇L(θ) and H = ∇²L(θ), removing parameters moves θ by δ = −θ on them (0
elsewhere). To first order in δ,

    ‖g(θ + δ)‖² ≈ ‖g + Hδ‖² ≈ ‖g‖² + 2 δᵀHg = ‖g‖² − 2 θᵀHg,

so the per-parameter saliency ``S = −θ ⊙ (Hg)`` is half the change of ‖g‖² its removal causes:
S > 0 means removing it makes the gradient norm grow (prune first), S < 0 means removing it
shrinks the gradient flow (keep). A channel's S is the sum over every parameter removed with it
(Torch-Pruning's group structure: producer rows and biases, norm weights, consumer columns,
coupled residual layers), and the criterion returns ``−S_group`` because a criterion's scores
follow "higher = kept".

``Hg`` is a Hessian-vector product by double backward: ``Hg = ∇_θ (g_b · stopgrad(g))`` summed
over batches. The task loss is the run's (:mod:`stages.model.losses`): cross-entropy with the
labels for classifiers (the model's own prediction where a label is < 0), the next-token NLL for
causal LMs, the relative L2 to the unpruned output for embeddings; the paper's diffusion loss has
no labels. g is the gradient of the mean loss
over all calibration batches, so Hg is exact for that set: one gradient pass, then one pass of
backward-with-graph plus double backward per batch (a single pass when there is one batch).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from core.errors import ConfigError
from stages.model.losses import KINDS, task_loss
from stages.score.base import Needs, ScoreContext, ScoreResult, register

LOSSES = ("auto", "ce", *KINDS)  # auto: the run's task loss (ScoreContext.loss); ce: classes


def model_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: str = "classes") -> torch.Tensor:
    """The task loss of kind ``loss`` (:mod:`stages.model.losses`; ``ce`` = classes: cross-entropy, a sample
    whose label is < 0 using the model's own prediction instead)."""
    if (loss not in LOSSES and not loss.startswith("pw:")) or loss == "auto":
        raise ConfigError(f"gradient-flow loss {loss!r} is not supported", hint=f"use one of: {', '.join(LOSSES)}")
    return task_loss("classes" if loss == "ce" else loss, model(x), x, y.to(x.device))


def parameter_saliency(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                       loss: str = "classes") -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """Per-parameter gradient-flow saliency ``S = −θ ⊙ (H g)`` and the passes it took.

    The model is run in eval mode (BatchNorm uses its running statistics) and restored to its
    previous mode; no ``.grad`` is left on it. ``batches`` yields ``(inputs, labels)``.

    Returns:
        ``(S by parameter name, {"forward": n, "backward": n})``; backward passes count the
        double backward of the Hessian-vector product.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    names, params = [n for n, _ in named], [p for _, p in named]
    device = params[0].device if params else torch.device("cpu")
    data = [(x.to(device), y) for x, y in batches]
    if not data:
        raise ConfigError("gradient-flow got no calibration batch", hint="give the criterion some calibration data")
    was_training = model.training
    model.eval()
    fwd = bwd = 0
    try:
        with torch.enable_grad():
            if len(data) == 1:  # one batch: g and Hg from the same graph
                grads = _grads(model_loss(model, *data[0], loss), params, create_graph=True)
                g = [t.detach() for t in grads]
                hg = _grads(_dot(grads, g), params)
                fwd, bwd = 1, 2
            else:
                g = [torch.zeros_like(p) for p in params]
                for x, y in data:  # pass 1: g of the mean loss
                    for acc, t in zip(g, _grads(model_loss(model, x, y, loss), params)):
                        acc.add_(t, alpha=1.0 / len(data))
                hg = [torch.zeros_like(p) for p in params]
                for x, y in data:  # pass 2: Hg = mean over batches of ∇(g_b · stopgrad(g))
                    grads = _grads(model_loss(model, x, y, loss), params, create_graph=True)
                    for acc, t in zip(hg, _grads(_dot(grads, g), params)):
                        acc.add_(t, alpha=1.0 / len(data))
                fwd, bwd = 2 * len(data), 3 * len(data)
    finally:
        model.train(was_training)
    saliency = {n: -(p.detach() * h).float() for n, p, h in zip(names, params, hg)}
    return saliency, {"forward": fwd, "backward": bwd}


def _grads(value: torch.Tensor, params: list[torch.Tensor], create_graph: bool = False) -> list[torch.Tensor]:
    out = torch.autograd.grad(value, params, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(p) if t is None else t for p, t in zip(params, out)]


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))  # type: ignore[return-value]


@register("gradient-flow", needs=Needs(forward=True, labels=True, gradients=True), granularity="channel",
          source="Gradient-Flow pruning, Wan et al., ICASSP'25, arXiv 2501.09464 (methods.md §5); "
                 "score reconstructed [RECON]",
          summary="-(sum over the channel's parameters of -theta*Hg): channels whose removal would raise "
                  "the gradient norm go first (Hg by double backward)",
          params={"batches": 0, "loss": "auto"})
def gradient_flow(ctx: ScoreContext) -> ScoreResult:
    """Options: ``batches`` (calibration batches; 0 = the context's, 4 × 64 images in a run),
    ``loss`` (``auto``: the run's task loss, :mod:`stages.model.losses`; or ``ce``, ``classes``,
    ``next-token``, ``features``)."""
    n = int(ctx.options.get("batches", 0)) or ctx.batches
    if n < 0:
        raise ConfigError(f"gradient-flow batches={n} is negative", hint="use 0 (the default) or a positive count")
    batches = (b for i, b in zip(range(n), ctx.loader()))
    loss = str(ctx.options.get("loss", "auto"))
    saliency, passes = parameter_saliency(ctx.model, batches, ctx.loss if loss == "auto" else loss)
    group = ctx.graph.group_sum(saliency)
    return ScoreResult({gid: -s for gid, s in group.items()}, passes=passes,
                       meta={"sign": "score = -S_group, S = -theta*Hg summed over the channel's parameters; "
                                     "S > 0: removal raises ||g|| (pruned first)"})
