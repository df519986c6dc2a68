"""MaskPrune (Qin et al., arXiv 2502.14008; methods.md §4): learned pruning masks under a sparsity
constraint solved as a minimax problem, with the same width in every layer of a family. No code was
published; the objective is the reconstruction of methods.md ([RECON]); the choices below that the
paper leaves open are ours and say so.

Recovery starts from the **unpruned** model (a copy; the teacher is the unpruned model). Every group
of the plan gets a mask ``m`` over its *units* (attention heads for head groups, else channels),
applied by forward hooks at the group's channel sites (:meth:`PruneGraph.channel_sites`). A *family*
is a set of groups of one shape (original width and heads): all attention blocks of a transformer,
all its FFNs; in a CNN the groups of one width. Each family has one relaxed keep fraction ``s`` and
one multiplier ``λ``; its target ``t`` is the plan's mean kept fraction over the family (the plan
of a ``--uniform`` search already is uniform; any other plan is made uniform here). For K steps
(``recovery.soft_steps``; default half of ``recovery.steps``):

    min_{θ, m, s} max_{λ ≥ 0}  L_KD(θ, STE(top_{⌈sU⌉}(m))) + ρ Σ_g ||m_g − Π_s(m_g)||² + Σ_f λ_f (s_f − t_f)

- forward: each group keeps its ``⌈s U⌉`` units with the largest ``m`` (a hard 0/1 mask); the
  straight-through estimator passes the loss gradient to ``m`` unchanged (``hard + m − m.detach()``),
  so a unit that is masked out still learns whether it would help (where the activation after the
  mask passes a gradient at 0: GELU / SiLU in transformers' FFNs, attention values; behind a ReLU
  ``relu'(0) = 0``, so a masked unit's mask stops learning and only the units still on re-rank);
- ``m``: an Adam step on the KD gradient (``lr``), then the proximal step of the ``ρ`` term, which
  shrinks the units outside the top-s towards 0 (``m ← m / (1 + 2 lr ρ)``);
- ``s``: gradient descent on the Lagrangian, ``s ← max(t, s − λ)`` (the KD loss does not depend on
  ``s`` through a hard top-k: only the multiplier moves it);
- ``λ``: dual ascent, ``λ ← max(0, λ + η_λ (s − t))``: it rises while the family is wider than its
  target, which shrinks ``s`` ever faster, until the constraint is met. ``η_λ = 2 / (bind·K)²``
  (ours) makes it bind at about ``bind`` (0.6) of the K steps, so the rest of the phase trains the
  final widths. Where it has not bound by step K it is forced (recorded as ``bound_at: null``).

The masks start at 1 plus a tie-break of 0.01 × the unit's rank by the run's criterion, so the first
units to go are the criterion's. LoRA adapters (the paper's, for LLM memory) are not used: all
weights train, as in every recovery here. After K steps each group keeps the top ``t U`` units by
``m``: the same count in every group of a family. The masked model equals the hard-pruned one
(checked, ``phased.EXACT_ATOL``); the remaining ``steps − K`` steps are plain distillation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from core.errors import ConfigError, StageError
from stages.model.graph import GroupInfo, PruneGraph
from stages.prune.plan import GroupPlan, PruningPlan
from stages.recover import phased
from stages.recover.distill import DistillSettings

SOURCE = "MaskPrune, Qin et al., arXiv 2502.14008 [RECON objective and schedule] (methods.md §4)"
PARAMS = {
    "lr": 0.05,  # Adam step on the masks
    "rho": 1.0,  # weight of the proximal term ||m - top_s(m)||^2
    "bind": 0.6,  # the multiplier's step makes the constraint bind at about this fraction of the K steps (ours)
}


@dataclass(frozen=True)
class MaskSettings:
    steps: int  # K
    lr: float = 0.05
    rho: float = 1.0
    bind: float = 0.6

    @classmethod
    def from_options(cls, steps: int, o: Mapping[str, object]) -> MaskSettings:
        s = cls(steps, float(o["lr"]), float(o["rho"]), float(o["bind"]))
        if s.lr <= 0 or s.rho < 0 or not 0 < s.bind <= 1:
            raise ConfigError("recovery maskprune: lr must be > 0, rho >= 0 and bind in (0, 1]",
                              hint="see `pipeline recoveries` for the defaults")
        return s


def family_key(info: GroupInfo) -> str:
    """Groups of one shape share a width: ``heads12x32`` (attention), ``w1536`` (channels), ``w400g25`` (grouped
    convolution: 25 conv groups)."""
    if info.heads:
        return f"heads{info.heads}x{info.head_dim}"
    return f"w{info.width}g{info.channel_groups}" if info.channel_groups > 1 else f"w{info.width}"


def unit_index(info: GroupInfo) -> torch.Tensor:
    """The unit of every channel of the group (its head, its position in its conv group, or itself)."""
    return torch.tensor([info.unit_of(c) for c in range(info.width)])


class FamilyMasks:
    """Unit masks of the plan's groups, one keep fraction and multiplier per family.

    Args:
        model: The student (hooks are attached to its channel sites).
        graph: Its dependency graph.
        plan: The target widths (their family means) and which groups take part.
        scores: The criterion's channel scores (tie-break of the initial masks); None: unit order.
    """

    def __init__(self, model: nn.Module, graph: PruneGraph, plan: PruningPlan,
                 scores: Mapping[str, torch.Tensor] | None, settings: MaskSettings,
                 device: torch.device | None = None) -> None:
        infos = {g.id: g for g in graph.groups()}
        modules = dict(model.named_modules())
        sites, maps = graph.channel_sites(), graph.site_index()
        self.settings = settings
        self.infos: dict[str, GroupInfo] = {}
        self.m: dict[str, torch.Tensor] = {}
        self.unit: dict[str, torch.Tensor] = {}
        self.family: dict[str, str] = {}
        kept: dict[str, list[float]] = {}
        self.units: dict[str, int] = {}
        self._sites: list[tuple[nn.Module, str, phased.SiteMap]] = []
        for gp in plan.groups:
            info = infos.get(gp.id)
            if info is None or info.width != gp.width:
                raise StageError(f"plan group '{gp.id}' (width {gp.width}) does not match the unpruned model",
                                 hint="the plan was made for a different architecture; use recovery.method: distill")
            if not sites[gp.id]:
                continue
            fam = family_key(info)
            kept.setdefault(fam, []).append(len(gp.keep) / gp.width)
            self.units[fam] = info.units  # one shape per family: the same unit count
            self.infos[gp.id], self.family[gp.id], self.unit[gp.id] = info, fam, unit_index(info).to(device)
            init = self._initial(info, info.units, scores.get(gp.id) if scores is not None else None)
            self.m[gp.id] = init.detach().to(device).requires_grad_(True)
            self._sites += phased.site_entries(modules, sites[gp.id], gp.id, maps[gp.id])
        # the family's target count: the plan's mean kept fraction, in whole units, at least one
        self.target = {f: max(1, round(sum(v) / len(v) * self.units[f])) for f, v in kept.items()}
        self.s = {f: 1.0 for f in kept}
        self.lam = {f: 0.0 for f in kept}
        k = max(1, settings.steps)
        self.eta_lam = 2.0 / max(1.0, settings.bind * k) ** 2
        self.bound_at: dict[str, int | None] = {f: None for f in kept}
        self.trace: dict[str, list] = {"lambda": [], "count": []}
        self.opt = torch.optim.Adam(list(self.m.values()), lr=settings.lr)

    @staticmethod
    def _initial(info: GroupInfo, units: int, score: torch.Tensor | None) -> torch.Tensor:
        if score is None or len(score) != info.width:
            rank = torch.arange(units, 0, -1, dtype=torch.float32)  # no scores: earlier units first
        else:
            per_unit = torch.zeros(units).scatter_add_(0, unit_index(info), score.float().cpu())
            rank = per_unit.argsort().argsort().float()  # 0 = least important
        return 1.0 + 0.01 * rank / max(1, units)

    def count(self, fam: str) -> int:
        """Units kept now in each group of ``fam``: ``⌈s U⌉``, never below the target."""
        return max(self.target[fam], min(self.units[fam], math.ceil(self.s[fam] * self.units[fam] - 1e-9)))

    def hard(self, gid: str) -> torch.Tensor:
        """The 0/1 unit mask: the ``count`` largest ``m`` (ties: the lower unit index)."""
        m = self.m[gid].detach()
        top = torch.topk(m, self.count(self.family[gid]), sorted=False).indices
        return torch.zeros_like(m).index_fill_(0, top, 1.0)

    def _channel_mask(self, gid: str) -> torch.Tensor:
        m = self.m[gid]
        ste = self.hard(gid) + m - m.detach()
        return ste[self.unit[gid]]

    def attached(self):
        """Hooks that multiply each channel site's output by its group's straight-through mask."""
        return phased.site_masks(self._sites, self._channel_mask)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    @torch.no_grad()
    def step(self, k: int) -> None:
        """After the loss's backward pass: the masks' Adam and proximal steps, then ``s`` and ``λ``."""
        self.opt.step()
        shrink = 1.0 / (1.0 + 2.0 * self.settings.lr * self.settings.rho)
        for gid, m in self.m.items():
            outside = self.hard(gid) == 0
            m[outside] *= shrink
        for f in self.s:
            gap = self.s[f] - self.target[f] / self.units[f]
            self.lam[f] = max(0.0, self.lam[f] + self.eta_lam * gap)
            self.s[f] = max(self.target[f] / self.units[f], self.s[f] - self.lam[f])
            if self.bound_at[f] is None and self.count(f) == self.target[f]:
                self.bound_at[f] = k
        self.trace["lambda"].append({f: round(v, 6) for f, v in self.lam.items()})
        self.trace["count"].append({f: self.count(f) for f in self.s})

    def bind(self) -> None:
        """Force every family to its target (where the multiplier has not got there by step K)."""
        for f in self.s:
            self.s[f] = self.target[f] / self.units[f]

    def plan(self, plan: PruningPlan) -> tuple[PruningPlan, int]:
        """Each group keeps the channels of its top-``target`` units; also the number of channels that
        differ from ``plan``'s keep sets (swapped by the learning)."""
        groups, swapped = [], 0
        for gp in plan.groups:
            if gp.id not in self.m:
                groups.append(gp)
                continue
            units = self.hard(gp.id).bool()
            keep = tuple(int(c) for c in range(gp.width) if units[self.unit[gp.id][c]])
            swapped += len(set(keep) - set(gp.keep))
            groups.append(GroupPlan(gp.id, gp.width, keep))
        meta = {**plan.meta, "maskprune": {f: self.target[f] for f in self.target}}
        return PruningPlan(tuple(groups), plan.ignore, meta, plan.drop_blocks), swapped


