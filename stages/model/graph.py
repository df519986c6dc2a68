"""The only module that imports ``torch_pruning`` (pinned 1.6.1).

It wraps four things Torch-Pruning does well, behind names that do not leak its types:

- building the dependency graph and listing the prunable *groups* (coupled channels across
  residual adds, concatenations, depthwise convs, BN ...);
- Torch-Pruning's own group importance criteria (magnitude, BN scale, Taylor, Hessian);
- removing channels of a group by index, and counting MACs / params.
- attention heads of BERT-style encoders: which groups hold q/k/v heads (:meth:`PruneGraph.heads`),
  and the module attributes fixed after whole heads are removed (:func:`sync_attention_heads`).

A group is identified by the name of its root module (the first conv/linear whose output
channels the group prunes). The ids are stable for the same architecture, which is what makes a
pruning plan replayable on a fresh copy of the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

TP_VERSION = "1.6.1"


@dataclass(frozen=True)
class GroupInfo:
    """One prunable group.

    Attributes:
        id: Name of the root module.
        width: Number of prunable channels.
        out_layers: Modules (conv, linear, norm) whose output channels this group removes.
        in_layers: Modules whose input channels this group removes.
    """

    id: str
    width: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]


def find_classifier(model: nn.Module, example_input: torch.Tensor) -> str | None:
    """Name of the last conv/linear executed in a forward pass: the classifier head, never pruned."""
    order: list[str] = []
    names = {m: n for n, m in model.named_modules()}
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod]))
             for m in model.modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    return order[-1] if order else None


class PruneGraph:
    """Torch-Pruning's dependency graph for one model instance (pruned in place).

    Args:
        model: The model to analyse; ``prune`` modifies it in place.
        example_input: One batch used for tracing.
        ignore: Module names never pruned (the classifier is always added).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = ()) -> None:
        self.model = model
        self.example_input = example_input
        modules = dict(model.named_modules())
        head = find_classifier(model, example_input)
        self.ignored_names = tuple(dict.fromkeys([*ignore, *([head] if head else [])]))
        unknown = [n for n in self.ignored_names if n not in modules]
        if unknown:
            raise KeyError(", ".join(unknown))
        self._ignored = [modules[n] for n in self.ignored_names]
        self._dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
        self._names = {m: n for n, m in model.named_modules()}

    def _tp_groups(self) -> list[tuple[GroupInfo, object]]:
        out = []
        for g in self._dg.get_all_groups(ignored_layers=self._ignored):
            root = g[0].dep.target.module
            outs, ins = [], []
            for dep, _ in g:
                name = self._names.get(dep.target.module)
                if name is None:
                    continue
                (outs if self._dg.is_out_channel_pruning_fn(dep.handler) else ins).append(name)
            info = GroupInfo(self._names[root], len(g[0].idxs), tuple(dict.fromkeys(outs)), tuple(dict.fromkeys(ins)))
            out.append((info, g))
        return out

    def groups(self) -> list[GroupInfo]:
        """Prunable groups in graph order."""
        return [info for info, _ in self._tp_groups()]

    def importance(self, kind: str, **kwargs: object) -> dict[str, torch.Tensor]:
        """Torch-Pruning's group importance, one score per channel (higher = keep).

        Args:
            kind: ``magnitude`` (kwarg ``p``), ``bn_scale``, ``taylor`` or ``hessian``. Taylor and
                Hessian read gradients the caller accumulated on the model beforehand; Hessian reads
                ``param.grad`` as the Hessian diagonal (put the mean squared per-sample gradient there:
                1.6.1's own ``accumulate_grad`` keeps only the last sample, see ``stages/score/hessian.py``).
        """
        factories = {
            "magnitude": tp.importance.GroupMagnitudeImportance,
            "bn_scale": tp.importance.BNScaleImportance,
            "taylor": tp.importance.GroupTaylorImportance,
            "hessian": tp.importance.GroupHessianImportance,
        }
        imp = factories[kind](**kwargs)
        scores = {}
        for info, g in self._tp_groups():
            s = imp(g)
            if s is None:  # e.g. bn_scale on a group without BN
                s = torch.zeros(info.width)
            scores[info.id] = s.detach().float().cpu()
        return scores

    def group_sum(self, per_param: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Sum a per-parameter tensor over each group's channels, one value per channel.

        For every layer of a group, the entries of ``per_param[name]`` (a tensor shaped like the
        parameter ``name`` of ``model.named_parameters()``) that Torch-Pruning would remove together
        with a channel are added up: a conv/linear producer's output row and its bias entry, a
        norm layer's weight and bias entry, a consumer's input column over all its output rows and
        kernel taps (depthwise convs exact; a grouped conv's input column counts the rows of its
        own group, though Torch-Pruning 1.6.1 leaves a grouped conv unrunnable when it removes its
        inputs; a ``flatten`` before a Linear is mapped to its ``H*W`` columns by Torch-Pruning's
        index mapping). Coupled layers (residual adds)
        each contribute once. Layers other than conv, linear and norm layers are skipped, as in
        Torch-Pruning's own importance criteria; parameters missing from ``per_param`` count as 0.
        """
        out: dict[str, torch.Tensor] = {}
        for info, g in self._tp_groups():
            total = torch.zeros(info.width, dtype=torch.float64)
            seen: set[tuple[int, bool]] = set()
            for i, (dep, idxs) in enumerate(g):
                layer = dep.target.module
                name = self._names.get(layer)
                is_out = bool(self._dg.is_out_channel_pruning_fn(dep.handler))
                root_idxs = g[i].root_idxs
                if name is None or (id(layer), is_out) in seen or any(r is None for r in root_idxs):
                    continue
                seen.add((id(layer), is_out))
                vec = _per_channel(layer, name, is_out, per_param)
                if vec is None:
                    continue
                vec = vec.detach().to("cpu", torch.float64)[torch.as_tensor(list(idxs), dtype=torch.long)]
                total.scatter_add_(0, torch.as_tensor(list(root_idxs), dtype=torch.long), vec)
            out[info.id] = total.float()
        return out

    def channel_sites(self) -> dict[str, tuple[str, ...]]:
        """Per group id, the modules whose outputs carry the group's channels downstream.

        These are the group's norm layers (BatchNorm, LayerNorm, GroupNorm) and the conv/linear
        producers whose output does not go straight into one of the group's norm layers. Zeroing
        channel ``c`` at every site zeroes it wherever the network reads it (for activations with
        f(0) = 0), which makes removing the channel exact.
        """
        sites: dict[str, tuple[str, ...]] = {}
        for info, g in self._tp_groups():
            outs = []
            for dep, _ in g:
                layer = dep.target.module
                if (layer in self._names and self._dg.is_out_channel_pruning_fn(dep.handler)
                        and isinstance(layer, (*_NORMS, nn.Linear, nn.modules.conv._ConvNd)) and layer not in outs):
                    outs.append(layer)
            norms = {m for m in outs if isinstance(m, _NORMS)}
            keep = []
            for m in outs:
                if not isinstance(m, _NORMS):
                    node = self._dg.module2node.get(m)
                    if node is not None and any(n.module in norms for n in node.outputs):
                        continue
                keep.append(self._names[m])
            sites[info.id] = tuple(keep)
        return sites

    def prune(self, remove: dict[str, list[int]]) -> None:
        """Remove the given channel indices of each group (by group id), in place."""
        modules = dict(self.model.named_modules())
        for gid, idxs in remove.items():
            if not idxs:
                continue
            root = modules[gid]
            fn = self._dg.get_pruner_of_module(root).prune_out_channels
            group = self._dg.get_pruning_group(root, fn, idxs=sorted(int(i) for i in idxs))
            group.prune()
        sync_attention_heads(self.model)

    def heads(self) -> dict[str, int]:
        """Group id -> number of attention heads, for groups that prune the q/k/v projections of a
        BERT-style self-attention (:func:`attention_heads`). Head ``h`` of such a group is the
        contiguous channel block ``[h * head_size, (h + 1) * head_size)`` of the root's channels."""
        qkv = attention_heads(self.model)
        out = {}
        for info in self.groups():
            shapes = {qkv[n] for n in info.out_layers if n in qkv}
            if len(shapes) == 1:
                heads, size = shapes.pop()
                if heads * size == info.width:
                    out[info.id] = heads
        return out


def _self_attentions(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """BERT-style self-attention modules (Hugging Face ``BertSelfAttention`` and look-alikes):
    Linear ``query``/``key``/``value`` plus ``num_attention_heads``, ``attention_head_size``,
    ``all_head_size`` attributes. Found by these attributes, so transformers is never imported."""
    keys = ("num_attention_heads", "attention_head_size", "all_head_size")
    return [(n, m) for n, m in model.named_modules()
            if all(hasattr(m, k) for k in keys)
            and all(isinstance(getattr(m, p, None), nn.Linear) for p in ("query", "key", "value"))]


def attention_heads(model: nn.Module) -> dict[str, tuple[int, int]]:
    """q/k/v projection name -> (number of heads, head size) of every BERT-style self-attention."""
    out = {}
    for name, m in _self_attentions(model):
        for p in ("query", "key", "value"):
            out[f"{name}.{p}" if name else p] = (int(m.num_attention_heads), int(m.attention_head_size))
    return out


def sync_attention_heads(model: nn.Module) -> None:
    """After whole heads were removed: set ``num_attention_heads`` and ``all_head_size`` of every
    BERT-style self-attention from its pruned ``query`` width, as Torch-Pruning's Hugging Face BERT
    example does (``attention_head_size`` is kept: whole heads go, head dims stay).

    A width that is not a multiple of the head size (channels cut inside heads) is left alone:
    the forward pass then fails and ``apply_plan``'s check reports it.
    """
    for _, m in _self_attentions(model):
        width = m.query.out_features
        if width % m.attention_head_size == 0 and m.key.out_features == width:
            m.num_attention_heads = width // m.attention_head_size
            m.all_head_size = width


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs and parameter count from Torch-Pruning's op counter (batch of ``example_input``)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _per_channel(layer: nn.Module, name: str, is_out: bool, per_param: Mapping[str, torch.Tensor]) -> torch.Tensor | None:
    """``per_param``'s entries of one layer summed per output (``is_out``) or input channel."""
    w, b = per_param.get(f"{name}.weight"), per_param.get(f"{name}.bias")
    if isinstance(layer, nn.modules.conv._ConvNd):
        if w is None:
            return None
        grp = layer.groups
        if layer.transposed:  # weight: (in, out / groups, *kernel)
            if not is_out:
                return w.flatten(1).sum(1)
            v = w.reshape(grp, w.shape[0] // grp, w.shape[1], -1).sum((1, 3)).flatten()
        else:  # weight: (out, in / groups, *kernel)
            if not is_out:
                return w.reshape(grp, w.shape[0] // grp, w.shape[1], -1).sum((1, 3)).flatten()
            v = w.flatten(1).sum(1)
        return v + b if b is not None else v
    if isinstance(layer, nn.Linear):
        if w is None:
            return None
        if not is_out:
            return w.sum(0)
        return w.sum(1) + b if b is not None else w.sum(1)
    if isinstance(layer, _NORMS) and is_out:  # one weight and bias entry per channel (1-D affine only)
        parts = [t for t in (w, b) if t is not None and t.dim() == 1]
        return sum(parts) if parts else None
    return None
