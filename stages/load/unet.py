"""A compact DDPM U-Net for 1 x 32 x 32 images, built to prune exactly (``example:digits-ddpm``).

Structure (the DDPM paper's, scaled down): a sinusoidal timestep embedding and a two-layer MLP; per
resolution (32, 16, 8) a residual block (norm -> SiLU -> conv, + the timestep's per-channel shift,
norm -> SiLU -> conv, 1x1 shortcut where the width changes) and a strided-conv downsample; a middle of
residual block, self-attention (4 heads at 8 x 8) and residual block; the decoder mirrors it with
nearest upsampling and skip concatenations; norm -> SiLU -> 3 x 3 conv to the predicted noise.

**BatchNorm instead of DDPM's GroupNorm** (a decision, docs/models.md): in eval mode BatchNorm is a
per-channel affine map, so removing a channel leaves every other channel's value unchanged and a
pruned model equals its masked parent exactly (GroupNorm's statistics pool channels, so a channel's
removal moves its group's other channels). Training batches mix timesteps uniformly, so a batch's
statistics estimate the same population the running statistics hold: the train/eval gap BatchNorm has
in diffusion models with per-timestep batches does not arise.

The attention uses ``q_proj`` / ``k_proj`` / ``v_proj`` / ``o_proj`` with a ``head_dim`` attribute and
takes its head count from ``q_proj``'s width, so the pruner removes whole heads
(:mod:`stages.model.attention`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

TIME_DIM = 64


def timestep_embedding(t: torch.Tensor, dim: int = TIME_DIM) -> torch.Tensor:
    """Sinusoidal embedding of (float) timesteps ``[B]`` -> ``[B, dim]``."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32, device=t.device) * (-math.log(10000.0) / half))
    args = t.float().reshape(-1, 1) * freqs.reshape(1, -1)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, tdim: int) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(tdim, cout)
        self.norm2 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.temb(temb)[:, :, None, None]
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, with a residual connection."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.head_dim = channels // heads
        self.norm = nn.BatchNorm2d(channels)
        self.q_proj = nn.Linear(channels, channels)
        self.k_proj = nn.Linear(channels, channels)
        self.v_proj = nn.Linear(channels, channels)
        self.o_proj = nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(x).flatten(2).transpose(1, 2)  # [B, HW, C]
        heads = self.q_proj.out_features // self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:  # [B, HW, heads * d] -> [B, heads, HW, d]
            return t.unflatten(-1, (heads, self.head_dim)).transpose(1, 2)

        q, k, v = split(self.q_proj(tokens)), split(self.k_proj(tokens)), split(self.v_proj(tokens))
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)
        out = (att @ v).transpose(1, 2).flatten(2)  # [B, HW, heads * d]
        return x + self.o_proj(out).transpose(1, 2).reshape_as(x)


class DigitsUNet(nn.Module):
    """``forward(sample [B, 1, 32, 32], timestep [B]) -> predicted noise [B, 1, 32, 32]``."""

    def __init__(self, width: int = 32, mults: tuple[int, ...] = (1, 2, 2), heads: int = 4, in_channels: int = 1) -> None:
        super().__init__()
        tdim = 2 * TIME_DIM
        self.time_mlp = nn.Sequential(nn.Linear(TIME_DIM, tdim), nn.SiLU(), nn.Linear(tdim, tdim))
        chans = [width * m for m in mults]
        self.stem = nn.Conv2d(in_channels, chans[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        c = chans[0]
        for i, co in enumerate(chans):
            self.down.append(ResBlock(c, co, tdim))
            c = co
            if i + 1 < len(chans):
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.mid1 = ResBlock(c, c, tdim)
        self.attn = Attention(c, heads)
        self.mid2 = ResBlock(c, c, tdim)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i, co in reversed(list(enumerate(chans))):
            self.up.append(ResBlock(c + co, co, tdim))
            c = co
            if i > 0:
                self.upsample.append(nn.Conv2d(c, chans[i - 1], 3, padding=1))
                c = chans[i - 1]
        self.out_norm = nn.BatchNorm2d(c)
        self.out = nn.Conv2d(c, in_channels, 3, padding=1)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        temb = self.time_mlp(timestep_embedding(timestep))
        temb = F.silu(temb)
        h = self.stem(sample)
        skips = []
        for i, block in enumerate(self.down):
            h = block(h, temb)
            skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
        h = self.mid2(self.attn(self.mid1(h, temb)), temb)
        for i, block in enumerate(self.up):
            h = block(torch.cat([h, skips.pop()], dim=1), temb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))
