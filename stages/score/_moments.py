"""Element-wise moments of latents over samples and LD-Pruner's distance between two sets of them
(:mod:`stages.score.ld_pruner`, :mod:`stages.score.ld_sampled`)."""

from __future__ import annotations

import torch


class Moments:
    """Element-wise mean and population std over samples, for ``replicas`` latents at once.

    Sums are float64 and shifted by a reference value (the first batch's sample mean), so a large
    common offset does not cancel catastrophically in ``E[z^2] - E[z]^2``.
    """

    def __init__(self, replicas: int = 1) -> None:
        self.replicas = replicas
        self.n = torch.zeros(replicas, dtype=torch.float64)
        self.shift: torch.Tensor | None = None
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None

    def add(self, part: torch.Tensor, start: int = 0) -> None:
        """``part``: ``[k, batch, *latent]``, the samples of replicas ``start : start + k``."""
        part = part.detach().to(torch.float64)
        if self.s1 is None:
            self.shift = part[0].mean(0)
            self.s1 = torch.zeros((self.replicas, *part.shape[2:]), dtype=torch.float64)
            self.s2 = torch.zeros_like(self.s1)
        d = part - self.shift
        sl = slice(start, start + part.shape[0])
        self.s1[sl] += d.sum(1)
        self.s2[sl] += (d * d).sum(1)
        self.n[sl] += part.shape[1]

    def mean_std(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``([replicas, *latent], [replicas, *latent])``."""
        n = self.n.view(-1, *([1] * (self.s1.dim() - 1)))
        m = self.s1 / n
        var = (self.s2 / n - m * m).clamp_min(0)
        return m + self.shift, var.sqrt()


def ld_score(ref_mean: torch.Tensor, ref_std: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``||mu - mu_o|| + ||sigma - sigma_o||`` per replica (first dim of ``mean``/``std``)."""
    j = mean.shape[0]
    return ((mean - ref_mean).reshape(j, -1).norm(dim=1) + (std - ref_std).reshape(j, -1).norm(dim=1)).float()
