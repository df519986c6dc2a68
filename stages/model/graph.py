"""The only module that imports ``torch_pruning`` (pinned 1.6.1).

It wraps four things Torch-Pruning does well, behind names that do not leak its types:

- building the dependency graph and listing the prunable *groups* (coupled channels across
  residual adds, concatenations, depthwise convs, BN ...);
- Torch-Pruning's own group importance criteria (magnitude, BN scale, Taylor, Hessian);
- removing channels of a group by index, and counting MACs / params.
- attention heads (:mod:`stages.model.attention`): a group that prunes the q/k/v projections
  of a self-attention carries its ``heads`` and ``head_dim``; its channels are removed in whole
  heads only, and the attention module's attributes are synced after pruning.
- in a transformer (a model with recognised self-attention) only the attention groups and the
  *inner* groups (the FFN neurons: Linear producers read by one Linear, no norm layer) are
  prunable; the residual (hidden) width is held, so the output keeps its size and no LayerNorm
  is cut.

A group is identified by the name of its root module (the first conv/linear whose output
channels the group prunes). The ids are stable for the same architecture, which is what makes a
pruning plan replayable on a fresh copy of the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from core.errors import StageError
from stages.model.attention import AttentionSite, attention_sites, held_attention, probe_sites

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
    heads: int = 0  # attention groups: the number of heads (channel c is head (c // head_dim) % heads)
    head_dim: int = 0
    # grouped convolutions (ResNeXt, RegNet): the channels are split into this many conv groups of
    # width / channel_groups; a cut must remove the same positions from every conv group (0: no constraint)
    channel_groups: int = 0

    def head_of(self, channel: int) -> int | None:
        """The attention head a channel belongs to (None outside attention groups)."""
        return (channel // self.head_dim) % self.heads if self.heads else None

    @property
    def units(self) -> int:
        """How many removable units the group has: heads, positions inside a conv group, or channels."""
        if self.heads:
            return self.heads
        return self.width // self.channel_groups if self.channel_groups > 1 else self.width

    def unit_of(self, channel: int) -> int:
        """The unit a channel is removed with: its head, its position inside its conv group, or itself."""
        if self.heads:
            return (channel // self.head_dim) % self.heads
        return channel % self.units if self.channel_groups > 1 else channel


@dataclass(frozen=True)
class ChannelSlice:
    """Entries ``index`` along axis ``dim`` of parameter ``name`` carry the group's channels ``channel``."""

    name: str
    dim: int
    index: torch.Tensor
    channel: torch.Tensor


def find_classifier(model: nn.Module, example_input: torch.Tensor) -> str | None:
    """Name of the last conv/linear executed in a forward pass: the classifier head, never pruned."""
    return _output_walk(model, example_input)[1]


def output_layers(model: nn.Module, example_input: torch.Tensor) -> list[str]:
    """Every conv/linear whose output channels reach the model's output with no other conv/linear between:
    pruning any of them would change the output's size. A classifier has one (its head); a detector has
    one per branch of its head (YOLO's box and class convs). A frozen layer (no parameter requiring
    grad, e.g. YOLO's DFL, a fixed projection) is an operator, not a learned layer: it is held and the walk
    goes on through it. Found by walking the autograd graph of one forward pass back from the output; empty
    when the output carries no autograd graph. In a model whose output is its residual stream (a sentence
    encoder) these include every layer writing into that stream: a width transformers hold anyway."""
    return _output_walk(model, example_input)[0]


