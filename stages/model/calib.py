"""Per-input-feature calibration statistics of Linear and Conv2d layers, shared by Wanda and STADE.

For every input feature ``j`` of a layer we keep, over the calibration data, the count ``n``,
the mean ``mu_j``, ``M2_j = sum (x_j - mu_j)^2`` (so the unbiased variance is ``M2_j / (n - 1)``)
and the sum of squares ``||X_j||^2``. Batches are reduced in float64 and merged with Chan et
al.'s parallel form of Welford's update, so the result does not depend on how the calibration
set is split into batches and does not suffer the cancellation of ``E[x^2] - E[x]^2``.

What "input feature" means:

- **Linear**: one input column; every leading dimension (batch, tokens) is flattened, so the
  statistics are over calibration *tokens*, as in Wanda and STADE.
- **Conv2d**: one *tap* ``(c, kh, kw)``, i.e. one column of the unfolded (im2col) input: the
  values that weight ``W[o, c, kh, kw]`` multiplies, over batch x output positions. Padded
  positions count as the zeros the convolution sees (or the reflected/replicated values for
  other padding modes), and strides/dilations select exactly the pixels the tap reads.
  Statistics therefore have shape ``(C_in, kh, kw)``.

  Why taps rather than plain per-channel pixel statistics: (1) the tap statistics are exactly
  the input of each weight, which is what both scores are defined on; (2) they make STADE's
  bias compensation *exact* for the mean output over all positions, borders included, where
  the per-channel pixel mean over-estimates what border taps see; (3) for a 1x1, stride-1,
  unpadded conv they are the per-channel pixel statistics. They are computed without
  materialising the unfolded tensor: unfolding is linear, so we sum over the batch first and
  unfold one ``1 x C x H x W`` map (cost ``C * k^2 * positions`` per batch).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from stages.model.graph import GroupInfo

SUPPORTED = (nn.Linear, nn.Conv2d)


@dataclass(frozen=True)
class InputStats:
    """Statistics of one layer's input features (float64).

    Attributes:
        count: Samples per feature (tokens for Linear, batch x output positions for Conv2d).
        mean: Mean of each feature; shape ``(in_features,)`` or ``(C_in, kh, kw)``.
        m2: Sum of squared deviations from the mean.
        sqsum: Sum of squares, ``||X_j||^2``.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    sqsum: torch.Tensor

    @property
    def var(self) -> torch.Tensor:
        """Unbiased (n - 1) variance, as STADE uses; zero when ``count <= 1``."""
        if self.count <= 1:
            return torch.zeros_like(self.m2)
        return self.m2 / (self.count - 1)

    @property
    def norm(self) -> torch.Tensor:
        """``||X_j||_2`` over all calibration samples, as Wanda uses."""
        return self.sqsum.sqrt()

    def merge(self, other: InputStats) -> InputStats:
        """Chan, Golub & LeVeque's pairwise update: the statistics of both sample sets together."""
        if self.count == 0:
            return other
        if other.count == 0:
            return self
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta.square() * (self.count * other.count / n)
        return InputStats(n, mean, m2, self.sqsum + other.sqsum)


def linear_batch_stats(x: torch.Tensor) -> InputStats:
    """Statistics of one batch of Linear inputs ``(..., in_features)``."""
    x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64)
    mean = x.mean(0)
    return InputStats(x.shape[0], mean, (x - mean).square().sum(0), x.square().sum(0))


def conv_batch_stats(x: torch.Tensor, conv: nn.Conv2d) -> InputStats:
    """Tap statistics ``(C_in, kh, kw)`` of one batch of Conv2d inputs ``(B, C_in, H, W)``."""
    x = x.detach().to(torch.float64)
    if x.dim() == 3:  # unbatched input
        x = x.unsqueeze(0)
    b, c = x.shape[:2]
    kh, kw = conv.kernel_size
    # the padding the conv applies, as (left, right, top, bottom); also right for padding="same"
    pad = conv._reversed_padding_repeated_twice
    mode = "constant" if conv.padding_mode == "zeros" else conv.padding_mode
    xp = F.pad(x, pad, mode=mode) if any(pad) else x
    kw_args = {"kernel_size": conv.kernel_size, "dilation": conv.dilation, "stride": conv.stride}

    def tap_sum(per_pixel: torch.Tensor) -> torch.Tensor:  # (1, C, Hp, Wp) -> (C, kh, kw)
        cols = F.unfold(per_pixel, **kw_args)  # (1, C*kh*kw, L)
        return cols.sum(-1).view(c, kh, kw)

    positions = F.unfold(xp[:1, :1], **kw_args).shape[-1]
    n = b * positions
    shift = x.mean((0, 2, 3)).view(1, c, 1, 1)  # per-channel shift against cancellation
    s1 = tap_sum(xp.sum(0, keepdim=True))
    s2_shifted = tap_sum((xp - shift).square().sum(0, keepdim=True))  # pads contribute shift^2: right
    sq = tap_sum(xp.square().sum(0, keepdim=True))
    mean = s1 / n
    m2 = (s2_shifted - n * (mean - shift.view(c, 1, 1)).square()).clamp_min(0)
    return InputStats(n, mean, m2, sq)


