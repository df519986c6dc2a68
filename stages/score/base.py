"""The criterion interface. A criterion produces per-channel scores for each prunable group
(higher = more important = kept first); it never prunes by itself.

Adding a criterion is one new file in this package that calls :func:`register`. Beyond its
scores a criterion may declare, in the same call:

- ``weight_masks=``: its weight-level (unstructured / N:M) form, a builder
  ``(model, stats, spec, ignore) -> WeightMasks`` that ``prune.sparsity`` uses;
- ``compensates=``: ``model -> layer names`` whose removed inputs get STADE's bias compensation
  when a plan made with this criterion is applied.

Every list of weight-level or compensating criteria (config validation, ``sparsify``, the
pruner) is derived from these declarations: :func:`weight_criteria`, :func:`compensation_layers`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import ConfigError
from core.registry import Registry
from stages.model.graph import PruneGraph
from stages.model.masks import WeightMasks


@dataclass(frozen=True)
class Needs:
    """What a criterion consumes, beyond the weights."""

    forward: bool = False  # calibration forward passes
    labels: bool = False  # ground-truth labels (else the model's own predictions serve)
    gradients: bool = False  # backward passes
    classes: bool = False  # class logits [N, C]: the criterion reads the probability of a class


@dataclass
class ScoreContext:
    """What a criterion may look at. ``graph`` is built on ``model``; do not prune through it."""

    model: nn.Module
    graph: PruneGraph
    calib: Dataset
    batches: int = 4
    batch_size: int = 64
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)  # resolved by Criterion.resolve_options
    loss: str = "classes"  # the task loss of gradient criteria (stages.model.losses: the run's metric decides)

    def loader(self) -> DataLoader:
        return DataLoader(self.calib, batch_size=self.batch_size, shuffle=False)

    def calib_batches(self):
        for i, (x, y) in enumerate(self.loader()):
            if i >= self.batches:
                break
            yield x, y


@dataclass
class ScoreResult:
    """What a criterion returns. Only ``scores`` is required.

    - ``scores``: per prunable group id, one score per channel (higher = kept first).
    - ``allocation``: per group id, a relative pruning weight (SBPF): a group with weight 2 loses
      twice the global ratio, 0.5 half of it. The search turns it into per-group keep ratios.
    - ``blocks``: per removable block (module name), an importance (LD-Pruner): the lowest go first
      under depth pruning.
    - ``passes``: forward/backward passes spent, for the benchmark's cost columns.
    - ``proposal``: channels to keep per group id, for a criterion that also decides how much to
      prune (C-SWAP's progressive procedure); ``search: cswap`` prunes exactly this.
    """

    scores: dict[str, torch.Tensor]
    allocation: dict[str, float] | None = None
    blocks: dict[str, float] | None = None
    passes: dict[str, int] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)  # the resolved options it ran with
    proposal: dict[str, int] | None = None  # channels to keep per group id (a criterion that decides how much)


ScoreFn = Callable[[ScoreContext], "dict[str, torch.Tensor] | ScoreResult"]
WeightMaskFn = Callable[..., WeightMasks]  # (model, stats, spec, ignore) -> WeightMasks
CompensationFn = Callable[[nn.Module], "list[str]"]


@dataclass(frozen=True)
class Criterion:
    name: str
    fn: ScoreFn
    needs: Needs
    granularity: Literal["channel", "head", "layer", "weight", "N:M", "block"]
    source: str
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)  # free parameters and their defaults
    weight_masks: WeightMaskFn | None = None  # its weight-level form (prune.sparsity), if it has one
    compensates: CompensationFn | None = None  # layers whose removed inputs get bias compensation

    def resolve_options(self, options: Mapping[str, Any] | None) -> dict[str, Any]:
        """Defaults overlaid with ``options``; unknown keys or uncastable values are a ConfigError."""
        out = dict(self.params)
        for k, v in (options or {}).items():
            if k not in self.params:
                known = ", ".join(self.params) or "none"
                raise ConfigError(f"criterion {self.name!r} has no option {k!r}",
                                  hint=f"its options: {known} (see `pipeline criteria`)")
            default = self.params[k]
            try:
                out[k] = _cast(v, default)
            except (TypeError, ValueError):
                raise ConfigError(f"criterion option {k}={v!r} is not a {type(default).__name__}",
                                  hint=f"default is {default!r}") from None
        return out

    def result(self, ctx: ScoreContext) -> ScoreResult:
        """Run the criterion on a copy of ``ctx`` whose options are resolved for it."""
        ctx = dataclasses.replace(ctx, options=self.resolve_options(ctx.options))
        out = self.fn(ctx)
        result = out if isinstance(out, ScoreResult) else ScoreResult(dict(out))
        result.options = dict(ctx.options)
        return result

    def __call__(self, ctx: ScoreContext) -> dict[str, torch.Tensor]:
        return self.result(ctx).scores


def _cast(value: Any, default: Any) -> Any:
    """``value`` as the type of ``default`` (CLI values arrive as strings)."""
    if default is None:
        return value
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return str(value).lower() in ("1", "true", "yes", "on")
        raise ValueError(value)
    if isinstance(value, bool):
        raise ValueError(value)
    return type(default)(value)


CRITERIA: Registry[Criterion] = Registry("criterion", "criteria")


def register(name: str, *, needs: Needs, granularity: str, source: str, summary: str,
             params: Mapping[str, Any] | None = None, weight_masks: WeightMaskFn | None = None,
             compensates: CompensationFn | None = None,
             aliases: tuple[str, ...] = ()) -> Callable[[ScoreFn], ScoreFn]:
    """Decorator: register a score function as criterion ``name``.

    ``params`` declares the criterion's free parameters with their defaults; the function reads
    the resolved values from ``ctx.options`` (users set them with ``--criterion-option K=V`` or
    ``criterion_options:`` in the YAML). ``weight_masks`` and ``compensates``: see the module
    docstring. ``aliases``: other names that resolve to this criterion (not listed).
    """

    def deco(fn: ScoreFn) -> ScoreFn:
        CRITERIA.add(name, Criterion(name, fn, needs, granularity, source, summary,  # type: ignore[arg-type]
                                     dict(params or {}), weight_masks, compensates), aliases=aliases)
        return fn

    return deco


def weight_criteria() -> list[str]:
    """Criteria with a weight-level form (``prune.sparsity_criterion`` takes these and their aliases)."""
    return [n for n, c in CRITERIA.items() if c.weight_masks is not None]


def weight_mask_builder(name: str) -> WeightMaskFn:
    """The weight-level form of criterion ``name``; a ConfigError names the ones that have one."""
    from core.errors import did_you_mean

    known = weight_criteria()
    crit = CRITERIA.get(name) if name in CRITERIA else None
    if crit is None or crit.weight_masks is None:
        raise ConfigError(f"criterion '{name}' has no weight-level (unstructured / N:M) form."
                          f"{did_you_mean(name, known)}", hint=f"use one of {', '.join(known)}")
    return crit.weight_masks


def compensation_layers(name: str, model: nn.Module) -> list[str]:
    """Layers whose removed inputs get STADE's bias compensation when pruning by criterion ``name``
    (none for a criterion that does not declare ``compensates``)."""
    crit = CRITERIA.get(name) if name in CRITERIA else None
    return list(crit.compensates(model)) if crit is not None and crit.compensates is not None else []