def _output_walk(model: nn.Module, example_input: torch.Tensor) -> tuple[list[str], str | None]:
    """(:func:`output_layers`, the last conv/linear executed: :func:`find_classifier`) from one forward pass."""
    names = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    rank = {n: i for i, n in enumerate(names.values())}
    made: dict[object, tuple[str, bool]] = {}  # output grad_fn -> (layer name, frozen)
    order: list[str] = []

    def record(mod, _inp, out):
        order.append(names[mod])
        if isinstance(out, torch.Tensor) and out.grad_fn is not None:
            made[out.grad_fn] = (names[mod], not any(p.requires_grad for p in mod.parameters()))

    hooks = [m.register_forward_hook(record) for m in names]
    x = example_input.detach().clone().requires_grad_(example_input.is_floating_point())
    try:
        with torch.enable_grad():
            out = model(x)
    finally:
        for h in hooks:
            h.remove()
    found: set[str] = set()
    todo = [out.grad_fn] if isinstance(out, torch.Tensor) and out.grad_fn is not None else []
    seen: set[int] = set()
    while todo:
        fn = todo.pop()
        if id(fn) in seen:
            continue
        seen.add(id(fn))
        if fn in made:
            name, frozen = made[fn]
            found.add(name)
            if not frozen:
                continue
        todo.extend(nf for nf, _ in fn.next_functions if nf is not None)
    return sorted(found, key=rank.__getitem__), (order[-1] if order else None)


def detach_caches(model: nn.Module) -> None:
    """Tensors a module cached from a forward pass with autograd on (timm LeViT's attention-bias cache, a dict
    attribute) carry a graph, and ``copy.deepcopy`` refuses non-leaf tensors: the tracing and output-layer
    passes leave them detached."""
    for m in model.modules():
        for key, value in vars(m).items():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None:
                setattr(m, key, value.detach())
            elif isinstance(value, dict) and key not in ("_parameters", "_buffers", "_modules"):
                for k, v in list(value.items()):
                    if isinstance(v, torch.Tensor) and v.grad_fn is not None:
                        value[k] = v.detach()


def declared_held(model: nn.Module) -> list[str]:
    """Layers a model adapter declares held: a submodule with a ``pipeline_held`` attribute (names relative to
    itself, e.g. :class:`stages.load.yolo.YoloNet`'s attention inside YOLO11's C2PSA) holds their output channels."""
    return [f"{name}.{h}" if name else h for name, m in model.named_modules() for h in getattr(m, "pipeline_held", ())]


