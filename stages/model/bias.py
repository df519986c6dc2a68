"""STADE's bias compensation (Coello de Portugal Mecke et al., arXiv 2503.22451; methods.md §2): the shift
of removed inputs and where it goes. The channel form over a pruning plan is
:func:`stages.prune.compensate.apply_plan_compensated`.

Dropping input ``j`` of a layer changes output ``i`` by ``-W_ij x_j``; its mean over the
calibration data is ``-W_ij mu_j``. Adding ``W_ij mu_j`` to the bias removes that mean error,
leaving only the variance term STADE's score ranks by. Weight-level (masks) and structured
(channels) pruning are the same formula with different index sets:

- masks: ``b_i += sum_{j : M_ij} W_ij mu_j``;
- removing input channel ``c`` of a consumer: ``b_o += sum_{kh,kw} W[o, c, kh, kw] mu[c, kh, kw]``.

For a conv, ``mu`` is the mean of each *tap* (what each weight multiplies: zero padding and
strides included; see ``stages.model.calib``). With it the compensation keeps the mean
output over all calibration positions **exactly**, borders included. What stays approximate:
the bias is one number per output channel, while the removed contribution is smaller at the
padded border than inside, so per-position means at the border move slightly (the correction is
the position-average). Using the per-channel pixel mean times ``W[:, c].sum()`` instead, as the
issue's shorthand says, would over-correct border positions and the overall mean by the fraction
of taps that fall into padding.

**The weights must be read before they are zeroed or removed.** The authors' v2 code
(``BasePruner.prune``, commit 654f917) zeroes ``W[mask]`` and then computes the bias from the
zeroed weights, so its correction is always 0; v1 (``std.py``) had the right order. Here every
function computes from the weights it is given, and the pipeline must call them on the original
model, before :func:`stages.prune.plan.apply_plan` or :func:`stages.model.masks.apply_masks`
zero anything (:func:`apply_plan_compensated` does it in that order).

Where the shift goes: a layer with a bias gets it added; a bias-less layer whose output feeds
only a BatchNorm has the BN's ``running_mean`` lowered by the shift instead (the same function
in eval mode, no new parameter, unchanged ``state_dict`` keys); otherwise a bias Parameter is
created. Note that re-estimating BN statistics afterwards (``recalibrate_bn``) overwrites a
BN-folded shift; it then re-centres the BN from the pruned model's own batch statistics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from stages.model.calib import InputStats, n_inputs, per_weight


def masked_shift(layer: nn.Module, pruned: torch.Tensor, stats: InputStats) -> torch.Tensor:
    """``sum_j W_ij M_ij mu_j`` per output row, from the layer's current (pre-masking) weights."""
    w = layer.weight.detach().to(torch.float64)
    mu = per_weight(stats.mean, layer)
    return (w * pruned.to(w.device, torch.float64) * mu.to(w.device)).reshape(w.shape[0], -1).sum(1)


def removed_input_mask(layer: nn.Module, cols: Iterable[int]) -> torch.Tensor:
    """Weight-shaped bool mask of every weight attached to the given input columns/channels."""
    r = torch.zeros(n_inputs(layer), dtype=torch.bool)
    r[list(cols)] = True
    return per_weight(r, layer).clone()


def compensate_removed_inputs(model: nn.Module, removed: Mapping[str, Iterable[int]],
                              stats: Mapping[str, InputStats]) -> dict[str, torch.Tensor]:
    """Bias shifts that compensate removing input channels of consumer layers.

    Call it on the model **before** the channels are removed (the original weights). The
    result is indexed by the layers' *original* output channels; apply it with
    :func:`add_output_shift` to the unpruned model before Torch-Pruning removes channels (it
    then slices the bias / BN statistics with the output channels), or with ``kept_out`` to a
    model that is already pruned.

    Args:
        model: The unpruned model.
        removed: Consumer layer name -> removed input columns (Linear) or channels (Conv2d);
            ``stages.model.calib.removed_consumer_inputs`` derives it from a plan.
        stats: Calibration input statistics of those layers, taken on the unpruned model.

    Returns:
        Layer name -> shift ``(out_channels,)`` in float64.
    """
    modules = dict(model.named_modules())
    missing = [n for n, cols in removed.items() if list(cols) and n not in stats]
    if missing:
        raise KeyError(f"no calibration statistics for {', '.join(missing)}: collect them on these layers")
    return {name: masked_shift(modules[name], removed_input_mask(modules[name], cols), stats[name])
            for name, cols in removed.items() if list(cols)}


