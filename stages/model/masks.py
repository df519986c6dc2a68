"""Weight-level (unstructured and N:M) masks from weight scores, and applying them.

A mask is a bool tensor of the layer's weight shape, **True where the weight is pruned** (set to
zero). Applying masks never changes a shape: the weights stay dense with zeros in place, so the
exported ONNX graph holds the zeros too.

**No speedup on dense runtimes.** ONNX Runtime CPU, PyTorch, cuDNN and TensorRT without sparse
kernels execute the zeros like any other weight: unstructured and N:M sparsity save nothing
there (latency, and memory unless the file is compressed). The one deployed path that turns a
pattern into speed is TensorRT on Ampere or newer (Jetson Orin included) with the
``SPARSE_WEIGHTS`` builder flag, and only for **2:4** along the input channels; 4:8 and
unstructured masks remain an accuracy study.

Comparison groups (after STADE's ``BasePruner``): which weights compete for the budget.

- ``row``: each output row prunes its ``int(cols * s)`` lowest scores (Wanda's and STADE's
  default). For a conv, a row is one output channel's ``C_in/groups x kh x kw`` weights.
- ``column``: each input column prunes its ``int(rows * s)`` lowest.
- ``layer``: the ``int(numel * s)`` lowest of the whole layer.
- ``N:M``: in each row, every block of M consecutive inputs prunes its N lowest. For a conv the
  blocks run along the *input channels* at each (output channel, kh, kw), the layout of
  NVIDIA's 2:4 sparse tensor cores (and of apex ASP); input channels must be a multiple of M.
- ``channel``: a whole channel of a prunable group (structured); the criteria's registered
  scores serve it and ``stages.prune.plan`` removes the channels.

Ties are broken by index (stable sort): among equal scores, the lower index is pruned first.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn

DENSE_RUNTIME_NOTE = (
    "unstructured and N:M sparsity keep dense shapes with zeros in place: dense runtimes "
    "(ONNX Runtime, PyTorch, TensorRT without sparse kernels) get no speedup from it; TensorRT on "
    "Ampere+ GPUs (Jetson Orin included) uses 2:4 patterns along input channels when built with "
    "the SPARSE_WEIGHTS flag")


class Comparison(str, Enum):
    """Which weights compete with each other for the pruning budget."""

    ROW = "row"
    COLUMN = "column"
    LAYER = "layer"
    NM = "N:M"
    CHANNEL = "channel"


@dataclass(frozen=True)
class MaskSpec:
    """A weight-level sparsity pattern.

    Attributes:
        comparison: ``row``, ``column``, ``layer`` (with ``sparsity``) or ``N:M`` (with n, m).
        sparsity: Fraction pruned per comparison group, in [0, 1).
        n: Weights pruned per block (N:M).
        m: Block length (N:M).
    """

    comparison: Comparison = Comparison.ROW
    sparsity: float = 0.5
    n: int = 0
    m: int = 0

    def __post_init__(self) -> None:
        if self.comparison is Comparison.CHANNEL:
            raise ValueError("channel comparison is structured: use the criterion's scores with "
                             "stages.prune.plan.make_plan, not a weight mask")
        if self.comparison is Comparison.NM:
            if not (0 < self.n < self.m):
                raise ValueError(f"N:M needs 0 < N < M, got {self.n}:{self.m}")
        elif not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1), got {self.sparsity}")

    @classmethod
    def parse(cls, text: str) -> MaskSpec:
        """``"2:4"``, ``"4:8"``, ``"0.5"`` (per row), ``"layer:0.5"``, ``"column:0.3"``, ``"row:50%"``."""
        t = text.strip()
        nm = re.fullmatch(r"(\d+):(\d+)", t)
        if nm:
            return cls(Comparison.NM, 0.0, int(nm[1]), int(nm[2]))
        kind, _, value = t.rpartition(":")
        try:
            s = float(value.rstrip("%")) / (100.0 if value.endswith("%") else 1.0)
            return cls(Comparison(kind or "row"), s)
        except ValueError:
            raise ValueError(f"bad sparsity pattern {text!r}: expected 2:4, 4:8, 0.5, row:0.5, "
                             "column:0.5 or layer:0.5") from None

    def __str__(self) -> str:
        if self.comparison is Comparison.NM:
            return f"{self.n}:{self.m}"
        return f"{self.comparison.value}:{self.sparsity:g}"


# ------------------------------------------------------------------ scores -> mask

def _lowest_along(scores2d: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    mask = torch.zeros_like(scores2d, dtype=torch.bool)
    if k <= 0:
        return mask
    order = torch.sort(scores2d, dim=dim, stable=True).indices
    idx = order[:, :k] if dim == 1 else order[:k, :]
    return mask.scatter_(dim, idx, True)


def nm_layout(scores: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """View weight-shaped scores as rows whose consecutive entries are the N:M direction.

    Linear ``(O, I)``: itself. Conv ``(O, C, kh, kw)``: ``(O*kh*kw, C)``, input channels last.
    Returns the 2-D view and the function that maps a 2-D mask back to the weight shape.
    """
    if scores.dim() == 2:
        return scores, lambda m2d: m2d
    o, c, kh, kw = scores.shape
    view = scores.permute(0, 2, 3, 1).reshape(o * kh * kw, c)
    return view, lambda m2d: m2d.reshape(o, kh, kw, c).permute(0, 3, 1, 2).contiguous()


def prune_mask(scores: torch.Tensor, spec: MaskSpec) -> torch.Tensor:
    """Mask (True = prune) of the lowest scores of each comparison group; same shape as ``scores``.

    Raises:
        ValueError: N:M on a layer whose inputs (per conv group) are not a multiple of M.
    """
    if spec.comparison is Comparison.NM:
        view, back = nm_layout(scores)
        rows, cols = view.shape
        if cols % spec.m:
            raise ValueError(f"N:M {spec.n}:{spec.m} needs inputs per row divisible by {spec.m}, got {cols}")
        blocks = view.reshape(rows * cols // spec.m, spec.m)
        return back(_lowest_along(blocks, spec.n, 1).reshape(rows, cols))
    flat = scores.reshape(scores.shape[0], -1)
    rows, cols = flat.shape
    if spec.comparison is Comparison.ROW:
        mask = _lowest_along(flat, int(cols * spec.sparsity), 1)
    elif spec.comparison is Comparison.COLUMN:
        mask = _lowest_along(flat, int(rows * spec.sparsity), 0)
    else:  # LAYER
        mask = _lowest_along(flat.reshape(1, -1), int(flat.numel() * spec.sparsity), 1)
    return mask.reshape(scores.shape)


@dataclass(frozen=True)
class WeightMasks:
    """Masks for a model.

    Attributes:
        pruned: Layer name -> bool mask, True where the weight is set to zero.
        spec: The pattern they follow.
        compensate: Layers whose bias STADE compensates (all for ``stade``, some for ``stadew``).
        skipped: Layer name -> why it was left dense (e.g. inputs not a multiple of M).
    """

    pruned: dict[str, torch.Tensor]
    spec: MaskSpec
    compensate: frozenset[str] = frozenset()
    skipped: dict[str, str] = field(default_factory=dict)


def build_masks(model: nn.Module, stats: Mapping[str, object], spec: MaskSpec,
                weight_score: Callable[[str, nn.Module, object], torch.Tensor],
                ignore: Collection[str] = (), compensate: Callable[[str], bool] = lambda name: False) -> WeightMasks:
    """Masks for every Linear/Conv2d with calibration statistics, from a weight-score function.

    Args:
        model: The model (not modified).
        stats: Layer name -> ``InputStats`` (``stages.model.calib.collect_input_stats``).
        spec: The pattern.
        weight_score: ``(name, layer, stats) -> weight-shaped scores`` (higher = keep).
        ignore: Layers left dense (pass the classifier head, as Wanda leaves ``lm_head``).
        compensate: Which masked layers get STADE's bias compensation.
    """
    modules = dict(model.named_modules())
    pruned, skipped = {}, {}
    for name, st in stats.items():
        layer = modules.get(name)
        if name in ignore or not isinstance(layer, (nn.Linear, nn.Conv2d)):
            continue
        with torch.no_grad():
            s = weight_score(name, layer, st)
        try:
            pruned[name] = prune_mask(s, spec)
        except ValueError as e:
            skipped[name] = str(e)
    return WeightMasks(pruned, spec, frozenset(n for n in pruned if compensate(n)), skipped)


# ------------------------------------------------------------------ applying masks

@torch.no_grad()
def apply_masks(model: nn.Module, masks: WeightMasks | Mapping[str, torch.Tensor],
                stats: Mapping[str, object] | None = None, compensate: bool | Collection[str] = True,
                bn_after: Mapping[str, str] | None = None) -> nn.Module:
    """Return a deep copy of ``model`` with the masked weights zeroed; the input is not modified.

    With ``compensate``, STADE's bias correction ``b_i += sum_{j pruned} W_ij mu_j`` is computed
    from the weights **before** they are zeroed (the order the authors' v2 code gets wrong, which
    makes its correction always 0), for every masked layer (``True``), the listed layers, or, when
    ``masks`` is a :class:`WeightMasks` and ``compensate`` is True, its ``compensate`` set.

    Args:
        model: The dense model.
        masks: Layer name -> bool mask (True = prune), or a :class:`WeightMasks`.
        stats: Layer name -> ``InputStats``; required when compensating.
        compensate: ``True``, ``False`` or the layer names to compensate.
        bn_after: Layer -> BatchNorm fed only by it (``stages.prune.compensate.bn_successors``):
            a bias-less layer's shift goes into that BN's running mean instead of a new bias.
    """
    pruned = masks.pruned if isinstance(masks, WeightMasks) else dict(masks)
    if compensate is True:
        todo = set(masks.compensate) if isinstance(masks, WeightMasks) else set(pruned)
    else:
        todo = set(compensate or ())
    unknown = todo - set(pruned)
    if unknown:
        raise ValueError(f"cannot compensate layers without a mask: {sorted(unknown)}")
    if todo and stats is None:
        raise ValueError("bias compensation needs the calibration statistics (stats=...)")
    out = copy.deepcopy(model)
    mask_in_place(out, pruned, stats or {}, todo, bn_after)
    return out


def mask_in_place(model: nn.Module, pruned: Mapping[str, torch.Tensor], stats: Mapping[str, object],
                   todo: Collection[str], bn_after: Mapping[str, str] | None) -> None:
    from stages.model.bias import add_output_shift, masked_shift

    modules = dict(model.named_modules())
    for name, mask in pruned.items():
        if mask.shape != modules[name].weight.shape:
            raise ValueError(f"mask for {name} has shape {tuple(mask.shape)}, weight {tuple(modules[name].weight.shape)}")
    shifts = {n: masked_shift(modules[n], pruned[n], stats[n]) for n in sorted(todo)}  # before zeroing
    for name, mask in pruned.items():
        w = modules[name].weight
        w.masked_fill_(mask.to(w.device), 0.0)
    add_output_shift(model, shifts, bn_after)


@torch.no_grad()
def reapply_masks(model: nn.Module, masks: WeightMasks | Mapping[str, torch.Tensor]) -> None:
    """Zero the masked weights again, in place: call after each optimizer step of a recovery
    loop, or the zeros grow back."""
    pruned = masks.pruned if isinstance(masks, WeightMasks) else masks
    modules = dict(model.named_modules())
    for name, mask in pruned.items():
        modules[name].weight.masked_fill_(mask.to(modules[name].weight.device), 0.0)


# ------------------------------------------------------------------ report

def nm_ok(weight: torch.Tensor, n: int, m: int) -> bool:
    """Whether every block of ``m`` consecutive inputs (conv: input channels) has >= ``n`` zeros."""
    view, _ = nm_layout(weight.detach())
    if view.shape[1] % m:
        return False
    zeros = (view.reshape(-1, m) == 0).sum(1)
    return bool((zeros >= n).all())


def sparsity_report(model: nn.Module, layers: Collection[str] | None = None, spec: MaskSpec | None = None) -> dict:
    """Zeros per layer and overall, as JSON-ready data.

    Args:
        model: The (masked) model.
        layers: The layers to report; default every Linear and Conv2d.
        spec: When an N:M pattern, each layer also reports whether it holds (``nm_ok``).
    """
    modules = dict(model.named_modules())
    names = list(layers) if layers is not None else [n for n, m in modules.items()
                                                      if isinstance(m, (nn.Linear, nn.Conv2d))]
    rows, zeros, total = {}, 0, 0
    for n in names:
        w = modules[n].weight.detach()
        z, t = int((w == 0).sum()), w.numel()
        rows[n] = {"zeros": z, "numel": t, "sparsity": round(z / t, 6)}
        if spec is not None and spec.comparison is Comparison.NM:
            rows[n]["nm_ok"] = nm_ok(w, spec.n, spec.m)
        zeros, total = zeros + z, total + t
    params = sum(p.numel() for p in model.parameters())
    return {"pattern": str(spec) if spec else None, "layers": rows, "zeros": zeros, "numel": total,
            "sparsity": round(zeros / total, 6) if total else 0.0,
            "model_sparsity": round(zeros / params, 6) if params else 0.0,
            "speedup_note": DENSE_RUNTIME_NOTE}


# ------------------------------------------------------------------ one call for the pipeline



def magnitude_masks(model: nn.Module, stats: Mapping[str, object], spec: MaskSpec | str = "0.5",
                    ignore: Collection[str] = ()) -> WeightMasks:
    """Plain ``|W|`` masks, the reference every activation-aware criterion must beat (stats only
    name the layers; no compensation)."""
    spec = MaskSpec.parse(spec) if isinstance(spec, str) else spec
    return build_masks(model, stats, spec, lambda name, layer, st: layer.weight.detach().abs(), ignore)


def output_layer(model: nn.Module, x: torch.Tensor) -> str | None:
    """The last Linear/Conv2d to run: the classifier head, left dense by default (as Wanda leaves
    ``lm_head``), since its rows are each one class."""
    names = [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    order = execution_order(model, x, names)
    return order[-1] if order else None


def execution_order(model: nn.Module, x: torch.Tensor, names: Collection[str]) -> list[str]:
    order: list[str] = []
    modules = dict(model.named_modules())
    hooks = [modules[n].register_forward_pre_hook(lambda mod, inp, n=n: order.append(n) if n not in order else None)
             for n in names]
    try:
        with torch.no_grad():
            model.eval()(x)
    finally:
        for h in hooks:
            h.remove()
    return order