class PruneGraph:
    """Torch-Pruning's dependency graph for one model instance (pruned in place).

    Args:
        model: The model to analyse; ``prune`` modifies it in place.
        example_input: One batch used for tracing.
        ignore: Module names never pruned (the classifier and every other output layer,
            :func:`output_layers`, are always added).
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, ignore: Sequence[str] = ()) -> None:
        self.model = model
        self.example_input = example_input
        modules = dict(model.named_modules())
        outputs, head = _output_walk(model, example_input)
        named = tuple(dict.fromkeys([*ignore, *([head] if head else [])]))
        # attention sites are skipped for the user's holds only: an output layer such as an attention's output
        # projection writing into the residual stream is held as an out-channel producer, not as a head site
        self.ignored_names = tuple(dict.fromkeys([*named, *outputs, *declared_held(model)]))
        unknown = [n for n in self.ignored_names if n not in modules]
        if unknown:
            raise KeyError(", ".join(unknown))
        self._ignored = [modules[n] for n in self.ignored_names]
        self._sites = attention_sites(model, skip=named)
        probe_sites(model, example_input, self._sites)
        self._held_mha = held_attention(model)
        self._dg = _dependency_graph(model, example_input)
        detach_caches(model)
        self._names = {m: n for n, m in model.named_modules()}
        self._cache: list[tuple[GroupInfo, object]] | None = None
        self._unmapped: list[str] = []  # groups held because Torch-Pruning's channel mapping cannot be used

    def _tp_groups(self) -> list[tuple[GroupInfo, object]]:
        if self._cache is not None:
            return self._cache
        roots = {s.group_root: s for s in self._sites if s.held is None}
        owned = {layer: s for s in self._sites for layer in s.layers}
        transformer = bool(self._sites or self._held_mha)
        with _deadline(GROUPING_DEADLINE_S):
            out = self._collect_groups(roots, owned, transformer)
        self._cache = out
        return out

    def _collect_groups(self, roots: Mapping[str, AttentionSite], owned: Mapping[str, AttentionSite],
                        transformer: bool) -> list[tuple[GroupInfo, object]]:
        out = []
        raw = self._transformer_groups(roots, owned) if transformer else \
            self._dg.get_all_groups(ignored_layers=self._ignored)
        for g in raw:
            root = g[0].dep.target.module
            bad = self._unmappable(g)
            if bad is not None:
                self._unmapped.append(f"{self._names.get(root, '?')}: held (Torch-Pruning {TP_VERSION} cannot map "
                                      f"its channels: {bad})")
                continue
            outs, ins = [], []
            for dep, _ in g:
                name = self._names.get(dep.target.module)
                if name is None:
                    continue
                (outs if self._dg.is_out_channel_pruning_fn(dep.handler) else ins).append(name)
            info = GroupInfo(self._names[root], len(g[0].idxs), tuple(dict.fromkeys(outs)), tuple(dict.fromkeys(ins)))
            site = next((roots[n] for n in (info.id, *info.out_layers) if n in roots), None)
            if site is not None and site.width == info.width:
                info = GroupInfo(info.id, info.width, info.out_layers, info.in_layers, site.heads, site.head_dim)
            elif (cg := _conv_groups(g, info.width)) > 1:
                info = GroupInfo(info.id, info.width, info.out_layers, info.in_layers, channel_groups=cg)
            elif any(n in owned for n in (*info.out_layers, *info.in_layers)) or \
                    (transformer and not (self._inner(info) or self._conv_group(info))):
                continue  # attention layers outside their head group, a held attention, a residual width: held
            out.append((info, g))
        return out

    def _unmappable(self, g) -> str | None:
        """Why Torch-Pruning's channel mapping of a group cannot be used, else None: the first layer where its
        indices exceed the layer's width (a split / reshape it does not follow: YOLO's chunked convs, EfficientViT's
        and LeViT's attention), or its own magnitude importance failing on it (FastViT). Such a group cannot be
        scored or cut; it is held, never crashed on."""
        for dep, idxs in g:
            if not isinstance(dep.target.module, nn.Module):
                continue  # an unwrapped parameter (Swin's relative-position bias): its own rule maps it, by head
            try:
                fn = self._dg.get_out_channels if self._dg.is_out_channel_pruning_fn(dep.handler) else \
                    self._dg.get_in_channels
                width = fn(dep.target)
            except (AttributeError, KeyError, TypeError):
                continue
            if width and idxs and max(int(getattr(i, "idx", i)) for i in idxs) >= width:
                return f"indices out of range at {self._names.get(dep.target.module, type(dep.target.module).__name__)}"
        try:  # the cheapest of its own criteria, as every criterion indexes the group's layers (FastViT: depthwise
            tp.importance.GroupMagnitudeImportance(p=2)(g)  # 1x1 convs taken by their in-channels)
        except (IndexError, RuntimeError) as e:
            return f"scoring ({type(e).__name__}: {str(e).splitlines()[0][:80]})"
        return None

    def _transformer_groups(self, roots: Mapping[str, AttentionSite], owned: Mapping[str, AttentionSite]) -> list:
        """A transformer's candidate groups only: its prunable attention roots and the Linear layers whose output
        reaches nothing but Linear inputs through element-wise ops (FFN neurons). Asking Torch-Pruning for every
        group would follow the residual width through reshapes (window partitions), where its index mapping
        grows without bound (torchvision swin_t: out of memory); those groups are held anyway."""
        modules = dict(self.model.named_modules())
        ignored = set(self._ignored)
        cands = [modules[n] for n in roots if n in modules]
        cands += [m for n, m in modules.items() if isinstance(m, nn.Linear) and n not in owned and m not in ignored
                  and self._feeds_linears_only(m)]
        cands += [m for n, m in modules.items() if isinstance(m, nn.modules.conv._ConvNd) and n not in owned
                  and m not in ignored and self._conv_local(m)]  # hybrids (a U-Net's convs around its attention)
        out, covered = [], set()
        for m in cands:
            if m in covered:
                continue
            fn = self._dg.get_pruner_of_module(m).prune_out_channels
            g = self._dg.get_pruning_group(m, fn, idxs=list(range(self._dg.get_out_channels(m))))
            covered |= {dep.target.module for dep, _ in g if self._dg.is_out_channel_pruning_fn(dep.handler)}
            out.append(g)
        return out

    def _reaches_only(self, layer: nn.Module, targets: tuple, passes: tuple) -> bool:
        """The layer's output reaches at least one node of a type in ``targets`` and nothing else, through nodes of
        a type in ``passes`` (Torch-Pruning op types)."""
        node = self._dg.module2node.get(layer)
        if node is None:
            return False
        todo, seen, reached = list(node.outputs), set(), False
        while todo:
            n = todo.pop()
            if id(n) in seen:
                continue
            seen.add(id(n))
            if n.type in targets:
                reached = True
            elif n.type in passes:
                todo.extend(n.outputs)
            else:
                return False
        return reached

    def _feeds_linears_only(self, layer: nn.Module) -> bool:
        """The layer's output reaches only Linear layers, through element-wise ops (activations, gating) and views
        (a Linear on [B, L, C] views)."""
        ops = tp.ops.OPTYPE
        return self._reaches_only(layer, (ops.LINEAR,), (ops.ELEMENTWISE, ops.RESHAPE))

    def _conv_local(self, layer: nn.Module) -> bool:
        """The conv's output reaches only convolutions, through norms, element-wise ops and concatenations (no
        reshape, no Linear): a CNN channel group inside a model that also has attention, safe to ask Torch-Pruning
        for (a stream that is reshaped into tokens, a ViT's patch embedding, is not)."""
        ops = tp.ops.OPTYPE
        return self._reaches_only(layer, (ops.CONV, ops.DEPTHWISE_CONV),
                                  (ops.ELEMENTWISE, ops.CONCAT, ops.BN, ops.GN, ops.IN))

    def _conv_group(self, info: GroupInfo) -> bool:
        """A group with a convolution among its producers (a CNN group of a hybrid model; a Linear may add to
        it, as a U-Net's timestep projection does)."""
        modules = dict(self.model.named_modules())
        return any(isinstance(modules[n], nn.modules.conv._ConvNd) for n in info.out_layers)

    def _inner(self, info: GroupInfo) -> bool:
        """An FFN-like group: Linear producers, no norm layer, read by Linear layers only."""
        modules = dict(self.model.named_modules())
        return (bool(info.in_layers) and all(isinstance(modules[n], nn.Linear) for n in info.out_layers)
                and all(isinstance(modules[n], nn.Linear) for n in info.in_layers))

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

    def out_slices(self) -> dict[str, list[ChannelSlice]]:
        """Per group id, the parameter entries that *produce* each of its channels: a conv's output
        filter (``dim`` 0; a transposed conv with ``groups == 1``: ``dim`` 1) and bias entry, a
        Linear's output row and bias entry, a norm layer's weight and bias entry. ``index[i]`` of a
        slice is the entry of the parameter along ``dim`` that carries group channel ``channel[i]``.

        With all of them at 0 a channel's output is 0 wherever it is read (activations with
        f(0) = 0; a BatchNorm with zero weight and bias outputs 0), so its removal is exact; the
        consumers' input columns are not included (DPM's decay, :mod:`stages.recover.dpm`).
        Coupled layers (residual adds) each contribute once.
        """
        params = dict(self.model.named_parameters())
        out: dict[str, list[ChannelSlice]] = {}
        for info, g in self._tp_groups():
            slices: list[ChannelSlice] = []
            seen: set[int] = set()
            for i, (dep, idxs) in enumerate(g):
                layer = dep.target.module
                name = self._names.get(layer)
                root_idxs = g[i].root_idxs
                if (name is None or id(layer) in seen or not self._dg.is_out_channel_pruning_fn(dep.handler)
                        or any(r is None for r in root_idxs)):
                    continue
                seen.add(id(layer))
                dim = _out_dim(layer)
                if dim is None:
                    continue
                index = torch.as_tensor(list(idxs), dtype=torch.long)
                channel = torch.as_tensor(list(root_idxs), dtype=torch.long)
                for pname, dims in ((f"{name}.weight", dim), (f"{name}.bias", 0)):
                    p = params.get(pname)
                    if p is not None and (dims == 0 or p.dim() > dims):
                        slices.append(ChannelSlice(pname, dims, index, channel))
            out[info.id] = slices
        return out

    def site_index(self) -> dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]]:
        """Per group id, for each of its :meth:`channel_sites` whose output does not carry the group's channels
        as its own channels ``0..width-1`` in order (a norm after a concatenation, a U-Net decoder's): ``(index,
        channel)``, output channel ``index[i]`` carrying group channel ``channel[i]``. Sites absent here map
        one to one."""
        sites = self.channel_sites()
        out: dict[str, dict[str, tuple[torch.Tensor, torch.Tensor]]] = {}
        for info, g in self._tp_groups():
            maps: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
            for i, (dep, idxs) in enumerate(g):
                name = self._names.get(dep.target.module)
                root = g[i].root_idxs
                if name not in sites.get(info.id, ()) or name in maps or any(r is None for r in root):
                    continue
                index = torch.as_tensor(list(idxs), dtype=torch.long)
                channel = torch.as_tensor(list(root), dtype=torch.long)
                width = _site_width(dep.target.module)
                if not (width == info.width and torch.equal(index, channel)):
                    maps[name] = (index, channel)
            out[info.id] = maps
        return out

    def channel_sites(self) -> dict[str, tuple[str, ...]]:
        """Per group id, the modules whose outputs carry the group's channels downstream.

        These are the group's norm layers (BatchNorm, LayerNorm, GroupNorm) and the conv/linear
        producers whose output is read by anything other than the group's norm layers (a U-Net stem
        feeds a norm *and* the residual add: it is a site). A site's output may carry the group's
        channels at an offset (a norm after a concatenation): :meth:`site_index`. Zeroing
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
                    if node is not None and node.outputs and all(n.module in norms for n in node.outputs):
                        continue
                keep.append(self._names[m])
            sites[info.id] = tuple(keep)
        return sites

    def prune(self, remove: dict[str, list[int]]) -> None:
        """Remove the given channel indices of each group (by group id), in place. Attention groups lose
        whole heads only (a cut inside a head is a StageError); their modules are synced after."""
        modules = dict(self.model.named_modules())
        infos = {info.id: info for info, _ in self._tp_groups()}
        sites = {site.group_root: site for site in self._sites}
        for gid, idxs in remove.items():
            if not idxs:
                continue
            info = infos.get(gid)
            idxs = sorted(int(i) for i in idxs)
            if info is not None and info.channel_groups > 1:
                consistent_positions(info, idxs)
            if info is not None and info.heads:
                heads = whole_heads(info, idxs)
                site = next(sites[n] for n in info.out_layers if n in sites)
                if site.prune_heads(heads):
                    continue  # the site removed them itself (fused qkv, grouped-query attention)
            root = modules[gid]
            fn = self._dg.get_pruner_of_module(root).prune_out_channels
            group = self._dg.get_pruning_group(root, fn, idxs=idxs)
            group.prune()
        for site in self._sites:
            site.sync()
        self._cache = None

    def heads(self) -> dict[str, int]:
        """Group id -> number of attention heads, for the attention groups."""
        return {info.id: info.heads for info, _ in self._tp_groups() if info.heads}

    @property
    def attention(self) -> list[AttentionSite]:
        """The recognised self-attention modules (``held`` says why a site's heads stay)."""
        return list(self._sites)

    def held_notes(self) -> list[str]:
        """One line per attention module whose heads are held, and per group held because its channel mapping cannot
        be used, with the reason."""
        notes = [f"{s.name}: heads held ({s.held})" for s in self._sites if s.held]
        notes += [f"{n}: heads held (nn.MultiheadAttention packs q/k/v with the residual width; FFN pruned)"
                  for n in self._held_mha]
        self._tp_groups()
        return notes + self._unmapped


GROUPING_DEADLINE_S = 120  # Torch-Pruning's group enumeration; seconds on the models here, unbounded on MaxViT


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """A StageError if the block runs longer than ``seconds`` (main thread only: SIGALRM; elsewhere no limit).
    Torch-Pruning 1.6.1's group enumeration does not end on some models (MaxViT: 14 GB in 8 minutes)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(_sig, _frame):
        raise StageError(f"Torch-Pruning {TP_VERSION} did not finish grouping this model's channels in {seconds:g} s "
                         "(its dependency search does not end on some attention / window models, e.g. MaxViT)",
                         hint="this model is not prunable here; docs/models.md lists what is refused")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _dependency_graph(model: nn.Module, example_input: torch.Tensor):
    """Torch-Pruning's dependency graph; a model it cannot trace is one StageError naming the construct."""
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, verbose=False)
    except (ArithmeticError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:
        import traceback

        where = traceback.extract_tb(e.__traceback__)[-1].name
        what = ("a reshape / view that regroups channels (e.g. ShuffleNet's channel shuffle)" if "reshape" in where
                else "a channel concatenation or split it cannot map" if "concat" in where or "split" in where
                else f"an operation it cannot map ({where})")
        raise StageError(f"Torch-Pruning {TP_VERSION} cannot trace this model's channel dependencies: {what} "
                         f"[{type(e).__name__}]",
                         hint="this model is not prunable here; docs/models.md lists what is refused") from None


def _conv_groups(g, width: int) -> int:
    """The number of conv groups a Torch-Pruning group's channels are split into by the grouped (not depthwise)
    convolutions it touches (their least common multiple), or 0."""
    counts = {dep.target.module.groups for dep, _ in g
              if isinstance(dep.target.module, nn.modules.conv._ConvNd)
              and 1 < dep.target.module.groups < dep.target.module.in_channels}
    cg = math.lcm(*counts) if counts else 0
    return cg if cg > 1 and width % cg == 0 else 0


def consistent_positions(info: GroupInfo, idxs: Sequence[int]) -> None:
    """A grouped-convolution group's cut must remove the same positions from every conv group (what
    Torch-Pruning's grouped-conv pruner assumes); anything else is a StageError, never an unrunnable graph."""
    per = info.units
    by_pos: dict[int, int] = {}
    for c in idxs:
        by_pos[c % per] = by_pos.get(c % per, 0) + 1
    partial = sorted(p for p, n in by_pos.items() if n != info.channel_groups)
    if partial:
        raise StageError(f"group '{info.id}': the plan removes channels of a grouped convolution unevenly "
                         f"(positions {partial[:5]} not cut in all {info.channel_groups} conv groups)",
                         hint="use a policy.json written by `pipeline run` for this model")


def whole_heads(info: GroupInfo, idxs: Sequence[int]) -> list[int]:
    """The heads whose every channel is in ``idxs``; a channel of a head not wholly removed is a StageError."""
    by_head: dict[int, int] = {}
    for c in idxs:
        h = info.head_of(c)
        by_head[h] = by_head.get(h, 0) + 1
    per_head = info.width // info.heads
    partial = sorted(h for h, n in by_head.items() if n != per_head)
    if partial:
        raise StageError(f"group '{info.id}': the plan cuts inside attention heads {partial[:5]} (whole heads only)",
                         hint="use a policy.json written by `pipeline run` for this model")
    return sorted(by_head)


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs and parameter count from Torch-Pruning's op counter (batch of ``example_input``)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)


def _site_width(layer: nn.Module) -> int | None:
    """The channel count of a site's output (conv / linear outputs, norm features)."""
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        if isinstance(getattr(layer, attr, None), int):
            return int(getattr(layer, attr))
    shape = getattr(layer, "normalized_shape", None)
    return int(shape[-1]) if shape else None


def _out_dim(layer: nn.Module) -> int | None:
    """The axis of ``layer.weight`` that holds its output channels (None: not a producer we decay)."""
    if isinstance(layer, nn.modules.conv._ConvNd):
        if layer.transposed:
            return 1 if layer.groups == 1 else None
        return 0
    if isinstance(layer, nn.Linear):
        return 0
    if isinstance(layer, _NORMS) and getattr(layer, "weight", None) is not None and layer.weight.dim() == 1:
        return 0
    return None


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
