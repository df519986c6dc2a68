"""Depth pruning: choose the residual blocks to replace by identity (``prune.depth_blocks``).

Which blocks are removable, and dropping them, is :mod:`stages.model.blocks`; the blocks are
scored by LD-Pruner's block score (:func:`stages.score.ld_pruner.score_blocks`) and the lowest
``n`` go, ties broken by position.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.utils.data import Dataset

from core.errors import ConfigError
from stages.model.blocks import removable_blocks
from stages.model.calib import calib_inputs
from stages.score.ld_pruner import LATENT, SAMPLES, calib_samples, score_blocks


def choose_blocks(model: nn.Module, example_input: torch.Tensor, calib: Dataset, n: int,
                  latent: str = LATENT, samples: int = SAMPLES) -> dict:
    """Score the removable blocks of ``model`` (not modified) and pick the ``n`` lowest.

    Returns:
        ``dropped`` (in model order), ``block_scores``, ``latent``, ``passes`` and ``seconds``.

    Raises:
        ConfigError: ``n`` exceeds the removable blocks (the message lists them).
    """
    model = copy.deepcopy(model).eval()
    names = removable_blocks(model, example_input)
    if n > len(names):
        raise ConfigError(f"prune.depth_blocks = {n} but the model has {len(names)} removable residual blocks"
                          + (f" ({', '.join(names)})" if names else ""),
                          hint=f"set prune.depth_blocks to at most {len(names)}" if names else
                          "set prune.depth_blocks: 0 (depth pruning needs residual blocks with identity shortcuts)")
    batches = calib_samples(calib_inputs(calib, 4), int(samples))
    t0 = time.perf_counter()
    scores, passes = score_blocks(model, batches, names, str(latent))
    order = sorted(names, key=lambda b: (scores[b], names.index(b)))  # lowest first, ties by position
    dropped = [b for b in names if b in order[:n]]
    return {"dropped": dropped, "block_scores": scores, "latent": str(latent),
            "passes": {"forward": passes["forward"]}, "seconds": round(time.perf_counter() - t0, 3)}
