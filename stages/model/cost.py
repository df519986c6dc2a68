"""What a model costs, counted: MACs and params (Torch-Pruning's counter, batch 1), and the per-layer
MAC terms a latency model places its measured savings on (:func:`layer_terms`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from stages.model.graph import GroupInfo, count_macs_params


def macs_params(model: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, int]:
    """MACs at batch 1 and parameter count."""
    return count_macs_params(model, torch.zeros((1, *input_shape)))


@dataclass(frozen=True)
class LayerTerm:
    """One conv / linear layer: its MACs at full width (batch 1) and the groups that scale it.

    ``out_groups`` / ``in_groups`` are ``(group id, share)``: the share of the layer's output /
    input channels that group owns (1.0 unless channels of several groups are concatenated).
    """

    name: str
    macs: float
    out_groups: tuple[tuple[str, float], ...] = ()
    in_groups: tuple[tuple[str, float], ...] = ()

    def groups(self) -> set[str]:
        return {g for g, _ in (*self.out_groups, *self.in_groups)}


def layer_terms(model, example_input, groups: Sequence[GroupInfo]) -> list[LayerTerm]:
    """The conv / linear layers of ``model`` that some group scales, with their MACs (one forward pass).

    A group scales the *output* channels of the layers in its ``out_layers`` and the *input*
    channels of those in its ``in_layers``. A depthwise convolution's input channels follow its
    output channels, so only its output side counts.
    """
    import torch
    from torch import nn

    outs: dict[str, list[str]] = {}
    ins: dict[str, list[str]] = {}
    width = {g.id: g.width for g in groups}
    for g in groups:
        for name in g.out_layers:
            outs.setdefault(name, []).append(g.id)
        for name in g.in_layers:
            ins.setdefault(name, []).append(g.id)
    macs: dict[str, float] = {}
    depthwise: set[str] = set()
    batch = int(example_input.shape[0])

    def hook(name: str, mod: nn.Module):
        def fn(_m, _inp, out):
            per_sample = out.numel() / max(1, batch)
            if isinstance(mod, nn.modules.conv._ConvNd):
                k = math.prod(mod.kernel_size)
                macs[name] = macs.get(name, 0.0) + per_sample * (mod.in_channels // mod.groups) * k
                if mod.groups > 1 and mod.groups == mod.in_channels:
                    depthwise.add(name)
            else:
                macs[name] = macs.get(name, 0.0) + per_sample * mod.in_features
        return fn

    hooks = [m.register_forward_hook(hook(n, m)) for n, m in model.named_modules()
             if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd)) and (n in outs or n in ins)]
    try:
        with torch.no_grad():
            model.eval()(example_input)
    finally:
        for h in hooks:
            h.remove()

    def shares(gids: list[str]) -> tuple[tuple[str, float], ...]:
        total = sum(width[g] for g in gids)
        return tuple((g, width[g] / total) for g in sorted(set(gids)))

    terms = []
    for name, m in macs.items():
        out_g = shares(outs.get(name, []))
        in_g = () if name in depthwise else shares(ins.get(name, []))
        if out_g or in_g:
            terms.append(LayerTerm(name, m, out_g, in_g))
    return sorted(terms, key=lambda t: t.name)
