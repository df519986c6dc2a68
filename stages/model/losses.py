"""The task loss that gradient-based criteria differentiate (Taylor, Hessian, gradient flow), by output kind.

A run's metric says what its model's output is (``stages.evaluate``: ``Evaluator.loss``), and the
calibration labels hold what that metric compares against (:func:`stages.load.data.with_model_labels`):

- ``classes``: class logits ``[N, C]`` (or per position ``[N, L, C]``) against class indices; a label
  below 0 is replaced by the model's own prediction. Cross-entropy (top1, agreement).
- ``next-token``: a causal LM's logits ``[N, L, V]`` on the packed token batch ``x`` (``x[:, 0]`` ids,
  ``x[:, 1]`` attention mask): the next-token negative log-likelihood over unmasked pairs, the LM's own
  training loss (perplexity). The labels (the unpruned model's NLL) are not needed.
- ``features``: any output against the unpruned model's output: the relative squared error
  ``||out - y||^2 / ||y||^2`` (cosine, output-error: embeddings).
- ``pixels``: segmentation logits ``[N, C, H, W]`` against a class map ``[N, H, W]`` (the unpruned model's,
  seg-agreement): per-pixel cross-entropy.
- ``detection`` (det-agreement): none yet. The labels are the unpruned model's boxes after NMS, which no
  differentiable loss here reads; gradient criteria are refused up front for such runs (pipeline.preflight).
- ``pw:A:G`` (``recovery.loss: pw`` on a ``classes`` model): the performance-weighted cross-entropy of
  Meyer & Wong (:func:`pw_cross_entropy`) with the model's own detached output as the unpruned
  reference, as the paper's Taylor scores use it: at the unpruned model a sample it classifies
  right has its own softmax as target (zero gradient), so the score comes from the samples it gets
  wrong, each weighted ``A + (1 - A) (1 - p)^G``.

Every form is written without data-dependent Python branches, so ``torch.func.vmap`` can take
per-sample gradients of it (the Hessian criterion does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("classes", "next-token", "features", "pw", "detection", "pixels")


def pw_kind(min_weight: float = 0.75, gamma: float = 5.0) -> str:
    """The loss kind string of the PW loss with its parameters (``pw:A:G``)."""
    return f"pw:{min_weight:g}:{gamma:g}"


def pw_weights(teacher_logits: torch.Tensor, y: torch.Tensor, min_weight: float = 0.75,
               gamma: float = 5.0) -> torch.Tensor:
    """``A + (1 - A) * (1 - p)^G`` per sample, ``p`` the teacher's softmax probability of the label ``y``."""
    soft = F.softmax(teacher_logits.detach(), dim=-1)
    onehot = (torch.arange(soft.shape[-1], device=soft.device) == y.long().reshape(-1, 1)).to(soft.dtype)
    return min_weight + (1 - min_weight) * (1 - (soft * onehot).sum(-1)).pow(gamma)


def pw_cross_entropy(logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, min_weight: float = 0.75,
                     gamma: float = 5.0) -> torch.Tensor:
    """``mean_i w_i * CE(logits_i, t_i)``: ``w_i = A + (1 - A) (1 - p_i)^G`` with ``p_i`` the teacher's
    probability of the label ``y_i``; ``t_i`` the teacher's softmax where its argmax is ``y_i``, else the
    one-hot label (methods.md §8, from the paper's code). Class logits ``[N, C]``; written without
    data-dependent branches (vmap)."""
    soft = F.softmax(teacher_logits.detach(), dim=-1)
    yy = y.long().reshape(-1, 1)
    onehot = (torch.arange(logits.shape[-1], device=logits.device) == yy).to(logits.dtype)
    target = torch.where(soft.argmax(-1, keepdim=True) == yy, soft, onehot)
    weight = pw_weights(teacher_logits, y, min_weight, gamma)
    return (weight * -(target * F.log_softmax(logits, dim=-1)).sum(-1)).mean()


def task_loss(kind: str, out: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The mean loss of ``out`` (the model's output on ``x``) for labels ``y``; see the module doc."""
    if kind == "next-token":
        ids = x[:, 0].long()
        mask = x[:, 1].to(out.dtype) if x.shape[1] > 1 else torch.ones_like(ids, dtype=out.dtype)
        logp = F.log_softmax(out[:, :-1], dim=-1)
        nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
        pairs = mask[:, 1:] * mask[:, :-1]
        return (nll * pairs).sum() / pairs.sum().clamp_min(1.0)
    if kind == "features":
        y = y.to(out.dtype).reshape(out.shape)
        return (out - y).pow(2).sum() / y.pow(2).sum().clamp_min(1e-12)
    if kind == "pw" or kind.startswith("pw:"):
        a, g = (float(v) for v in (kind.split(":")[1:] or ["0.75", "5"]))
        logits = out.reshape(-1, out.shape[-1])
        return pw_cross_entropy(logits, logits, y.to(out.device).reshape(-1), a, g)
    if kind == "pixels":
        return F.cross_entropy(out, y.to(out.device).long().reshape(out.shape[:1] + out.shape[2:]))
    if kind == "detection":
        raise ValueError("no differentiable task loss for detection outputs; use a criterion without gradients")
    if kind != "classes":
        raise ValueError(f"unknown loss kind {kind!r}; one of {KINDS}")
    y = y.to(out.device).long().reshape(out.shape[:-1])
    target = torch.where(y >= 0, y, out.detach().argmax(-1))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
