"""Denoising diffusion (DDPM, Ho et al. 2020) around a noise-predicting network: the noise schedule, the
training pairs and a deterministic DDIM sampler (Song et al. 2021, eta = 0).

A diffusion model here is any packed model (:mod:`stages.model.contract`) whose two inputs are the noisy
sample ``x_t`` and the timestep ``t`` (a float, one per sample) and whose output is the predicted noise
``eps`` of ``x_t``'s shape. Everything the pipeline does to such a model goes through two functions:

- :func:`denoising_pairs`: for clean images ``x0``, fixed-seed noise and timesteps, the packed inputs
  ``(x_t, t)`` and the target noise ``eps`` (the data's labels; the loss is the DDPM objective
  ``||eps_hat - eps||^2``);
- :func:`ddim_sample`: ``K`` deterministic DDIM steps from fixed-seed Gaussian noise with any
  ``eps_fn(packed batch) -> eps`` (a torch module, an ONNX Runtime engine's runner, a model with
  channels removed by hooks), so two runs of the same weights give the same samples, bit for bit on one
  machine.

The schedule is the DDPM paper's: ``T = 1000`` steps, betas linear from 1e-4 to 0.02. The DDIM timesteps
for ``K`` steps are ``T - 1, ..., 0`` spaced evenly (``round(linspace)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import TensorDataset

EpsFn = Callable[[torch.Tensor], torch.Tensor]  # packed (x_t, t) batch -> predicted noise


@dataclass(frozen=True)
class Schedule:
    """The forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps``."""

    steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02

    def alpha_bar(self) -> torch.Tensor:
        """``abar_t`` for ``t = 0 .. T-1`` (float64)."""
        betas = torch.linspace(self.beta_start, self.beta_end, self.steps, dtype=torch.float64)
        return torch.cumprod(1.0 - betas, 0)

    def timesteps(self, k: int) -> list[int]:
        """The ``k`` DDIM timesteps, from ``T - 1`` down to 0."""
        if k < 1:
            raise ValueError(f"a sampler needs at least one step, got {k}")
        return sorted({int(round(v)) for v in torch.linspace(0, self.steps - 1, k).tolist()}, reverse=True)


def pack(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The packed batch of a diffusion model (inputs ``sample``, ``timestep``): each sample flattened, its
    timestep appended (``stages.model.contract``'s flat packing)."""
    return torch.cat([x.reshape(len(x), -1), t.reshape(-1, 1).to(x.dtype)], dim=1)


def denoising_pairs(x0: torch.Tensor, draws: int, seed: int, schedule: Schedule = Schedule()
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``draws`` noisings of every image of ``x0`` (``[N, *shape]``): packed inputs ``[N * draws, numel + 1]``
    and the target noise ``[N * draws, *shape]``; timesteps uniform over ``0 .. T-1``; fixed by ``seed``."""
    g = torch.Generator().manual_seed(seed)
    x0 = x0.repeat(draws, *([1] * (x0.dim() - 1)))
    t = torch.randint(0, schedule.steps, (len(x0),), generator=g)
    eps = torch.randn(x0.shape, generator=g)
    ab = schedule.alpha_bar()[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    return pack(xt, t.to(x0.dtype)), eps


def start_noise(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The sampler's initial noise ``x_T`` for ``n`` samples (fixed by ``seed``)."""
    return torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def ddim_sample(eps_fn: EpsFn, noise: torch.Tensor, k: int, schedule: Schedule = Schedule(),
                batch: int = 64) -> torch.Tensor:
    """Deterministic DDIM (eta = 0) from ``noise`` in ``k`` steps; ``eps_fn`` is called on packed batches of
    at most ``batch`` rows. Returns the final samples ``x_0`` (unclipped, float32)."""
    ab = schedule.alpha_bar()
    ts = schedule.timesteps(k)
    out = []
    for s in range(0, len(noise), batch):
        x = noise[s:s + batch].double()
        for i, t in enumerate(ts):
            prev = ab[ts[i + 1]] if i + 1 < len(ts) else torch.tensor(1.0, dtype=torch.float64)
            eps = torch.as_tensor(eps_fn(pack(x.float(), torch.full((len(x),), float(t))))).double()
            eps = eps.reshape(x.shape)
            x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
            x = prev.sqrt() * x0 + (1 - prev).sqrt() * eps
        out.append(x.float())
    return torch.cat(out)


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to feature rows ``a`` and ``b``:
    ``||mu_a - mu_b||^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` (float64; the square-root term from the
    eigenvalues of ``S_a^(1/2) S_b S_a^(1/2)``, which is symmetric positive semi-definite)."""
    a, b = a.double(), b.double()
    ma, mb = a.mean(0), b.mean(0)
    sa, sb = torch.cov(a.T), torch.cov(b.T)
    va, qa = torch.linalg.eigh(sa)
    root_a = qa @ torch.diag(va.clamp_min(0).sqrt()) @ qa.T
    mid = torch.linalg.eigvalsh(root_a @ sb @ root_a).clamp_min(0).sqrt().sum()
    return float((ma - mb).pow(2).sum() + torch.trace(sa) + torch.trace(sb) - 2 * mid)


def latent_statistic(a: torch.Tensor, b: torch.Tensor) -> float:
    """LD-Pruner's distance between two sets of final latents (element-wise over samples):
    ``||mean(a) - mean(b)||_2 + ||std(a) - std(b)||_2`` (population std)."""
    a, b = a.double().reshape(len(a), -1), b.double().reshape(len(b), -1)
    return float((a.mean(0) - b.mean(0)).norm() + (a.std(0, unbiased=False) - b.std(0, unbiased=False)).norm())


class GenerativeSplit(TensorDataset):
    """A denoising split: packed ``(x_t, t)`` inputs and their noise (the labels), plus what a generative
    evaluator compares samples with: the split's clean ``images`` and the ``features`` extractor
    (``images [N, *shape] -> [N, F]``)."""

    def __init__(self, packed: torch.Tensor, eps: torch.Tensor, images: torch.Tensor, features: nn.Module,
                 shape: tuple[int, ...]) -> None:
        super().__init__(packed, eps)
        self.images, self.features, self.shape = images, features, tuple(shape)
        self._reference: torch.Tensor | None = None

    def reference_features(self) -> torch.Tensor:
        """The clean images' features (computed once)."""
        if self._reference is None:
            self._reference = _features(self.features, self.images)
        return self._reference


@torch.no_grad()
def _features(net: nn.Module, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    return torch.cat([net(images[i:i + batch]) for i in range(0, len(images), batch)])


def sample_features(split: GenerativeSplit, samples: torch.Tensor) -> torch.Tensor:
    """Features of generated ``samples`` (clipped to the data range [-1, 1], as a sampler's output is shown)."""
    return _features(split.features, samples.clamp(-1, 1))
