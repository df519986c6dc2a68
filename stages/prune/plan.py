"""Policies and pruning plans.

- A **policy** maps each prunable group to a keep ratio (a global ratio is the special case where
  every group has the same one).
- A **plan** is the policy made concrete: for each group, the exact channel indices kept. It is
  what ``policy.json`` and ``pruned.pt`` store, and replaying it on a fresh copy of the
  architecture gives the same pruned model, without pickling any module.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import ConfigError, StageError
from stages.model.blocks import drop_blocks
from stages.model.graph import GroupInfo, PruneGraph


@dataclass(frozen=True)
class GroupPlan:
    id: str
    width: int
    keep: tuple[int, ...]

    @property
    def keep_ratio(self) -> float:
        return len(self.keep) / self.width


@dataclass(frozen=True)
class PruningPlan:
    """Per-group kept channel indices. JSON-serialisable via :meth:`to_json`.

    ``drop_blocks`` names residual blocks replaced by identity (depth pruning) *before* the
    channel groups are applied: the group ids are those of the depth-pruned model. The JSON key
    is written only when blocks are dropped, and an absent key reads as none.
    """

    groups: tuple[GroupPlan, ...]
    ignore: tuple[str, ...] = ()
    meta: Mapping[str, object] = field(default_factory=dict)
    drop_blocks: tuple[str, ...] = ()

    def to_json(self) -> dict:
        out = {
            "format": "edge-pipeline/plan-v1",
            "ignore": list(self.ignore),
            "meta": dict(self.meta),
            "groups": {g.id: {"width": g.width, "kept": len(g.keep), "keep_ratio": round(g.keep_ratio, 4),
                              "keep_idxs": list(g.keep)} for g in self.groups},
        }
        if self.drop_blocks:
            out["drop_blocks"] = list(self.drop_blocks)
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> PruningPlan:
        """Read and validate a plan completely (every group's width and kept indices); a problem is a
        ConfigError naming the group."""
        if not isinstance(d, Mapping) or d.get("format") != "edge-pipeline/plan-v1" or "groups" not in d:
            raise ConfigError("not a pruning plan (format edge-pipeline/plan-v1 expected)",
                             hint="pass the policy.json written by a previous `pipeline run`")
        if not isinstance(d["groups"], Mapping):
            raise ConfigError("pruning plan: 'groups' must be a mapping of group id -> group",
                              hint="pass the policy.json written by a previous `pipeline run`")
        groups = tuple(_group_plan(str(gid), g) for gid, g in d["groups"].items())
        drop = d.get("drop_blocks", ())
        if not isinstance(drop, (list, tuple)) or not all(isinstance(n, str) for n in drop):
            raise ConfigError("pruning plan: drop_blocks must be a list of module names",
                              hint="pass the policy.json written by a previous `pipeline run`")
        return cls(groups, tuple(d.get("ignore", ())), dict(d.get("meta", {})), tuple(drop))

    @classmethod
    def from_file(cls, path: Path) -> PruningPlan:
        """Read a ``policy.json``; a missing or malformed file is a ConfigError."""
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"policy file not found: {path}", hint="pass the policy.json of an earlier run")
        try:
            return cls.from_json(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}", hint="pass the policy.json of an earlier run") from None

    def widths(self) -> dict[str, int]:
        return {g.id: len(g.keep) for g in self.groups}


def _group_plan(gid: str, g: object) -> GroupPlan:
    """One group of a plan file, checked: an integer width >= 1, kept indices distinct integers in range."""
    hint = "pass the policy.json written by a previous `pipeline run` for this model"

    def bad(what: str) -> ConfigError:
        return ConfigError(f"pruning plan, group '{gid}': {what}", hint=hint)

    if not isinstance(g, Mapping) or "width" not in g or "keep_idxs" not in g:
        raise bad("needs 'width' and 'keep_idxs'")
    width, keep = g["width"], g["keep_idxs"]
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise bad(f"width must be an integer >= 1, got {width!r}")
    if not isinstance(keep, (list, tuple)) or not keep:
        raise bad("keep_idxs must be a non-empty list of channel indices")
    if any(isinstance(i, bool) or not isinstance(i, int) for i in keep):
        raise bad(f"keep_idxs must be integers, got {next(i for i in keep if isinstance(i, bool) or not isinstance(i, int))!r}")
    out = [i for i in keep if not 0 <= i < width]
    if out:
        raise bad(f"keep_idxs {out[:5]} out of range 0..{width - 1}")
    if len(set(keep)) != len(keep):
        raise bad(f"keep_idxs repeat channels ({len(keep)} given, {len(set(keep))} distinct)")
    return GroupPlan(gid, width, tuple(sorted(keep)))


def keep_count(width: int, keep_ratio: float, round_to: int | None) -> int:
    """Channels kept for a group: ``width * keep_ratio`` rounded to a multiple of ``round_to``.

    Never zero, never more than ``width``; groups narrower than ``round_to`` keep at least
    ``min(width, round_to)`` channels so the rounding never empties a layer.
    """
    raw = width * keep_ratio
    if not round_to or round_to <= 1:
        return max(1, min(width, int(math.floor(raw + 0.5))))
    n = int(math.floor(raw / round_to + 0.5)) * round_to
    return max(min(width, round_to), min(width, n))


def kept_width(g: GroupInfo, keep_ratio: float, round_to: int | None) -> int:
    """Channels a group keeps at ``keep_ratio``: :func:`keep_count` of its channels, or of its heads
    (whole heads, at least one, no ``round_to``) for an attention group, or of the positions inside a
    conv group (kept in every conv group, no ``round_to``) for a grouped-convolution group."""
    heads = getattr(g, "heads", 0)
    if keep_ratio >= 1.0:
        return g.width
    if heads:
        return keep_count(heads, keep_ratio, None) * (g.width // heads)
    groups = getattr(g, "channel_groups", 0)
    if groups > 1:  # grouped conv: the same positions of every conv group (no round_to)
        return keep_count(g.width // groups, keep_ratio, None) * groups
    return keep_count(g.width, keep_ratio, round_to)


def top_channels(g: GroupInfo, scores: torch.Tensor, n: int) -> tuple[int, ...]:
    """The ``n`` best channels of a group (ties to the lower index); for an attention group the channels
    of its ``n / (width / heads)`` best heads, a head scored by the sum of its channels' scores; for a
    grouped-convolution group the best positions inside a conv group, kept in every conv group."""
    s = torch.nan_to_num(scores.double(), nan=-math.inf)
    units = g.units if hasattr(g, "units") else g.width
    if units == g.width:
        order = sorted(range(g.width), key=lambda i: (-float(s[i]), i))
        return tuple(sorted(order[:n]))
    per_unit = torch.zeros(units, dtype=torch.float64)
    for c in range(g.width):
        per_unit[g.unit_of(c)] += s[c]
    order = sorted(range(units), key=lambda u: (-float(per_unit[u]), u))
    kept = set(order[:n // (g.width // units)])
    return tuple(c for c in range(g.width) if g.unit_of(c) in kept)


def make_plan(groups: list[GroupInfo], scores: Mapping[str, torch.Tensor], keep_ratios: Mapping[str, float],
              round_to: int | None, ignore: tuple[str, ...] = (), meta: Mapping[str, object] | None = None) -> PruningPlan:
    """Keep the top-scoring channels (attention groups: whole heads) of each group according to its keep
    ratio (:func:`kept_width`, :func:`top_channels`).

    Ties are broken by channel index, so the plan is deterministic.
    """
    out = []
    for g in groups:
        n = kept_width(g, float(keep_ratios.get(g.id, 1.0)), round_to)
        s = scores.get(g.id)
        if s is None or len(s) != g.width:
            raise StageError(f"criterion gave no scores of length {g.width} for group '{g.id}'",
                             hint="the criterion does not support this layer type; try --criterion magnitude-l2")
        out.append(GroupPlan(g.id, g.width, top_channels(g, s.float(), n)))
    return PruningPlan(tuple(out), ignore, dict(meta or {}))


def uniform_ratios(groups: list[GroupInfo], prune_ratio: float) -> dict[str, float]:
    """The global policy: every group keeps ``1 - prune_ratio`` of its channels."""
    return {g.id: 1.0 - prune_ratio for g in groups}


def apply_plan(model: nn.Module, example_input: torch.Tensor, plan: PruningPlan) -> nn.Module:
    """Return a pruned deep copy of ``model``; the input model is never modified.

    The plan's ``drop_blocks`` are replaced by identity first, then its channel groups (ids of
    the depth-pruned model) are removed. A model whose blocks are already dropped is fine.
    After pruning, a forward pass checks the output shape is unchanged and finite.
    """
    if plan.drop_blocks:
        pruned = drop_blocks(model, plan.drop_blocks).eval()
    else:
        pruned = copy.deepcopy(model).eval()
    with torch.no_grad():
        ref = model(example_input)
    graph = PruneGraph(pruned, example_input, plan.ignore)
    current = {g.id: g for g in graph.groups()}
    remove = {}
    for gp in plan.groups:
        if gp.id not in current:
            raise StageError(f"plan group '{gp.id}' is not a prunable group of this model",
                             hint="the plan was made for a different architecture")
        if current[gp.id].width != gp.width:
            raise StageError(f"plan group '{gp.id}' has width {gp.width}, model has {current[gp.id].width}",
                             hint="the plan was made for a different architecture")
        keep = set(gp.keep)
        remove[gp.id] = [i for i in range(gp.width) if i not in keep]
    graph.prune(remove)
    check_pruned(pruned, example_input, tuple(ref.shape))
    return pruned


def check_pruned(model: nn.Module, example_input: torch.Tensor, expected_shape: tuple[int, ...]) -> None:
    try:
        with torch.no_grad():
            out = model(example_input)
    except Exception as e:  # noqa: BLE001
        raise StageError(f"pruned model fails its forward pass: {type(e).__name__}: {e}",
                         hint="Torch-Pruning could not handle a layer; add it to prune.ignore") from None
    if tuple(out.shape) != expected_shape:
        raise StageError(f"pruned model output shape {tuple(out.shape)} != original {expected_shape}",
                         hint="add the output layer to prune.ignore")
    if not torch.isfinite(out).all():
        raise StageError("pruned model produces NaN/inf", hint="lower the pruning ratio")


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Dataset, batches: int, batch_size: int = 64) -> int:
    """Re-estimate BatchNorm running statistics on calibration data (EagleEye's adaptive BN).

    Forward only, no labels. Returns the number of BN layers reset (0 means nothing to do).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the calibration batches
    model.train()
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    for i, (x, _) in enumerate(loader):
        if i >= batches:
            break
        model(x)
    model.eval()
    for m in bns:
        m.momentum = 0.1
    return len(bns)


# ------------------------------------------------------------------ heads + FFN plans (transformers)


def head_scores(channel_scores: torch.Tensor, heads: int) -> torch.Tensor:
    """One score per head: the sum of its contiguous block of channel scores (NaN counts as -inf)."""
    s = torch.nan_to_num(channel_scores.double(), nan=-math.inf)
    if s.numel() % heads:
        raise ValueError(f"{s.numel()} channels do not split into {heads} heads")
    return s.view(heads, -1).sum(1)


def heads_ffn_plan(groups: Sequence[GroupInfo], heads: Mapping[str, int], scores: Mapping[str, torch.Tensor],
                   prune_ratio: float, round_to: int | None = 8,
                   meta: Mapping[str, object] | None = None) -> PruningPlan:
    """Remove ``prune_ratio`` of the heads of every attention group and of the channels of every
    other group (the FFN), keeping the best-scoring ones.

    Heads kept per layer: ``round(heads * (1 - prune_ratio))`` (at least one); FFN channels kept:
    :func:`stages.prune.plan.keep_count` with ``round_to``, as the pipeline rounds. Ties go to the
    lower index, as in :func:`stages.prune.plan.make_plan`.

    Args:
        groups: The groups to prune (``PruneGraph.groups()``).
        heads: Group id -> number of heads (``PruneGraph.heads()``), for the attention groups.
        scores: A criterion's channel scores per group id.
        prune_ratio: Fraction of heads / channels removed, in [0, 1).
        round_to: Rounding of the FFN widths.
        meta: Stored in the plan.
    """
    if not 0.0 <= prune_ratio < 1.0:
        raise ValueError(f"prune_ratio must be in [0, 1), got {prune_ratio}")
    out = []
    for g in groups:
        s = scores.get(g.id)
        if s is None or len(s) != g.width:
            raise ValueError(f"no scores of length {g.width} for group '{g.id}'")
        if g.id in heads:
            h = heads[g.id]
            size = g.width // h
            n = keep_count(h, 1.0 - prune_ratio, None) if prune_ratio > 0 else h
            hs = head_scores(s, h)
            order = sorted(range(h), key=lambda i: (-float(hs[i]), i))
            keep = [c for i in sorted(order[:n]) for c in range(i * size, (i + 1) * size)]
        else:
            n = keep_count(g.width, 1.0 - prune_ratio, round_to) if prune_ratio > 0 else g.width
            sf = torch.nan_to_num(s.double(), nan=-math.inf)
            order = sorted(range(g.width), key=lambda i: (-float(sf[i]), i))
            keep = sorted(order[:n])
        out.append(GroupPlan(g.id, g.width, tuple(keep)))
    return PruningPlan(tuple(out), (), {"prune_ratio": prune_ratio, "round_to": round_to, "heads": dict(heads),
                                        **(meta or {})})
