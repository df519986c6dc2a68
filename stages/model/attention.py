"""Self-attention modules the pruner knows, found by their attributes (no model library is imported).

Each kind is an :class:`AttentionSite`: which Torch-Pruning group holds its heads (``group_root``,
a module whose output channels the group prunes), how many heads and of what size, how whole heads
are removed and how the module's attributes are synced after. A head is never cut in the middle.

=====================  ====================================  =================================================
kind                   found by                              heads removed by
=====================  ====================================  =================================================
BERT-style (HF Bert,   Linear ``query``/``key``/``value`` +   Torch-Pruning's group (q, k, v rows and the
MiniLM, RoBERTa ...)   ``num_attention_heads``,               output projection's columns), then
                       ``attention_head_size``, ``all_head_size``  ``num_attention_heads``/``all_head_size`` synced
fused qkv (timm ViT,   Linear ``qkv`` (3 x heads x head_dim)  this module: the head's rows in each of the q, k, v
DeiT, Swin ...)        and ``proj`` + ``num_heads``          blocks of ``qkv``, its columns of ``proj`` and its
                       (``head_dim`` read or derived)         slice of every per-head parameter of the module
                                                              (Swin's ``relative_position_bias_table``);
                                                              ``num_heads`` / ``attn_dim`` synced (Torch-Pruning
                                                              1.6.1 maps fused-qkv channels to the wrong
                                                              ``proj`` columns, so it is not used here)
q/k/v/o projections   Linear ``q_proj``/``k_proj``/``v_proj``  this module, per **key/value head**: its k and v
(HF Llama, Mistral,    /``o_proj`` + ``head_dim``             rows, the rows of the query heads that share it
Qwen2 with grouped-    (``num_key_value_groups``, default 1)  and their ``o_proj`` columns; the ratio of query
query attention; HF                                           to key/value heads stays, so ``repeat_kv`` holds
ViT ...)
=====================  ====================================  =================================================

**Probe.** The sites that remove heads themselves (fused qkv, grouped-query) are tried before any
plan is made (:func:`probe_sites`): a copy of the module loses one head and runs on the inputs the
module saw in the example forward pass. A module whose forward does not take fewer heads
(torchvision's Swin derives ``head_dim`` from the residual width; Swin V2's ``cpb_mlp`` makes one
bias per head) is **held**: its heads stay, the report says why, the rest of the model is pruned.

``nn.MultiheadAttention`` (torchvision's ViT: packed ``in_proj_weight`` whose width is tied to the
residual width) is held the same way (:func:`held_attention`): its heads stay, its FFN neurons are
pruned. An attention module whose widths do not split into its declared heads is a one-line
error (:func:`check_head_layout`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import nn

from core.errors import StageError

# submodules of a fused-qkv attention that a head removal keeps consistent (the rest, if it has
# parameters, may make per-head values: the probe decides)
_FUSED_PARTS = ("qkv", "proj", "q_norm", "k_norm", "norm", "attn_drop", "proj_drop", "softmax")


@dataclass
class AttentionSite:
    """One self-attention module of a model.

    Attributes:
        name: The module's name.
        module: The module.
        group_root: The name of a layer in the group whose channels carry the heads.
        heads: The number of prunable heads (key/value heads for grouped-query attention).
        head_dim: Channels per head in the group.
        width: The group's channel count (heads x head_dim, x 3 for a fused qkv).
        layers: Names of the module's Linear layers (no other group may cut them).
        held: Why its heads are not prunable (None: prunable).
    """

    name: str
    module: nn.Module
    group_root: str
    heads: int
    head_dim: int
    width: int
    layers: tuple[str, ...] = ()
    held: str | None = field(default=None)

    def prune_heads(self, heads: Sequence[int]) -> bool:
        """Remove ``heads``; False leaves it to Torch-Pruning's group."""
        return False

    def sync(self) -> None:
        """Set the module's head attributes from its (pruned) weights."""

    @property
    def self_contained(self) -> bool:
        """Removes heads itself (so :func:`probe_sites` can try it on a copy)."""
        return type(self).prune_heads is not AttentionSite.prune_heads


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _rows(heads: Sequence[int], head_dim: int, offset: int = 0) -> list[int]:
    return [offset + h * head_dim + j for h in heads for j in range(head_dim)]


