"""Evaluators and the report record of diffusion models (:mod:`stages.model.diffusion`).

- ``fid-digits``: the Fréchet distance between features of generated samples and of the split's clean
  images, the features being the embedded digits classifier's pooled penultimate layer (128 values).
  **A proxy for FID, not FID**: FID uses Inception-v3 features of 299 x 299 RGB images, which would mean
  nothing for 8 x 8 digits and cannot be downloaded here. As many samples as the split has images
  (450 on test, 347 on calib), from fixed-seed noise by :data:`SAMPLER_STEPS` deterministic DDIM steps,
  each step one call of the engine under test. Reported negated (``-FD``), so the searches read "higher
  is better" and ``--max-accuracy-drop D`` means "FD may rise by at most D".
- ``denoise-loss``: the DDPM objective, the mean squared error of the predicted noise against the true
  noise on the split's ``(x_t, t)`` pairs; reported negated (``-MSE``) for the same reason.

:func:`generative_record` is what a run's report shows for a diffusion model: both metrics, LD-Pruner's
latent statistic between the pruned and the unpruned model's final samples (same seeds), the wall time
of a ``K``-step sampling run at batch 1 on the engines, and the sample grids.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from core.errors import SpecError
from stages.evaluate import register
from stages.model.diffusion import (
    GenerativeSplit,
    ddim_sample,
    frechet_distance,
    latent_statistic,
    sample_features,
    start_noise,
)

SAMPLER_STEPS = 20  # K of every generative evaluation (DDIM, eta 0)
SAMPLE_SEED = 1234  # the sampler's start noise
GRID = 64  # samples in a report grid
GENERATIVE = ("fid-digits", "denoise-loss")  # the evaluators that need a GenerativeSplit


def _split(data: Dataset, metric: str) -> GenerativeSplit:
    if not isinstance(data, GenerativeSplit):
        raise SpecError(f"metric '{metric}' needs a denoising split with clean images (data digits-ddpm)",
                        hint="use --data digits-ddpm with a diffusion model, or another --metric")
    return data


def _eps_fn(runner):
    return lambda packed: np.asarray(runner.run(packed.numpy()), dtype=np.float32)


def generate(runner, split: GenerativeSplit, n: int, steps: int = SAMPLER_STEPS, batch: int = 64) -> torch.Tensor:
    """``n`` samples of ``split``'s shape by ``runner`` (fixed seed)."""
    return ddim_sample(_eps_fn(runner), start_noise(n, split.shape, SAMPLE_SEED), steps, batch=batch)


@register("fid-digits", needs_labels=True, unit="-FD (digits-classifier features)", higher_is_better=True,
          loss="features", negated="FD",
          summary="diffusion: -Frechet distance of generated samples to the split (digits-classifier features)")
def evaluate_fid_digits(runner, data: Dataset, batch_size: int = 64) -> float:
    split = _split(data, "fid-digits")
    samples = generate(runner, split, len(split.images), batch=max(batch_size, 64))
    return -frechet_distance(sample_features(split, samples), split.reference_features())


@register("denoise-loss", needs_labels=True, unit="-MSE of the predicted noise", higher_is_better=True,
          loss="features", negated="MSE",
          summary="diffusion: -mean squared error of the predicted noise on the split's (x_t, t) pairs")
def evaluate_denoise_loss(runner, data: Dataset, batch_size: int = 64) -> float:
    err = n = 0.0
    for x, y in DataLoader(data, batch_size=batch_size, shuffle=False):
        out = np.asarray(runner.run(x.numpy()), dtype=np.float64).reshape(len(x), -1)
        err += float(((out - y.double().numpy().reshape(len(x), -1)) ** 2).sum())
        n += out.size
    return -err / max(n, 1.0)


def sampling_seconds(runners: list, split: GenerativeSplit, steps: int = SAMPLER_STEPS, repeats: int = 5) -> list[float]:
    """Median wall time of one ``steps``-step sampling run at batch 1 on each runner, interleaved."""
    noise = start_noise(1, split.shape, SAMPLE_SEED)
    times: list[list[float]] = [[] for _ in runners]
    for _ in range(repeats):
        for i, r in enumerate(runners):
            t0 = time.perf_counter()
            ddim_sample(_eps_fn(r), noise, steps)
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def generative_record(base_runner, final_runner, split: GenerativeSplit) -> tuple[dict, dict[str, torch.Tensor]]:
    """The report's diffusion record (both models on ``split``) and the sample grids (``GRID`` samples each)."""
    base = generate(base_runner, split, len(split.images))
    final = generate(final_runner, split, len(split.images))
    ref = split.reference_features()
    secs = sampling_seconds([base_runner, final_runner], split)
    loss = [evaluate_denoise_loss(r, split) for r in (base_runner, final_runner)]
    rec = {"sampler": f"DDIM, {SAMPLER_STEPS} steps, eta 0, seed {SAMPLE_SEED}", "samples": len(split.images),
           "fid_digits": {"baseline": frechet_distance(sample_features(split, base), ref),
                          "final": frechet_distance(sample_features(split, final), ref)},
           "denoise_mse": {"baseline": -loss[0], "final": -loss[1]},
           "latent_statistic": latent_statistic(final, base),
           "sampling_run_s": {"baseline": secs[0], "final": secs[1], "steps": SAMPLER_STEPS, "batch": 1}}
    return rec, {"baseline": base[:GRID], "final": final[:GRID]}
