"""Progressive soft pruning (Gradient-Flow, Wan et al., arXiv 2501.09464; methods.md §5), then
the hard removal and plain distillation. Used by the recover stage when ``recovery.soft_steps > 0``.

Instead of removing the plan's channels at once, recovery starts from the **unpruned** model (a
copy; the teacher is the unpruned model itself) with a multiplicative mask on every channel of a
group, applied by forward hooks at the group's channel sites (its norm layers' outputs, else its
conv/linear outputs: :meth:`PruneGraph.channel_sites`). Kept channels stay at 1. For K steps the
model trains with knowledge distillation while the removed channels' masks follow a gradient flow
[RECON: the paper's energy and schedule were not available; this is our reading of the abstract]:

- energy ``E = KD loss + β · Σ_c S̃_c · m_c`` over the removed channels, with ``S_c`` the
  gradient-flow saliency of channel c (``stages.score.gradflow``: S > 0 means removing c raises
  the gradient norm, so its mask is pushed down harder) normalised by the mean ``|S|`` over the
  removed channels (``S̃``, so β has no unit);
- mask step ``m ← clip(m − η ∂E/∂m, 0, 1)`` after each optimiser step, with ``∂E/∂m`` from the
  same backward pass as the weights' gradients plus ``β S̃``;
- linear ramp: after step k, a removed channel's mask is at most ``1 − k/K``, so every removed
  mask is exactly 0 after step K (channels the flow pushes harder get there earlier).

After step K the zeroed channels carry no signal anywhere (the sites cover every output the
channel has, and ReLU(0) = 0), so removing them with the plan is exact: the hard-pruned model is
checked against the masked one on calibration inputs (tolerance ``phased.EXACT_ATOL``). The remaining
``steps − K`` steps are ordinary distillation of the pruned model; both phases share one cosine
learning-rate schedule over all ``steps``. BatchNorm statistics are not re-estimated after the
removal: the masked training already ran on the masked activations. STADE's bias compensation is
not applied on this path (the distillation adapts the biases).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import StageError
from stages.model.graph import PruneGraph
from stages.prune.plan import PruningPlan
from stages.recover import phased
from stages.recover.distill import DistillSettings, kd_batch_loss, make_optimizer, materialise


@dataclass(frozen=True)
class SoftSettings:
    """The soft phase [RECON]: K steps, energy weight β, mask step η, re-scoring period."""

    steps: int  # K
    beta: float = 0.01  # with eta = 1 the pressure on an average removed mask is 0.01 per step, the size of
    eta: float = 1.0  # the KD gradient on the masks (0.002-0.1 on the embedded default); see docs/criteria.md
    rescore_every: int = 0  # recompute S every this many steps (with the masks on); 0 = once, at the start
    score_batches: int = 1  # calibration batches per S computation (of the distillation batch size)
    select: bool = False  # the flow chooses which units end at zero (same widths as the plan), not the plan


class ChannelMasks:
    """Per-channel multiplicative masks of the plan's groups, on ``model``'s channel sites.

    ``values[gid]`` is a leaf tensor (``requires_grad``) of the group's width; ``removed[gid]``
    marks the channels the plan removes. Only groups that lose channels get hooks.
    """

    def __init__(self, model: nn.Module, graph: PruneGraph, plan: PruningPlan, select: bool = False) -> None:
        modules = dict(model.named_modules())
        sites, maps = graph.channel_sites(), graph.site_index()
        infos = {g.id: g for g in graph.groups()}
        widths = {g.id: g.width for g in infos.values()}
        self.values: dict[str, torch.Tensor] = {}
        self.removed: dict[str, torch.Tensor] = {}
        self.select = select
        self.flow: dict[str, torch.Tensor] = {}  # select: every channel's mask as the flow alone would move it
        self.unit: dict[str, torch.Tensor] = {}  # select: the unit (channel, head, conv position) of each channel
        self.planned: dict[str, torch.Tensor] = {}
        self._sites: list[tuple[nn.Module, str, phased.SiteMap]] = []
        for gp in plan.groups:
            if gp.id not in widths or widths[gp.id] != gp.width:
                raise StageError(f"plan group '{gp.id}' (width {gp.width}) does not match the unpruned model",
                                 hint="the plan was made for a different architecture; set recovery.soft_steps: 0")
            removed = torch.ones(gp.width, dtype=torch.bool)
            removed[list(gp.keep)] = False
            if not removed.any():
                continue
            device = next(modules[sites[gp.id][0]].parameters(), torch.empty(0)).device if sites[gp.id] else None
            self.values[gp.id] = torch.ones(gp.width, device=device, requires_grad=True)
            self.removed[gp.id] = removed.to(device)
            self.planned[gp.id] = removed.clone()
            self._sites += phased.site_entries(modules, sites[gp.id], gp.id, maps[gp.id])
            if select:
                info = infos[gp.id]
                self.unit[gp.id] = torch.tensor([info.unit_of(c) for c in range(gp.width)], device=device)
                self.flow[gp.id] = torch.ones(gp.width, device=device)

    def attached(self):
        """Forward hooks that multiply each site's output by its group's mask (removed on exit)."""
        return phased.site_masks(self._sites, self.values.__getitem__)

    def zero_grad(self) -> None:
        for m in self.values.values():
            m.grad = None

    @torch.no_grad()
    def flow_step(self, eta: float, pressure: Mapping[str, torch.Tensor], cap: float) -> None:
        """``m ← clip(m − η (∂KD/∂m + β S̃), 0, min(1, cap))`` on removed channels; kept stay 1.

        With ``select``, every channel's *flow value* ``v`` (starting at 1) moves by the same rule without the
        cap, and the removed set becomes, per group, the plan's number of units with the lowest mean ``v``
        (the plan's own choice first on ties): those masks are ``min(v, cap)``, the rest 1. A unit the flow
        stops pushing down leaves the set at its mask of 1; one it pushes harder enters at ``min(v, cap)``.
        """
        cap = max(0.0, min(1.0, cap))
        for gid, m in self.values.items():
            grad = m.grad if m.grad is not None else torch.zeros_like(m)
            step = eta * (grad + pressure[gid].to(m.device))
            if self.select:
                self.flow[gid] = (self.flow[gid] - step).clamp(0.0, 1.0)
                self.removed[gid] = self._lowest_units(gid)
                new = self.flow[gid].clamp(max=cap)
            else:
                new = (m - step).clamp(0.0, cap)
            m.copy_(torch.where(self.removed[gid], new, torch.ones_like(m)))
            m.grad = None

    def _lowest_units(self, gid: str) -> torch.Tensor:
        """The channels of the ``n`` units with the lowest mean flow value, ``n`` the plan's removed units."""
        unit, planned = self.unit[gid], self.planned[gid].to(self.flow[gid].device)
        units = int(unit.max()) + 1
        count = torch.zeros(units, device=unit.device).scatter_add_(0, unit, torch.ones_like(self.flow[gid]))
        mean = torch.zeros(units, device=unit.device).scatter_add_(0, unit, self.flow[gid]) / count
        in_plan = torch.zeros(units, device=unit.device).scatter_add_(0, unit, planned.float()) > 0
        n = int(in_plan.sum())
        order = sorted(range(units), key=lambda u: (float(mean[u]), not bool(in_plan[u]), u))
        chosen = torch.zeros(units, dtype=torch.bool, device=unit.device)
        chosen[order[:n]] = True
        return chosen[unit]

    def plan(self, plan: PruningPlan) -> PruningPlan:
        """``plan`` with each masked group keeping the channels outside its current removed set."""
        groups = [dataclasses.replace(gp, keep=tuple(int(c) for c in (~self.removed[gp.id]).nonzero().flatten()))
                  if gp.id in self.removed else gp for gp in plan.groups]
        return dataclasses.replace(plan, groups=tuple(groups))

    def swapped(self) -> int:
        """Channels whose fate differs from the plan's (removed here, kept there, or the reverse) / 2."""
        return int(sum(int((self.removed[g].cpu() != self.planned[g]).sum()) for g in self.removed)) // 2

    def removed_max(self) -> float:
        """The largest mask value among removed channels (0 once all are off)."""
        vals = [m.detach()[self.removed[g]].max() for g, m in self.values.items()]
        return float(max(vals)) if vals else 0.0


def flow_pressure(model: nn.Module, graph: PruneGraph, masks: ChannelMasks, batches: list, beta: float,
                  task: str = "classes") -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """``β · S̃`` per group channel: the gradient-flow saliency (of the task loss of kind ``task``) summed over
    each channel's parameters, divided by the mean ``|S|`` over the removed channels."""
    from stages.score.gradflow import parameter_saliency

    saliency, passes = parameter_saliency(model, batches, task)
    group = graph.group_sum(saliency)
    removed = [group[g][masks.removed[g].cpu()].abs() for g in masks.values]
    scale = float(torch.cat(removed).mean()) if removed else 0.0
    scale = scale if scale > 0 else 1.0
    return {g: beta * group[g] / scale for g in masks.values}, passes


def soft_prune(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor, train: Dataset, calib: Dataset,
               soft: SoftSettings, settings: DistillSettings, labeled: bool,
               on_step: Callable[[int, float], None] | None = None,
               probe: phased.Probe | None = None) -> tuple[nn.Module, PruningPlan, dict]:
    """Soft masks for ``soft.steps`` steps on a copy of ``model``, hard removal, then plain KD.

    Args:
        model: The unpruned model: the teacher, and the start of the student (never modified).
        plan: Channels to keep; the others are masked, then removed.
        example_input: A batch for tracing the dependency graph.
        train: Distillation data; ``calib``: data for the gradient-flow scores and the exactness check.
        soft: The soft phase; ``settings``: the distillation, whose ``steps`` is the total (soft + plain).
        labeled: Whether ``train`` has labels (else the CE term is dropped).
        on_step: Called with (step, loss) after every step of both phases.
        probe: The run's calibration metric of a model, sampled about ten times for the loss/metric curve.

    Returns:
        The pruned model, the plan it applied (``plan``, or with ``soft.select`` the flow's choice of channels at
        the plan's widths) and the record of both phases.
    """
    k_steps, total = soft.steps, settings.steps
    phased.check_phase_steps(k_steps, total)
    teacher = model.eval()
    student = phased.start_student(model, plan)
    graph = PruneGraph(student, example_input, plan.ignore)  # traced before any hook exists
    masks = ChannelMasks(student, graph, plan, soft.select)
    device = next(student.parameters()).device
    score_data = [b for _, b in zip(range(max(1, soft.score_batches)),
                                    DataLoader(calib, batch_size=settings.batch_size, shuffle=False))]
    check_x = score_data[0][0][:32].to(device)
    trace, every = phased.Trace(), phased.probe_period(total, probe)

    mask_max, passes, ref = _soft_phase(student, teacher, graph, masks, score_data, check_x, train, soft,
                                        settings, labeled, on_step, trace, probe, every)
    final_plan = masks.plan(plan) if soft.select else plan
    pruned, diff = phased.hard_remove(student, example_input, final_plan, check_x, ref, "the soft masks")
    plain = phased.finish(pruned, teacher, train, settings, k_steps, labeled, trace, on_step, probe, every)
    losses = trace.losses[:k_steps]
    n = max(1, len(losses) // 10)
    phase = {"steps": k_steps, "beta": soft.beta, "eta": soft.eta, "rescore_every": soft.rescore_every,
             "removed_channels": int(sum(int(r.sum()) for r in masks.removed.values())),
             "loss_first": sum(losses[:n]) / n, "loss_last": sum(losses[-n:]) / n,
             "mask_max": [round(v, 4) for v in mask_max], "score_passes": passes, "hard_removal_max_abs": diff,
             "select": soft.select, "swapped_channels": masks.swapped() if soft.select else None}
    rec = phased.record("gradflow", settings, k_steps, trace, plain, phase)
    return pruned.eval(), final_plan, {**rec, "soft": phase}


def _soft_phase(student: nn.Module, teacher: nn.Module, graph: PruneGraph, masks: ChannelMasks, score_data: list,
                check_x: torch.Tensor, train: Dataset, soft: SoftSettings, settings: DistillSettings, labeled: bool,
                on_step: Callable[[int, float], None] | None, trace: phased.Trace, probe: phased.Probe | None,
                every: int) -> tuple[list[float], dict, torch.Tensor]:
    """The ``soft.steps`` KD steps with the masks decaying along the gradient flow (losses into ``trace``);
    returns the largest removed mask after each step, the passes spent on scores, and the student's output
    on ``check_x`` with the masks at 0 (what the hard removal must reproduce)."""
    k_steps, total = soft.steps, settings.steps
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    xs, ys = materialise(train)
    sched = dataclasses.replace(settings, schedule_start=0, schedule_steps=total)
    opt, base_lr = make_optimizer(student, settings)
    t, alpha = settings.temperature, settings.alpha if labeled else 1.0
    device = next(student.parameters()).device
    losses = trace.losses
    mask_max: list[float] = []
    passes = {"forward": 0, "backward": 0}
    with masks.attached():
        pressure, p = flow_pressure(student, graph, masks, score_data, soft.beta, settings.task)
        passes = {k: passes[k] + p[k] for k in passes}
        for step in range(k_steps):
            for pg in opt.param_groups:
                pg["lr"] = sched.lr_at(step, base_lr)
            loss = kd_batch_loss(student, teacher, xs, ys, settings.batch_size, gen, t, alpha, device, loss=settings.loss,
                                 pw=(settings.pw_min_weight, settings.pw_gamma))
            opt.zero_grad(set_to_none=True)
            masks.zero_grad()
            loss.backward()
            opt.step()
            masks.flow_step(soft.eta, pressure, cap=1.0 - (step + 1) / k_steps)
            losses.append(loss.item())
            mask_max.append(masks.removed_max())
            if probe is not None and (step + 1) % every == 0:
                trace.metric.append((step + 1, probe(student)))
            if on_step is not None:
                on_step(step + 1, losses[-1])
            if soft.rescore_every and (step + 1) % soft.rescore_every == 0 and step + 1 < k_steps:
                pressure, p = flow_pressure(student, graph, masks, score_data, soft.beta, settings.task)
                passes = {k: passes[k] + p[k] for k in passes}
        student.eval()
        with torch.no_grad():
            ref = student(check_x)
    return mask_max, passes, ref
