"""What every "decide during training, then remove" recovery shares (gradient-flow soft masks, DPM,
MaskPrune): a student copied from the unpruned model, a phase of K steps on it, the exact hard
removal of the plan's channels (checked against the student's own output), then plain distillation
for the remaining ``steps - K`` steps on one cosine schedule, and a record with the loss curve.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from core.errors import ConfigError, StageError
from stages.prune.plan import PruningPlan, apply_plan
from stages.recover.distill import DistillSettings, distill, kd_batch_loss, make_optimizer, materialise

EXACT_ATOL = 1e-4  # student at step K vs. hard-pruned model: max |diff| <= EXACT_ATOL * max(1, max |out|)
CURVE_POINTS = 200  # loss-curve points kept in a record (every step up to this, else evenly thinned)

Probe = Callable[[nn.Module], float]  # the run's calibration metric of a model (the pipeline's evaluator)


@dataclass
class Trace:
    """Loss per step and the probe's metric at a few steps, for the record and the report's plot."""

    losses: list[float] = field(default_factory=list)
    metric: list[tuple[int, float]] = field(default_factory=list)

    def curve(self) -> dict:
        n = len(self.losses)
        stride = max(1, -(-n // CURVE_POINTS))
        steps = list(range(1, n + 1, stride))
        return {"step": steps, "loss": [round(self.losses[s - 1], 6) for s in steps],
                "metric_step": [s for s, _ in self.metric], "metric": [round(v, 4) for _, v in self.metric]}


def check_phase_steps(k_steps: int, total: int, key: str = "recovery.soft_steps") -> None:
    if k_steps <= 0 or k_steps > total:
        raise ConfigError(f"{key}={k_steps} must be in 1..recovery.steps ({total})",
                          hint=f"lower {key} or raise recovery.steps")


def start_student(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """A trainable copy of the unpruned ``model`` (never modified), with the plan's dropped blocks."""
    blocks = tuple(getattr(plan, "drop_blocks", ()))  # depth pruning: the plan's groups are those without them
    if blocks:
        from stages.model.blocks import drop_blocks

        return drop_blocks(model, blocks)
    return copy.deepcopy(model)


def check_batch(calib: Dataset, batch_size: int, device: torch.device) -> torch.Tensor:
    """Up to 32 calibration inputs: what the hard removal must reproduce."""
    x = next(iter(DataLoader(calib, batch_size=min(32, batch_size), shuffle=False)))[0]
    return x.to(device)


def hard_remove(student: nn.Module, example_input: torch.Tensor, plan: PruningPlan, check_x: torch.Tensor,
                ref: torch.Tensor, what: str) -> tuple[nn.Module, float]:
    """Apply ``plan`` to a copy of ``student`` (no hooks attached) and check that its outputs on ``check_x``
    equal ``ref``, the student's own output on them with its masks (if any) at their final values."""
    pruned = apply_plan(student, example_input, plan)
    with torch.no_grad():
        diff = float((pruned(check_x) - ref).abs().max())
    if diff > EXACT_ATOL * max(1.0, float(ref.abs().max())):
        raise StageError(f"hard removal after {what} changed the outputs by {diff:.3g} (tolerance {EXACT_ATOL:g}): "
                         "a removed channel still reaches the output",
                         hint="this architecture has a channel path the method misses; use recovery.method: distill")
    return pruned, diff


def finish(pruned: nn.Module, teacher: nn.Module, train: Dataset, settings: DistillSettings, k_steps: int,
           labeled: bool, trace: Trace, on_step: Callable[[int, float], None] | None, probe: Probe | None,
           probe_every: int) -> dict:
    """Plain distillation of the hard-pruned model for ``steps - k_steps`` steps, on the schedule of all
    ``steps``; extends ``trace``. Returns the plain phase's record."""
    total = settings.steps
    plain = dataclasses.replace(settings, steps=total - k_steps, seed=settings.seed + 1,
                                schedule_start=k_steps, schedule_steps=total)

    def tick(s: int, loss: float) -> None:
        trace.losses.append(loss)
        step = k_steps + s
        if probe is not None and (step % probe_every == 0 or step == total):
            trace.metric.append((step, probe(pruned)))
            pruned.train()
        if on_step is not None:
            on_step(step, loss)

    return distill(pruned, teacher, train, plain, labeled, on_step=tick)