class BertSite(AttentionSite):
    def sync(self) -> None:
        m = self.module
        width = m.query.out_features
        if width % m.attention_head_size == 0 and m.key.out_features == width:
            m.num_attention_heads = width // m.attention_head_size
            m.all_head_size = width


def _per_head_params(m: nn.Module, heads: int) -> list[tuple[str, int]]:
    """Direct parameters of ``m`` with exactly one axis of size ``heads``: (name, axis)."""
    out = []
    for name, p in m.named_parameters(recurse=False):
        axes = [a for a, n in enumerate(p.shape) if n == heads]
        if len(axes) == 1:
            out.append((name, axes[0]))
    return out


class FusedQkvSite(AttentionSite):
    def prune_heads(self, heads: Sequence[int]) -> bool:
        m = self.module
        if not isinstance(getattr(m, "norm", nn.Identity()), nn.Identity) or getattr(m, "gate", None) is not None:
            raise StageError(f"attention '{self.name}' has a scale norm or a gate: its heads are not prunable yet",
                             hint=f"add '{self.name}.qkv' to prune.ignore")
        n, hd = int(m.num_heads), self.head_dim
        dim = n * hd
        keep = [h for h in range(n) if h not in set(heads)]
        for pname, axis in _per_head_params(m, n):
            old = getattr(m, pname)
            new = nn.Parameter(old.data.index_select(axis, torch.tensor(keep)).clone(), old.requires_grad)
            setattr(m, pname, new)
        tp.prune_linear_out_channels(m.qkv, [r for s in range(3) for r in _rows(heads, hd, s * dim)])
        tp.prune_linear_in_channels(m.proj, _rows(heads, hd))
        m.num_heads = n - len(heads)
        for attr in ("attn_dim", "all_head_dim"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, m.num_heads * hd)
        self.heads, self.width = m.num_heads, 3 * m.num_heads * hd
        return True


class GroupedQuerySite(AttentionSite):
    def prune_heads(self, heads: Sequence[int]) -> bool:
        m = self.module
        hd, g = int(m.head_dim), int(getattr(m, "num_key_value_groups", 1))
        q_heads = [kv * g + i for kv in heads for i in range(g)]
        tp.prune_linear_out_channels(m.k_proj, _rows(heads, hd))
        tp.prune_linear_out_channels(m.v_proj, _rows(heads, hd))
        tp.prune_linear_out_channels(m.q_proj, _rows(q_heads, hd))
        tp.prune_linear_in_channels(m.o_proj, _rows(q_heads, hd))
        for attr in ("num_heads", "num_attention_heads"):
            if isinstance(getattr(m, attr, None), int):
                setattr(m, attr, m.q_proj.out_features // hd)
        if isinstance(getattr(m, "num_key_value_heads", None), int):
            m.num_key_value_heads = m.k_proj.out_features // hd
        self.heads = m.k_proj.out_features // hd
        self.width = m.v_proj.out_features
        return True


def _is_linear(m: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(m, n, None), nn.Linear) for n in names)


def _bert(name: str, m: nn.Module) -> AttentionSite:
    h, hd = int(m.num_attention_heads), int(m.attention_head_size)
    check_head_layout(name, {"query": m.query.out_features, "key": m.key.out_features,
                             "value": m.value.out_features}, h, hd)
    return BertSite(name, m, _join(name, "query"), h, hd, h * hd,
                    tuple(_join(name, p) for p in ("query", "key", "value")))


def _fused(name: str, m: nn.Module) -> AttentionSite:
    h = int(m.num_heads)
    hd = getattr(m, "head_dim", None)
    if not isinstance(hd, int):
        if m.qkv.out_features % (3 * h):
            check_head_layout(name, {"qkv / 3": m.qkv.out_features / 3}, h, None)
        hd = m.qkv.out_features // (3 * h)
    check_head_layout(name, {"qkv / 3": m.qkv.out_features / 3, "proj input": m.proj.in_features}, h, hd)
    site = FusedQkvSite(name, m, _join(name, "qkv"), h, hd, 3 * h * hd, (_join(name, "qkv"), _join(name, "proj")))
    extra = [n for n, c in m.named_children() if n not in _FUSED_PARTS and any(True for _ in c.parameters())]
    if extra:
        site.held = f"its submodule '{extra[0]}' may compute per-head values"
    return site