def batch_stats(x: torch.Tensor, layer: nn.Module) -> InputStats:
    if isinstance(layer, nn.Conv2d):
        return conv_batch_stats(x, layer)
    if isinstance(layer, nn.Linear):
        return linear_batch_stats(x)
    raise TypeError(f"input statistics support Linear and Conv2d, not {type(layer).__name__}")


class InputStatsRecorder:
    """Context manager: forward pre-hooks that accumulate :class:`InputStats` per layer.

    Args:
        model: The model to observe (not modified; hooks are removed on exit).
        layers: Module names to observe; default every Linear and Conv2d.

    A module called several times per forward pass accumulates all its calls.
    """

    def __init__(self, model: nn.Module, layers: Iterable[str] | None = None) -> None:
        modules = dict(model.named_modules())
        names = list(layers) if layers is not None else [n for n, m in modules.items() if isinstance(m, SUPPORTED)]
        bad = [n for n in names if not isinstance(modules.get(n), SUPPORTED)]
        if bad:
            raise ValueError(f"not Linear/Conv2d modules of this model: {', '.join(bad)}")
        self._modules = {n: modules[n] for n in names}
        self._hooks: list = []
        self.stats: dict[str, InputStats] = {}

    def _hook(self, name: str) -> Callable:
        def fn(mod: nn.Module, inputs: tuple) -> None:
            s = batch_stats(inputs[0], mod)
            self.stats[name] = self.stats[name].merge(s) if name in self.stats else s
        return fn

    def __enter__(self) -> InputStatsRecorder:
        self._hooks = [m.register_forward_pre_hook(self._hook(n)) for n, m in self._modules.items()]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []


@torch.no_grad()
def collect_input_stats(model: nn.Module, inputs: Iterable[torch.Tensor],
                        layers: Iterable[str] | None = None) -> dict[str, InputStats]:
    """Run ``inputs`` through ``model`` (eval mode, no grad) and return each layer's input statistics.

    Args:
        model: The (unpruned) model; its train/eval mode is restored afterwards.
        inputs: Calibration input batches.
        layers: Module names to observe; default every Linear and Conv2d.
    """
    was_training = model.training
    model.eval()
    try:
        with InputStatsRecorder(model, layers) as rec:
            for x in inputs:
                model(x)
    finally:
        model.train(was_training)
    return rec.stats


