"""The recovery-method registry (``recovery.method``, ``--recovery-method``, ``pipeline recoveries``).

A method takes a :class:`RecoveryJob` (the unpruned teacher, the one-shot pruned model, the plan, the
data, the distillation settings, its own options) and returns a :class:`Recovered`: the recovered
model, the plan it applied (DPM's self-rectifying and MaskPrune's learning may keep other channels,
never other widths) and a JSON record with the loss / metric curve. Adding a method is one function
here with :func:`register` and its test.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from core.errors import ConfigError
from core.registry import Registry
from stages.prune.plan import PruningPlan
from stages.recover import dpm as _dpm
from stages.recover import maskprune as _mp
from stages.recover import phased
from stages.recover.distill import DistillSettings, distill


@dataclass
class RecoveryJob:
    """Everything a recovery method may use.

    ``phase_steps`` is ``recovery.soft_steps``: the steps before the hard removal for the methods
    that decide during training (0: the method's default); ``scores`` the criterion's channel scores
    (None when a policy was replayed); ``on_step(step, loss)`` is called after every step (the
    pipeline's progress bar; with ``prune.sparsity`` it also puts the weight masks back);
    ``probe(model)`` gives the run's calibration metric for the curve.
    """

    teacher: nn.Module
    pruned: nn.Module
    plan: PruningPlan
    example_input: torch.Tensor
    train: Dataset
    calib: Dataset
    settings: DistillSettings
    labeled: bool
    phase_steps: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)
    scores: Mapping[str, torch.Tensor] | None = None
    on_step: Callable[[int, float], None] | None = None
    probe: phased.Probe | None = None
    soft: Any = None  # gradient-flow SoftSettings (method distill with recovery.soft_steps > 0)
    hold: Callable[[nn.Module], None] | None = None  # after every plain-KD step (prune.sparsity: the zeros stay)

    def default_phase(self) -> int:
        return self.phase_steps or max(1, self.settings.steps // 2)


@dataclass
class Recovered:
    model: nn.Module
    plan: PruningPlan
    record: dict


@dataclass(frozen=True)
class RecoveryMethod:
    """One registered method: ``run(job, options)``, its options' defaults, a summary and its source."""

    name: str
    run: Callable[[RecoveryJob, Mapping[str, Any]], Recovered]
    summary: str
    params: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""
    trains: bool = True  # False: ``none``

    def resolve_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(options) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise ConfigError(f"recovery method '{self.name}' has no option {unknown[0]!r}",
                              hint=f"its options: {known} (see `pipeline recoveries`)")
        out = dict(self.params)
        for k, v in options.items():
            default = self.params[k]
            try:
                out[k] = _coerce(v, default)
            except ValueError:
                raise ConfigError(f"recovery option {k}={v!r} is not a {type(default).__name__}",
                                  hint=f"default {default!r}") from None
        return out

    def __call__(self, job: RecoveryJob) -> Recovered:
        return self.run(job, self.resolve_options(job.options))


def _coerce(v: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if isinstance(v, str):
            if v.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(v)
            return v.lower() in ("true", "1", "yes")
        return bool(v)
    return type(default)(v)


RECOVERIES: Registry[RecoveryMethod] = Registry("recovery method", "recovery methods")


def register(name: str, *, summary: str, params: Mapping[str, Any] | None = None, source: str = "",
             trains: bool = True) -> Callable:
    def deco(fn: Callable[[RecoveryJob, Mapping[str, Any]], Recovered]) -> Callable:
        RECOVERIES.add(name, RecoveryMethod(name, fn, summary, dict(params or {}), source, trains))
        return fn
    return deco


@register("none", summary="no recovery: the one-shot pruned model as it is", trains=False)
def _none(job: RecoveryJob, options: Mapping[str, Any]) -> Recovered:
    return Recovered(job.pruned, job.plan, {"method": "none", "steps": 0})


@register("distill", summary="hard prune, then KD from the unpruned model (or the PW loss); with "
                             "recovery.soft_steps > 0 gradient-flow soft masks first (select=true: the flow "
                             "chooses which channels end at zero)",
          params={"select": False},
          source="Hinton et al. KD; gradient flow: Wan et al., arXiv 2501.09464 [RECON] (methods.md §5)")
def _distill(job: RecoveryJob, options: Mapping[str, Any]) -> Recovered:
    if options.get("select") and job.soft is None:
        raise ConfigError("recovery option select=true chooses channels during the gradient-flow soft phase, "
                          "and recovery.soft_steps is 0", hint="add --phase-steps K (K > 0), or drop select")
    if job.soft is not None:
        import dataclasses

        from stages.recover.soft import soft_prune

        soft = dataclasses.replace(job.soft, select=bool(options.get("select")))
        model, plan, rec = soft_prune(job.teacher, job.plan, job.example_input, job.train, job.calib, soft,
                                      job.settings, job.labeled, on_step=job.on_step, probe=job.probe)
        return Recovered(model, plan, rec)
    student = copy.deepcopy(job.pruned)
    trace, every = phased.Trace(), phased.probe_period(job.settings.steps, job.probe)

    def tick(step: int, loss: float) -> None:
        if job.hold is not None:
            job.hold(student)
        trace.losses.append(loss)
        if job.probe is not None and (step % every == 0 or step == job.settings.steps):
            trace.metric.append((step, job.probe(student)))
        if job.on_step is not None:
            job.on_step(step, loss)

    rec = distill(student, job.teacher, job.train, job.settings, job.labeled, on_step=tick)
    return Recovered(student, job.plan, {**rec, "method": "distill", "curve": trace.curve()})


def _phased(run: Callable, settings: Callable) -> Callable[[RecoveryJob, Mapping[str, Any]], Recovered]:
    """A method that decides during training (``run(teacher, plan, example, train, calib, scores, its settings,
    distill settings, labeled, on_step=, probe=) -> (model, plan, record)``), its settings from the options."""

    def method(job: RecoveryJob, options: Mapping[str, Any]) -> Recovered:
        model, plan, rec = run(job.teacher, job.plan, job.example_input, job.train, job.calib, job.scores,
                               settings(job.default_phase(), options), job.settings, job.labeled,
                               on_step=job.on_step, probe=job.probe)
        return Recovered(model, plan, rec)
    return method


register("dpm", summary="decay the plan's channel norms to 0 over recovery.soft_steps steps while training, "
                        "releasing the ones that resist (self-rectifying); exact removal, then KD",
         params=_dpm.PARAMS, source=_dpm.SOURCE)(_phased(_dpm.dpm_prune, _dpm.DpmSettings.from_options))
register("maskprune", summary="learn head / FFN / channel masks (STE, minimax multiplier) to one width per family "
                              "over recovery.soft_steps steps; exact removal, then KD",
         params=_mp.PARAMS, source=_mp.SOURCE)(_phased(_mp.maskprune, _mp.MaskSettings.from_options))
