"""Families of prunable groups: the unit that gets one keep ratio in a per-family search.

A *family* is a set of prunable groups that share one keep ratio: all groups of a ResNet stage,
of a MobileNetV2 stage or block, or (mode ``group``) each group on its own. The rule works on
module paths and on the groups' coupling only, so it needs no per-architecture table.

The rule (``families(groups, mode)``):

1. The **block** of a module path is its prefix up to and including the first all-digit
   component: ``layer2.0.conv1`` -> ``layer2.0``, ``features.13.conv.1.0`` -> ``features.13``.
   A path with no all-digit component is a block of its own first component: ``conv1``, ``fc``.
   The block's *container* is the block without its index (``layer2``, ``features``).
2. ``mode="group"``: every group is its own family, named by its id (a per-layer, non-uniform
   search).
3. ``mode="block"``: a group belongs to the block of its id (its root module).
4. ``mode="stage"``: blocks are merged when one group removes output channels in several of
   them (the ``out_layers`` of the group span the blocks). That is exactly a residual stream:
   its width is shared by every block that adds into it, so those blocks form a stage. ResNet's
   stem ``conv1`` writes the stream of ``layer1`` and so joins it. A stage is named after its
   container when it holds every block of that container seen in the model (``layer2``),
   else after the index range (``features.4-6``); a stage spanning several containers joins
   the parts with ``+``. A stage without indexed blocks (a stem of its own, as in ResNet-50) is
   named after the blocks its groups are rooted in (``conv1``).

   ResNet-20 (CIFAR) gives ``layer1..layer3``; torchvision ResNets ``layer1..layer4``;
   MobileNetV2 gives its seven inverted-residual stages (``features.0-1``, ``features.2-3``,
   ``features.4-6``, ``features.7-10``, ``features.11-13``, ``features.14-16``, ``features.17``)
   plus the last 1x1 conv (``features.18``). A model without residual adds degrades to blocks.

Every group is in exactly one family. Family names are sorted in natural order (``features.7-10``
before ``features.11-13``), group ids inside a family too, so the result does not depend on the
order Torch-Pruning lists the groups in.

Uniform widths (MaskPrune, ``--uniform``): :func:`uniform_widths` turns one ratio per family into
kept widths that are identical for every group of the family with the same original width (all
blocks of a stage keep the same number of channels), using the same rounding as the plans
(:func:`stages.prune.plan.keep_count`). Groups of a family with a different original width (a
stage's residual stream next to its blocks' inner widths in a bottleneck ResNet) are a separate
shape class and scale by the same ratio: forcing a 96-channel projection and a 576-channel
expansion to one count is not what uniform shapes mean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, Protocol

Mode = Literal["stage", "block", "group"]
MODES: tuple[str, ...] = ("stage", "block", "group")


class _Group(Protocol):  # stages.model.graph.GroupInfo, without importing torch
    id: str
    width: int
    out_layers: tuple[str, ...]


def natural_key(name: str) -> tuple:
    """Sort key that orders digit runs by value: ``features.7-10`` < ``features.11-13``."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", name) if p != "")


def block_of(path: str) -> str:
    """The block of a module path: the prefix up to the first all-digit component (see module doc)."""
    parts = path.split(".")
    for i, p in enumerate(parts):
        if p.isdigit() and i > 0:
            return ".".join(parts[: i + 1])
    return parts[0]


def _split_block(block: str) -> tuple[str, int | None]:
    head, _, tail = block.rpartition(".")
    return (head, int(tail)) if head and tail.isdigit() else (block, None)


def families(groups: Sequence[_Group], mode: str = "stage") -> dict[str, list[str]]:
    """Group ids by family, for ``mode`` ``stage``, ``block`` or ``group`` (rule in the module doc).

    Returns:
        family name -> group ids, both in natural order; every group in exactly one family.

    Raises:
        ValueError: on an unknown mode or duplicate group ids.
    """
    if mode not in MODES:
        raise ValueError(f"unknown family mode '{mode}': use one of {', '.join(MODES)}")
    ids = [g.id for g in groups]
    if len(set(ids)) != len(ids):
        raise ValueError("duplicate group ids")
    if mode == "group":
        out = {gid: [gid] for gid in ids}
    elif mode == "block":
        out = {}
        for gid in ids:
            out.setdefault(block_of(gid), []).append(gid)
    else:
        out = _stages(groups)
    return {k: sorted(out[k], key=natural_key) for k in sorted(out, key=natural_key)}