@torch.no_grad()
def bn_successors(model: nn.Module, example_input: torch.Tensor) -> dict[str, str]:
    """Linear/Conv2d layer -> the BatchNorm that is the only module consuming its output.

    Found by tensor identity in one forward pass. Functional consumers (``x + y`` in a forward
    method) are invisible to hooks; a bias-less conv whose raw output is also used functionally
    would be mis-detected, which no torchvision / CIFAR ResNet block does.
    """
    modules = dict(model.named_modules())
    produced: dict[int, tuple[str, torch.Tensor]] = {}
    users: dict[int, list[str]] = {}
    hooks = []

    def on_out(name):
        def fn(mod, inp, out):
            if isinstance(out, torch.Tensor):
                produced[id(out)] = (name, out)  # keep a reference: ids are not reused
        return fn

    def on_in(name):
        def fn(mod, inputs):
            for t in inputs:
                if isinstance(t, torch.Tensor) and id(t) in produced:
                    users.setdefault(id(t), []).append(name)
        return fn

    for name, m in modules.items():
        if len(list(m.children())) == 0:
            hooks.append(m.register_forward_pre_hook(on_in(name)))
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            hooks.append(m.register_forward_hook(on_out(name)))
    was_training = model.training
    model.eval()
    try:
        model(example_input)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    out = {}
    for key, (name, _) in produced.items():
        u = users.get(key, [])
        if len(u) == 1 and isinstance(modules[u[0]], nn.modules.batchnorm._BatchNorm) \
                and modules[u[0]].running_mean is not None:
            out[name] = u[0]
    return out


@torch.no_grad()
def add_output_shift(model: nn.Module, shifts: Mapping[str, torch.Tensor], bn_after: Mapping[str, str] | None = None,
                     kept_out: Mapping[str, Iterable[int]] | None = None) -> list[str]:
    """Add per-output-channel shifts to layers, in place.

    Args:
        model: The model to change.
        shifts: Layer name -> shift in the layer's original output indexing.
        bn_after: Layer -> BatchNorm fed only by it (:func:`bn_successors`); used for bias-less
            layers, whose shift lowers the BN's running mean instead of creating a bias.
        kept_out: For a model already pruned: layer name -> original indices of the output
            channels it kept (in order). Without it, a shift must match the current width.

    Returns:
        The layers that received a new bias Parameter (their ``state_dict`` gains a key; see
        :func:`ensure_bias_params` for loading such a checkpoint).
    """
    modules = dict(model.named_modules())
    created = []
    for name, d in shifts.items():
        layer = modules[name]
        if kept_out is not None and name in kept_out:
            d = d[torch.as_tensor(list(kept_out[name]), dtype=torch.long)]
        if d.shape[0] != layer.weight.shape[0]:
            raise ValueError(f"shift for {name} has {d.shape[0]} channels, the layer {layer.weight.shape[0]}: "
                             "pass kept_out for a pruned model, or apply before pruning")
        w = layer.weight
        if layer.bias is not None:
            layer.bias.add_(d.to(layer.bias.device, layer.bias.dtype))
        elif bn_after and name in bn_after:
            bn = modules[bn_after[name]]
            bn.running_mean.sub_(d.to(bn.running_mean.device, bn.running_mean.dtype))
        else:
            layer.bias = nn.Parameter(d.to(w.device, w.dtype).clone())
            created.append(name)
    return created


def ensure_bias_params(model: nn.Module, state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Create zero biases on layers that lack one but whose ``state_dict`` entry exists.

    Needed to load a checkpoint written after compensation created biases (replaying a plan on
    the original architecture gives bias-less layers). Returns the layers changed.
    """
    modules = dict(model.named_modules())
    made = []
    for key, v in state_dict.items():
        name, _, leaf = key.rpartition(".")
        layer = modules.get(name)
        if leaf == "bias" and isinstance(layer, (nn.Linear, nn.Conv2d)) and layer.bias is None:
            layer.bias = nn.Parameter(torch.zeros(v.shape, dtype=layer.weight.dtype, device=layer.weight.device))
            made.append(name)
    return made
