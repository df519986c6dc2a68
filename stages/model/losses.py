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

Every form is written without data-dependent Python branches, so ``torch.func.vmap`` can take
per-sample gradients of it (the Hessian criterion does).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("classes", "next-token", "features")


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
    if kind != "classes":
        raise ValueError(f"unknown loss kind {kind!r}; one of {KINDS}")
    y = y.to(out.device).long().reshape(out.shape[:-1])
    target = torch.where(y >= 0, y, out.detach().argmax(-1))
    return F.cross_entropy(out.reshape(-1, out.shape[-1]), target.reshape(-1))
