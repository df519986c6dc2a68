"""The only module that imports ``torch_pruning`` (pinned 1.6.1).

It wraps three things Torch-Pruning does well, behind names that do not leak its types:

- building the dependency graph and listing the prunable *groups* (coupled channels across
  residual adds, concatenations, depthwise convs, BN ...);
- Torch-Pruning's own group importance criteria (magnitude, BN scale, Taylor, Hessian);
- removing channels of a group by index, and counting MACs / params.

A group is identified by the name of its root module (the first conv/linear whose output
channels the group prunes). The ids are stable for the same architecture, which is what makes a
pruning plan replayable on a fresh copy of the model.
"""

from __future__ import annotations

from collections.abc import Sequence
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
                Hessian read gradients the caller accumulated on the model beforehand.
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


def count_macs_params(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """MACs and parameter count from Torch-Pruning's op counter (batch of ``example_input``)."""
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    return int(macs), int(params)
