"""Decay Pruning Method, DPM (Yang et al., arXiv 2406.03879; methods.md §6): smooth pruning with
self-rectifying, wrapped around any criterion. The paper's code was never published (the repository
holds a README and a results table), so the schedule and the self-rectifying rule below are the
reconstruction of methods.md, marked [RECON].

Recovery starts from the **unpruned** model (a copy; the teacher is the unpruned model itself). The
plan's removed channels are the *selection*. For N steps (``recovery.soft_steps``; default half of
``recovery.steps``) the model trains with distillation (the run's KD / PW loss) and, after every
optimiser step, each selected channel's weights are rescaled to a norm that falls to 0:

- smooth pruning [SEC + RECON schedule]: ``x_{k+1} = x*_{k+1} · L_k / ||x*_{k+1}||``, ``x*`` the
  optimiser's update, ``L_k = L_0 (1 − (k − k_0)/(N − k_0))``; ``L_0`` the channel's norm when it
  started decaying (step ``k_0``: 0 for the plan's channels). Only the norm is forced, the direction
  keeps learning. ``x`` is the channel's *producing* parameters (conv filter / Linear row, bias
  entry, norm-layer weight and bias entries: :meth:`PruneGraph.out_slices`; our choice: the
  consumers' input columns are not decayed, they stop mattering once the channel outputs 0);
- self-rectifying [RECON]: ``C_rate = ||x*_{k+1}|| / ||x_k|| − 1`` (how strongly the optimiser
  regrows the channel) and ``C_len = ||g(x_k)||`` over the mean gradient norm of its group's
  channels. A channel with ``C_rate > t_rate`` and ``C_len > t_len`` in ``patience`` consecutive
  steps (ours: one noisy step is no evidence) is *released*: its norm is restored to ``L_0`` and
  the next-ranked channel of the same group (lowest criterion score among the kept channels never
  released) starts decaying from its current norm, so the plan's widths hold. In an attention group
  the unit is a whole head (its channels' vector decays, resists and is swapped as one), so the
  plan stays in whole heads (a grouped convolution's: a position inside its conv groups, cut in all). Releases happen only
  during the first ``rectify_until`` of the N steps and at most ``max_swaps`` of the selection
  (ours: a replacement needs steps to decay, and late in the ramp ``C_rate`` of a nearly-zero
  channel is large for any gradient).

Thresholds (measured, digits ResNet-20, SGD lr 0.01): behind a BatchNorm a conv filter is scale-invariant,
so the optimiser barely regrows a decaying channel: ``C_rate`` stayed below 1e-3 (under 0.5% of the
schedule's per-step decrement) while ``C_len`` of the selection reached 1.5-7. ``t_rate`` therefore
defaults to 0 (any regrowth counts) and the gradient length carries the decision.

At step N every selected channel is exactly 0, so the hard removal (the plan with the swaps applied)
is exact; it is checked on calibration inputs (``phased.EXACT_ATOL``). Then the BatchNorm statistics
are re-estimated on calibration batches, as the one-shot prune does (measured: the running
statistics lag the decaying inputs so far that the digits ResNet at 60% read 7% calibration top-1
right after the removal, 84% after re-estimation). The remaining ``steps − N`` steps are plain
distillation of the pruned model on the same cosine schedule.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import Dataset

from core.errors import ConfigError, StageError
from stages.model.graph import ChannelSlice, PruneGraph
from stages.prune.plan import GroupPlan, PruningPlan, recalibrate_bn
from stages.recover import phased
from stages.recover.distill import DistillSettings

RECALIBRATE_BATCHES = 8  # BatchNorm statistics re-estimated after the hard removal, on this many calibration batches
SOURCE = "DPM, Yang et al., arXiv 2406.03879 [RECON schedule and self-rectifying] (methods.md §6)"
PARAMS = {
    "rectify": True,  # self-rectifying on/off
    "t_rate": 0.0,  # C_rate threshold: the optimiser regrew the channel's norm at all in this step (see below)
    "t_len": 1.5,  # C_len threshold: its gradient norm is 1.5x its group's mean
    "patience": 3,  # consecutive steps both hold before a release (ours)
    "rectify_until": 0.5,  # releases only in this first fraction of the N steps (ours)
    "max_swaps": 0.1,  # at most this fraction of the selection is released (ours)
}


@dataclass(frozen=True)
class DpmSettings:
    steps: int  # N
    rectify: bool = True
    t_rate: float = 0.0
    t_len: float = 1.5
    patience: int = 3
    rectify_until: float = 0.5
    max_swaps: float = 0.1

    @classmethod
    def from_options(cls, steps: int, o: Mapping[str, object]) -> DpmSettings:
        s = cls(steps, bool(o["rectify"]), float(o["t_rate"]), float(o["t_len"]), int(o["patience"]),
                float(o["rectify_until"]), float(o["max_swaps"]))
        checks = [(s.t_len >= 0, "t_len must be >= 0"), (s.patience >= 1, "patience must be >= 1"),
                  (0 <= s.rectify_until <= 1, "rectify_until must be in [0, 1]"),
                  (0 <= s.max_swaps <= 1, "max_swaps must be in [0, 1]")]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(f"recovery dpm: {msg}", hint="see `pipeline recoveries` for the defaults")
        return s


def target_norm(l0: float, k0: int, step: int, n: int) -> float:
    """``L_0 (1 − (k − k_0)/(N − k_0))``, 0 from step N on."""
    if step >= n:
        return 0.0
    return l0 * max(0.0, 1.0 - (step - k0) / max(1, n - k0))


class Decay:
    """The selected units of every group, their decay starts and the candidates that replace releases.

    A *unit* is what is removed as one: a channel, or a whole attention head in a head group (its
    channels' vector decays as one, and a release swaps whole heads, so the plan stays in whole heads).

    Args:
        model: The student (its parameters are rescaled in place).
        slices: :meth:`PruneGraph.out_slices` of ``model``.
        plan: The channels to remove (those not kept).
        scores: The criterion's channel scores per group (the next-ranked candidate is the lowest kept unit,
            by the sum of its channels' scores); a group without scores ranks its kept units by their norm.
        units: Per group id, the unit of every channel (default: each channel its own unit).
    """

    def __init__(self, model: nn.Module, slices: Mapping[str, list[ChannelSlice]], plan: PruningPlan,
                 scores: Mapping[str, torch.Tensor] | None, units: Mapping[str, torch.Tensor] | None = None) -> None:
        self.params = dict(model.named_parameters())
        self.plans = {g.id: g for g in plan.groups}
        self.slices = {g: s for g, s in slices.items() if g in self.plans}
        missing = [g.id for g in plan.groups if len(g.keep) < g.width and not self.slices.get(g.id)]
        if missing:
            raise StageError(f"DPM cannot decay group '{missing[0]}': no conv/linear/norm produces its channels",
                             hint="use recovery.method: distill for this model")
        self.unit = {g: (units or {}).get(g, torch.arange(gp.width)).long() for g, gp in self.plans.items()}
        self.start: dict[str, dict[int, tuple[float, int]]] = {}  # group -> unit -> (L_0, k_0)
        self.queue: dict[str, list[int]] = {}
        self.released: dict[str, set[int]] = {}
        self.streak: dict[str, torch.Tensor] = {}
        for gid, gp in self.plans.items():
            unit = self.unit[gid]
            kept = {int(unit[c]) for c in gp.keep}
            removed = sorted({int(unit[c]) for c in range(gp.width)} - kept)
            if not removed:
                continue
            norms = self.norms(gid)
            self.start[gid] = {u: (float(norms[u]), 0) for u in removed}
            rank = scores.get(gid) if scores is not None else None
            key = (torch.zeros(len(norms), dtype=torch.float64).scatter_add_(0, unit, rank.double().cpu())
                   if rank is not None and len(rank) == gp.width else norms)
            self.queue[gid] = sorted(kept, key=lambda u: (float(key[u]), u))
            self.released[gid] = set()
            self.streak[gid] = torch.zeros(len(norms), dtype=torch.long)
        self.total = sum(len(v) for v in self.start.values())
        self.swaps: list[dict] = []

    def _per_unit(self, gid: str, grad: bool = False) -> torch.Tensor:
        unit = self.unit[gid]
        sq = torch.zeros(int(unit.max()) + 1, dtype=torch.float64)
        for sl in self.slices[gid]:
            p = self.params[sl.name]
            t = p.grad if grad else p.detach()
            if t is None:
                continue
            part = t.detach().index_select(sl.dim, sl.index.to(t.device)).double().pow(2)
            part = part.transpose(0, sl.dim).reshape(len(sl.index), -1).sum(1).cpu()
            sq.scatter_add_(0, unit[sl.channel], part)
        return sq.sqrt()

    def norms(self, gid: str) -> torch.Tensor:
        """The norm of each unit's producing parameters."""
        return self._per_unit(gid)

    def grad_norms(self, gid: str) -> torch.Tensor:
        return self._per_unit(gid, grad=True)

    @torch.no_grad()
    def scale(self, gid: str, factor: torch.Tensor) -> None:
        """Multiply each unit's producing parameters by ``factor[unit]``."""
        per_channel = factor[self.unit[gid]]
        for sl in self.slices[gid]:
            p = self.params[sl.name]
            full = torch.ones(p.shape[sl.dim], dtype=p.dtype, device=p.device)
            full[sl.index.to(p.device)] = per_channel[sl.channel].to(p.dtype).to(p.device)
            p.mul_(full.view(*([1] * sl.dim), -1, *([1] * (p.dim() - sl.dim - 1))))

    def snapshot(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Norms and gradient norms before the optimiser step (for self-rectifying)."""
        return {g: (self.norms(g), self.grad_norms(g)) for g in self.start}

    def rectify(self, before: Mapping[str, tuple[torch.Tensor, torch.Tensor]], step: int, s: DpmSettings) -> None:
        """Release resisting channels and start their replacements (after the optimiser step, before the decay)."""
        if len(self.swaps) >= s.max_swaps * self.total:
            return
        for gid, sel in self.start.items():
            prev, grad = before[gid]
            now = self.norms(gid)
            mean_grad = float(grad.mean()) or 1.0
            c_rate = now / prev.clamp_min(1e-12) - 1
            c_len = grad / mean_grad
            resist = (c_rate > s.t_rate) & (c_len > s.t_len)
            streak = self.streak[gid]
            streak.copy_(torch.where(resist, streak + 1, torch.zeros_like(streak)))
            for c in sorted(sel, key=lambda c: -int(streak[c])):
                if streak[c] < s.patience or len(self.swaps) >= s.max_swaps * self.total:
                    continue
                nxt = next((k for k in self.queue[gid] if k not in self.released[gid]), None)
                if nxt is None:
                    continue
                self.queue[gid].remove(nxt)
                l0 = sel.pop(c)[0]
                self.released[gid].add(c)
                self.queue[gid].append(c)  # kept now; never re-selected (released)
                factor = torch.ones(len(now), dtype=torch.float64)
                factor[c] = l0 / max(float(now[c]), 1e-12)
                self.scale(gid, factor)
                sel[nxt] = (float(now[nxt]), step)
                streak[c] = streak[nxt] = 0
                self.swaps.append({"group": gid, "released": c, "replaced_by": nxt, "step": step,
                                   "c_rate": round(float(c_rate[c]), 5), "c_len": round(float(c_len[c]), 3)})

    def decay(self, step: int, n: int) -> float:
        """Rescale every selected channel to its target norm after ``step``; returns the largest target."""
        top = 0.0
        for gid, sel in self.start.items():
            now = self.norms(gid)
            factor = torch.ones(len(now), dtype=torch.float64)
            for c, (l0, k0) in sel.items():
                t = target_norm(l0, k0, step, n)
                top = max(top, t)
                factor[c] = t / float(now[c]) if now[c] > 0 else 0.0
            self.scale(gid, factor)
        return top

    def plan(self, plan: PruningPlan) -> PruningPlan:
        """``plan`` with the swaps applied (same widths)."""
        groups = []
        for gp in plan.groups:
            if gp.id in self.start:
                unit = self.unit[gp.id]
                keep = tuple(c for c in range(gp.width) if int(unit[c]) not in self.start[gp.id])
                groups.append(GroupPlan(gp.id, gp.width, keep))
            else:
                groups.append(gp)
        return PruningPlan(tuple(groups), plan.ignore, {**plan.meta, "dpm_swaps": len(self.swaps)}, plan.drop_blocks)


def dpm_prune(model: nn.Module, plan: PruningPlan, example_input: torch.Tensor, train: Dataset, calib: Dataset,
              scores: Mapping[str, torch.Tensor] | None, dpm: DpmSettings, settings: DistillSettings, labeled: bool,
              on_step: Callable[[int, float], None] | None = None,
              probe: phased.Probe | None = None) -> tuple[nn.Module, PruningPlan, dict]:
    """Decay the plan's channels over ``dpm.steps`` steps of distillation on a copy of ``model``, remove them
    exactly, distil the rest of ``settings.steps``. Returns the pruned model, the plan it applied (the
    swaps of self-rectifying included: same widths) and the record."""
    k_steps, total = dpm.steps, settings.steps
    phased.check_phase_steps(k_steps, total)
    teacher = model.eval()
    student = phased.start_student(model, plan)
    graph = PruneGraph(student, example_input, plan.ignore)
    infos = {g.id: g for g in graph.groups()}
    units = {g: torch.tensor([i.unit_of(c) for c in range(i.width)])  # whole heads; grouped convs: positions
             for g, i in infos.items() if i.units != i.width}
    decay = Decay(student, graph.out_slices(), plan, scores, units)
    device = next(student.parameters()).device
    check_x = phased.check_batch(calib, settings.batch_size, device)
    trace, every = phased.Trace(), phased.probe_period(total, probe)

    tops: list[float] = []

    def before(step: int):
        return decay.snapshot() if dpm.rectify and step <= dpm.rectify_until * k_steps and step < k_steps else None

    def after(step: int, snap) -> None:
        if snap is not None:
            decay.rectify(snap, step, dpm)
        tops.append(decay.decay(step, k_steps))

    phased.train_phase(student, teacher, train, settings, labeled, k_steps, trace, before_step=before,
                       after_step=after, probe=probe, every=every, on_step=on_step)
    with torch.no_grad():
        ref = student(check_x)
    final_plan = decay.plan(plan)
    pruned, diff = phased.hard_remove(student, example_input, final_plan, check_x, ref, "the DPM decay")
    bn = recalibrate_bn(pruned, calib, RECALIBRATE_BATCHES, settings.batch_size)
    plain = phased.finish(pruned, teacher, train, settings, k_steps, labeled, trace, on_step, probe, every)
    phase = {"steps": k_steps, "selected": decay.total, "swapped": len(decay.swaps), "swaps": decay.swaps[:50],
             "rectify": dpm.rectify, "t_rate": dpm.t_rate, "t_len": dpm.t_len, "patience": dpm.patience,
             "target_norm_max": [round(v, 5) for v in tops[:: max(1, len(tops) // 50)]],
             "hard_removal_max_abs": diff, "bn_recalibrated": bn}
    return pruned.eval(), final_plan, phased.record("dpm", settings, k_steps, trace, plain, phase)