class _Blocks:
    """Union-find over block names; the root of a set is its first block in natural order."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, b: str) -> str:
        parent = self.parent
        parent.setdefault(b, b)
        while parent[b] != b:
            parent[b] = parent[parent[b]]
            b = parent[b]
        return b

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb), key=natural_key)
            self.parent[hi] = lo


def _stages(groups: Sequence[_Group]) -> dict[str, list[str]]:
    uf = _Blocks()
    seen: dict[str, set[int]] = {}  # container -> every index seen anywhere in the model
    for g in groups:
        blocks = [block_of(p) for p in (g.id, *g.out_layers)]
        for b in (*blocks, *(block_of(p) for p in getattr(g, "in_layers", ()))):
            c, i = _split_block(b)
            if i is not None:
                seen.setdefault(c, set()).add(i)
        for b in blocks[1:]:
            uf.union(blocks[0], b)
    members: dict[str, set[str]] = {}
    roots_of: dict[str, set[str]] = {}
    for g in groups:
        members.setdefault(uf.find(block_of(g.id)), set())
        roots_of.setdefault(uf.find(block_of(g.id)), set()).add(block_of(g.id))
    for b in list(uf.parent):
        r = uf.find(b)
        if r in members:
            members[r].add(b)
    names = _unique_names({root: _stage_name(members[root], roots_of[root], seen)
                           for root in sorted(members, key=natural_key)})
    out: dict[str, list[str]] = {}
    for g in groups:
        out.setdefault(names[uf.find(block_of(g.id))], []).append(g.id)
    return out


def _unique_names(names: Mapping[str, str]) -> dict[str, str]:
    """Root -> stage name, with ``#2``, ``#3`` appended to repeats (cannot happen for well-formed paths)."""
    out: dict[str, str] = {}
    used: set[str] = set()
    for root, name in names.items():
        base, n = name, 2
        while name in used:
            name, n = f"{base}#{n}", n + 1
        used.add(name)
        out[root] = name
    return out


def _stage_name(blocks: Iterable[str], group_blocks: Iterable[str], seen: Mapping[str, set[int]]) -> str:
    by_container: dict[str, list[int]] = {}
    for b in blocks:
        c, i = _split_block(b)
        if i is not None:
            by_container.setdefault(c, []).append(i)
    if not by_container:  # e.g. a stem of its own: named after the blocks its groups are rooted in
        return "+".join(sorted(group_blocks, key=natural_key))
    parts = []
    for c in sorted(by_container, key=natural_key):
        idx = sorted(by_container[c])
        if set(idx) == seen.get(c, set()):
            parts.append(c)
        elif len(idx) == 1:
            parts.append(f"{c}.{idx[0]}")
        elif idx == list(range(idx[0], idx[-1] + 1)):
            parts.append(f"{c}.{idx[0]}-{idx[-1]}")
        else:
            parts.append(f"{c}.{','.join(map(str, idx))}")
    return "+".join(parts)


def expand(fams: Mapping[str, Sequence[str]], family_ratios: Mapping[str, float]) -> dict[str, float]:
    """Per-group keep ratios from one keep ratio per family (families missing from the mapping keep 1.0)."""
    return {gid: float(family_ratios.get(name, 1.0)) for name, gids in fams.items() for gid in gids}


def uniform_widths(groups: Sequence[_Group], fams: Mapping[str, Sequence[str]], family_ratios: Mapping[str, float],
                   round_to: int | None) -> dict[str, int]:
    """MaskPrune-style uniform shapes: kept channels per group from one keep ratio per family.

    Every group of a family with the same original width keeps exactly the same number of
    channels, ``keep_count(width, ratio, round_to)`` (the plans' own rounding), so a plan made
    with :func:`uniform_keep_ratios` has these widths.
    """
    from stages.prune.plan import kept_width

    by_id = {g.id: g for g in groups}
    out: dict[str, int] = {}
    for name, gids in fams.items():
        r = float(family_ratios.get(name, 1.0))
        for gid in gids:
            out[gid] = kept_width(by_id[gid], r, round_to)
    return out


def uniform_keep_ratios(groups: Sequence[_Group], fams: Mapping[str, Sequence[str]],
                        family_ratios: Mapping[str, float], round_to: int | None) -> dict[str, float]:
    """The per-group keep ratios whose plan has exactly :func:`uniform_widths` (``kept / width``)."""
    widths = uniform_widths(groups, fams, family_ratios, round_to)
    total = {g.id: g.width for g in groups}
    return {gid: n / total[gid] for gid, n in widths.items()}


def is_uniform(groups: Sequence[_Group], fams: Mapping[str, Sequence[str]], kept: Mapping[str, int]) -> bool:
    """Whether every family keeps one width per original width (``kept``: group id -> kept channels)."""
    width = {g.id: g.width for g in groups}
    for gids in fams.values():
        per_class: dict[int, set[int]] = {}
        for gid in gids:
            per_class.setdefault(width[gid], set()).add(kept.get(gid, width[gid]))
        if any(len(v) > 1 for v in per_class.values()):
            return False
    return True