def _gqa(name: str, m: nn.Module) -> AttentionSite:
    hd = int(m.head_dim)
    kv = m.v_proj.out_features // hd
    groups = int(getattr(m, "num_key_value_groups", 1))  # 1: plain multi-head attention (HF ViT, Whisper ...)
    check_head_layout(name, {"k_proj": m.k_proj.out_features, "v_proj": m.v_proj.out_features}, kv, hd)
    check_head_layout(name, {"q_proj": m.q_proj.out_features, "o_proj input": m.o_proj.in_features}, kv * groups, hd)
    return GroupedQuerySite(name, m, _join(name, "v_proj"), kv, hd, kv * hd,
                            tuple(_join(name, p) for p in ("q_proj", "k_proj", "v_proj", "o_proj")))


def check_head_layout(name: str, widths: dict[str, float], heads: int, head_dim: int | None) -> None:
    """A StageError when a width of attention ``name`` is not ``heads x head_dim`` (a head count that does not
    divide): pruning whole heads of it would be guesswork."""
    for what, width in widths.items():
        if heads <= 0 or (head_dim is None and width % heads) or (head_dim is not None and width != heads * head_dim):
            dims = f"{heads} heads" + (f" x {head_dim}" if head_dim is not None else "")
            raise StageError(f"attention '{name}': {what} has {width:g} channels, which do not split into {dims}",
                             hint=f"fix the module's head attributes, or add '{name}' to prune.ignore")


def attention_sites(model: nn.Module, skip: Sequence[str] = ()) -> list[AttentionSite]:
    """Every recognised self-attention of ``model`` (see the module doc); modules under a name in ``skip``
    (``prune.ignore``) are left out unchecked."""
    out: list[AttentionSite] = []
    for name, m in model.named_modules():
        if any(name == s or name.startswith(f"{s}.") for s in skip):
            continue
        if _is_linear(m, "query", "key", "value") and all(
                hasattr(m, k) for k in ("num_attention_heads", "attention_head_size", "all_head_size")):
            out.append(_bert(name, m))
        elif _is_linear(m, "qkv", "proj") and isinstance(getattr(m, "num_heads", None), int):
            out.append(_fused(name, m))
        elif _is_linear(m, "q_proj", "k_proj", "v_proj", "o_proj") and isinstance(getattr(m, "head_dim", None), int):
            out.append(_gqa(name, m))
    return out


def probe_sites(model: nn.Module, example_input: torch.Tensor, sites: Sequence[AttentionSite]) -> None:
    """Mark ``held`` every self-contained site whose forward does not take one head fewer (see the module doc):
    the module's inputs are captured in one forward of ``model``; a copy loses its last head and must run on
    them and give an output of the same shape."""
    todo = [s for s in sites if s.self_contained and s.held is None and s.heads > 1]
    if not todo:
        return
    seen: dict[str, tuple] = {}
    hooks = [s.module.register_forward_pre_hook(
        lambda mod, args, kwargs, n=s.name: seen.setdefault(n, (args, kwargs)), with_kwargs=True) for s in todo]
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    for s in todo:
        if s.name not in seen:
            s.held = "it does not run in the model's forward pass"
            continue
        s.held = _try_one_head_fewer(s, *seen[s.name])


def _first_tensor(out: object) -> torch.Tensor | None:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    return None


def _try_one_head_fewer(site: AttentionSite, args: tuple, kwargs: dict) -> str | None:
    trial = copy.copy(site)
    trial.module = copy.deepcopy(site.module)
    try:
        with torch.no_grad():
            ref = _first_tensor(site.module(*args, **kwargs))
            trial.prune_heads([site.heads - 1])
            got = _first_tensor(trial.module(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - any failure means: this module's heads are not removable this way
        return f"its forward fails with one head fewer ({type(e).__name__}: {str(e).splitlines()[0][:120]})"
    if ref is None or got is None or got.shape != ref.shape:
        return "its output changes shape with one head fewer"
    return None


def held_attention(model: nn.Module) -> list[str]:
    """``nn.MultiheadAttention`` modules (packed ``in_proj_weight``, width tied to the residual stream): their
    heads are held, the rest of the model is pruned."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