def probe_period(total: int, probe: Probe | None) -> int:
    """Probe the metric about ten times over a run."""
    return max(1, total // 10) if probe is not None else 0


def record(method: str, settings: DistillSettings, k_steps: int, trace: Trace, plain: dict, phase: dict) -> dict:
    n = max(1, min(k_steps, len(trace.losses)) // 10)
    first = trace.losses[:n]
    return {"method": method, "steps": settings.steps, "phase_steps": k_steps,
            "loss_first": sum(first) / max(1, len(first)),
            "loss_last": plain["loss_last"] if plain.get("steps") else sum(trace.losses[-n:]) / n,
            "phase": phase, "plain": plain, "curve": trace.curve()}


SiteMap = tuple[torch.Tensor, torch.Tensor] | None  # (output channel index, group channel) pairs; None: one to one


def site_entries(modules: dict[str, nn.Module], names: Sequence[str], gid: str,
                 maps: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> list[tuple[nn.Module, str, SiteMap]]:
    """The ``site_masks`` entries of group ``gid`` at its sites ``names`` (maps: :meth:`PruneGraph.site_index`)."""
    return [(modules[n], gid, maps.get(n)) for n in names]


@contextmanager
def site_masks(sites: Sequence[tuple[nn.Module, str, SiteMap]], mask_of: Callable[[str], torch.Tensor]
               ) -> Iterator[None]:
    """Forward hooks that multiply each channel site's output by ``mask_of(group)`` (channels on the last
    axis for Linear / LayerNorm outputs, else on axis 1), removed on exit. A site whose output carries the
    group's channels elsewhere (a norm after a concatenation) multiplies only those, by its map."""
    def hook(mod: nn.Module, gid: str, where: SiteMap) -> Callable:
        last = isinstance(mod, (nn.Linear, nn.LayerNorm))

        def fn(_mod, _inp, out):
            mask = mask_of(gid).to(out.device, out.dtype)
            if where is not None:
                index, channel = (t.to(out.device) for t in where)
                full = torch.ones(out.shape[-1 if last else 1], device=out.device, dtype=out.dtype)
                mask = full.index_put((index,), mask[channel])
            return out * (mask if last else mask.view(1, -1, *([1] * (out.dim() - 2))))
        return fn

    hooks = [mod.register_forward_hook(hook(mod, gid, where)) for mod, gid, where in sites]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


def train_phase(student: nn.Module, teacher: nn.Module, train: Dataset, settings: DistillSettings, labeled: bool,
                k_steps: int, trace: Trace, *, before_step: Callable[[int], object] | None = None,
                after_step: Callable[[int, object], None] | None = None, probe: Probe | None = None,
                every: int = 0, on_step: Callable[[int, float], None] | None = None) -> None:
    """Steps 1..``k_steps`` of distillation on ``student`` (schedule over all ``settings.steps``):
    ``before_step(step)`` runs after the backward pass and before the optimiser step, ``after_step(step,
    its result)`` after the optimiser step; the loss goes into ``trace``, the probe every ``every`` steps."""
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    xs, ys = materialise(train)
    opt, base_lr = make_optimizer(student, settings)
    t, alpha = settings.temperature, settings.alpha if labeled else 1.0
    device = next(student.parameters()).device
    for step in range(1, k_steps + 1):
        for pg in opt.param_groups:
            pg["lr"] = settings.lr_at(step - 1, base_lr)
        loss = kd_batch_loss(student, teacher, xs, ys, settings.batch_size, gen, t, alpha, device, loss=settings.loss,
                             pw=(settings.pw_min_weight, settings.pw_gamma))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        state = before_step(step) if before_step is not None else None
        opt.step()
        if after_step is not None:
            after_step(step, state)
        trace.losses.append(loss.item())
        if probe is not None and every and step % every == 0:
            trace.metric.append((step, probe(student)))
        if on_step is not None:
            on_step(step, trace.losses[-1])
    student.eval()