def maskprune(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor, train: Dataset, calib: Dataset,
              scores: Mapping[str, torch.Tensor] | None, mask: MaskSettings, settings: DistillSettings, labeled: bool,
              on_step: Callable[[int, float], None] | None = None,
              probe: phased.Probe | None = None) -> tuple[nn.Module, PruningPlan, dict]:
    """Learn the masks for ``mask.steps`` steps of distillation on a copy of ``model``, remove the masked units
    exactly, distil the rest of ``settings.steps``. Returns the pruned model, its plan (uniform widths per
    family) and the record."""
    k_steps, total = mask.steps, settings.steps
    phased.check_phase_steps(k_steps, total)
    teacher = model.eval()
    student = phased.start_student(model, plan)
    graph = PruneGraph(student, example_input, plan.ignore)  # traced before any hook exists
    device = next(student.parameters()).device
    masks = FamilyMasks(student, graph, plan, scores, mask, device)
    check_x = phased.check_batch(calib, settings.batch_size, device)
    trace, every = phased.Trace(), phased.probe_period(total, probe)

    with masks.attached():
        phased.train_phase(student, teacher, train, settings, labeled, k_steps, trace,
                           after_step=lambda step, _: (masks.step(step), masks.zero_grad()), probe=probe, every=every,
                           on_step=on_step)
        masks.bind()
        student.eval()
        with torch.no_grad():
            ref = student(check_x)
    final_plan, swapped = masks.plan(plan)
    pruned, diff = phased.hard_remove(student, example_input, final_plan, check_x, ref, "the learned masks")
    plain = phased.finish(pruned, teacher, train, settings, k_steps, labeled, trace, on_step, probe, every)
    stride = max(1, k_steps // 50)
    phase = {"steps": k_steps, "families": {f: {"units": masks.units[f], "kept": masks.target[f],
                                                "bound_at": masks.bound_at[f], "lambda_final": masks.lam[f]}
                                            for f in masks.target},
             "swapped_channels": swapped, "lr": mask.lr, "rho": mask.rho, "bind": mask.bind,
             "lambda": masks.trace["lambda"][::stride], "count": masks.trace["count"][::stride],
             "hard_removal_max_abs": diff}
    return pruned.eval(), final_plan, phased.record("maskprune", settings, k_steps, trace, plain, phase)