def calib_inputs(data: Dataset, batches: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """The first ``batches`` input batches of a ``(x, y)`` dataset, in order (no shuffling)."""
    for i, (x, _) in enumerate(DataLoader(data, batch_size=batch_size, shuffle=False)):
        if i >= batches:
            break
        yield x


# ------------------------------------------------------------------ weight <-> feature views

def per_weight(stat: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Broadcast a per-input-feature tensor to the shape of ``layer.weight``.

    ``stat`` is ``(in_features,)`` for Linear, ``(C_in, kh, kw)`` (taps) or ``(C_in,)`` for Conv2d;
    grouped and depthwise convs map input channel ``c`` to the output channels of its group.
    """
    w = layer.weight
    if isinstance(layer, nn.Linear):
        return stat.reshape(1, -1).expand(w.shape)
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        o, cin_g, kh, kw = w.shape
        if stat.dim() == 1:
            stat = stat.view(-1, 1, 1).expand(-1, kh, kw)
        return stat.reshape(g, cin_g, kh, kw).repeat_interleave(o // g, dim=0)
    raise TypeError(f"Linear or Conv2d expected, got {type(layer).__name__}")


def per_input(weight_scores: torch.Tensor, layer: nn.Module) -> torch.Tensor:
    """Sum a weight-shaped tensor over everything attached to each input channel: ``(n_in,)``."""
    if isinstance(layer, nn.Linear):
        return weight_scores.sum(0)
    if isinstance(layer, nn.Conv2d):
        g = layer.groups
        o, cin_g = weight_scores.shape[:2]
        return weight_scores.reshape(g, o // g, cin_g, -1).sum((1, 3)).reshape(-1)
    raise TypeError(f"Linear or Conv2d expected, got {type(layer).__name__}")


def per_output(weight_scores: torch.Tensor) -> torch.Tensor:
    """Sum a weight-shaped tensor over each output row: ``(out,)``."""
    return weight_scores.reshape(weight_scores.shape[0], -1).sum(1)


def n_inputs(layer: nn.Module) -> int:
    return layer.in_features if isinstance(layer, nn.Linear) else layer.in_channels


# ------------------------------------------------------------------ groups -> consumer columns

def consumers(group: GroupInfo, modules: Mapping[str, nn.Module]) -> list[str]:
    """Linear/Conv2d layers whose *input* channels the group removes and whose output survives.

    Layers that are also in ``out_layers`` (depthwise convs coupled to the channel) are left
    out: their output channel disappears with the input, and its loss is measured where that
    output is consumed.
    """
    return [n for n in group.in_layers if n not in group.out_layers and isinstance(modules.get(n), SUPPORTED)]


def consumer_columns(layer: nn.Module, width: int) -> torch.Tensor | None:
    """Input columns of ``layer`` fed by each of a group's ``width`` channels: ``(width, k)``.

    Identity when the layer has ``width`` inputs; ``k`` contiguous columns per channel for a
    Linear after ``flatten`` of a ``(C, H, W)`` map with ``C == width``. ``None`` when the
    mapping cannot be known from the group alone (a consumer of a concatenation): callers skip
    that consumer. [Known limit: Torch-Pruning holds that index mapping, the adapter does not
    expose it yet.]
    """
    n_in = n_inputs(layer)
    if n_in == width:
        return torch.arange(width).view(width, 1)
    if isinstance(layer, nn.Linear) and n_in % width == 0:
        return torch.arange(n_in).view(width, n_in // width)
    return None


def removed_consumer_inputs(groups: Iterable[GroupInfo], modules: Mapping[str, nn.Module],
                            remove: Mapping[str, Iterable[int]]) -> dict[str, list[int]]:
    """Map channels removed per group (by group id) to input columns removed per consumer layer."""
    out: dict[str, set[int]] = {}
    for g in groups:
        idxs = sorted(int(i) for i in remove.get(g.id, ()))
        if not idxs:
            continue
        for name in consumers(g, modules):
            cols = consumer_columns(modules[name], g.width)
            if cols is not None:
                out.setdefault(name, set()).update(cols[idxs].flatten().tolist())
    return {k: sorted(v) for k, v in out.items()}


def matches(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module name matches one of the glob patterns."""
    return any(fnmatch.fnmatch(name, p) for p in patterns)


# ------------------------------------------------------------------ the channel (group) form

WeightScore = Callable[[str, nn.Module, InputStats], torch.Tensor]


def channel_scores(model: nn.Module, groups: list[GroupInfo], inputs: Iterable[torch.Tensor],
                   weight_score: WeightScore, family: Callable[[str], str] | None = None) -> dict[str, torch.Tensor]:
    """Structured form of a weight-level criterion: one score per channel of each group.

    A channel's score is the sum of the weight scores of the consumer weights it feeds (the
    input columns, over all output rows and kernel taps, of every layer in ``in_layers`` whose
    output survives; see :func:`consumers`). Why the consumer side: both Wanda's ``|W_ij|
    ||X_j||`` and STADE's ``W_ij^2 Var(x_j)`` estimate the error in a layer's *output* caused by
    dropping its input ``x_j``; removing channel ``j`` drops exactly that input from every
    consumer, while the producer's row disappears together with its output and is not an error
    anywhere. For STADE the sum is exact: after bias compensation, the expected squared output
    error of removing channel ``j`` is ``sum_i W_ij^2 Var(x_j)`` (inputs independent).

    Groups with no consumer whose columns can be mapped (a concatenation consumer) fall back
    to the producers' rows (``out_layers``), scored on the producers' own inputs.

    Args:
        model: The model; observed in eval mode, not modified.
        groups: The prunable groups (``PruneGraph.groups()``).
        inputs: Calibration input batches.
        weight_score: ``(layer name, layer, its InputStats) -> weight-shaped scores``.
        family: Optional ``layer name -> criterion family`` (``stadew``): when a group's
            consumers come from different families, each consumer's vector is divided by its
            sum first, because the families' units differ.
    """
    modules = dict(model.named_modules())
    plan: dict[str, list[tuple[str, torch.Tensor | None]]] = {}
    for g in groups:
        cons = [(n, consumer_columns(modules[n], g.width)) for n in consumers(g, modules)]
        cons = [(n, c) for n, c in cons if c is not None]
        if not cons:  # fallback: the producers' rows
            cons = [(n, None) for n in g.out_layers
                    if isinstance(modules[n], SUPPORTED) and modules[n].weight.shape[0] == g.width]
        plan[g.id] = cons
    layers = sorted({n for cons in plan.values() for n, _ in cons})
    stats = collect_input_stats(model, inputs, layers)
    out = {}
    for g in groups:
        parts = []
        for name, cols in plan[g.id]:
            layer = modules[name]
            if name not in stats:  # never executed in the forward pass
                continue
            ws = weight_score(name, layer, stats[name]).to(torch.float64)
            parts.append((name, per_output(ws) if cols is None else per_input(ws, layer)[cols].sum(1)))
        if not parts:
            out[g.id] = torch.zeros(g.width)
            continue
        if family is not None and len({family(n) for n, _ in parts}) > 1:
            parts = [(n, p / p.sum().clamp_min(torch.finfo(p.dtype).tiny)) for n, p in parts]
        out[g.id] = torch.stack([p for _, p in parts]).sum(0).float()
    return out
