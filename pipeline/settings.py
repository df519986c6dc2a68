"""Config -> stage settings, in one place.

Every stage, search and target takes a small frozen settings object; this module is the only
place that reads a :class:`~pipeline.config.RunConfig` to make them, so the tune stage and every
``pipeline worker`` build the same evaluator from the same config (:func:`build_evaluator`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.final_measure import FinalSettings
from search.base import SearchLimits
from search.budget import Budgets
from search.evaluator import CandidateEvaluator, EvaluatorSettings, Subject
from search.registry import TuneSettings
from stages.evaluate import EVALUATORS
from stages.export import ExportSettings
from stages.load.models import ModelRequest
from stages.prune.apply import PruneSettings
from stages.recover.distill import DistillSettings, loss_for
from targets.base import MeasureSettings


def model_request(cfg: RunConfig) -> ModelRequest:
    """What loads the run's model (the load stage and every ``pipeline worker``)."""
    return ModelRequest(cfg.model, cfg.arch, cfg.input_shape, cfg.trust_checkpoint, cfg.task, cfg.output)


def export_settings(cfg: RunConfig) -> ExportSettings:
    e = cfg.export
    return ExportSettings(opset=e.opset, exporter=e.exporter, atol=e.atol, rtol=e.rtol)


def measure_settings(cfg: RunConfig, candidate: bool = False) -> MeasureSettings:
    """The final measurement's settings, or a search candidate's (shorter rounds)."""
    m = cfg.measure
    duration = m.candidate_duration_s if candidate else m.min_duration_s
    return MeasureSettings(m.threads, m.batch, m.warmup_s, duration, m.min_iters)


def distill_settings(cfg: RunConfig, steps: int, metric: str | None = None) -> DistillSettings:
    """Recovery of ``steps`` steps; the loss fits the run's ``metric`` (:func:`stages.recover.distill.loss_for`)."""

    r = cfg.recovery
    task = EVALUATORS.get(metric).loss if metric else "classes"
    return DistillSettings(steps=steps, batch_size=r.batch_size, lr=r.lr, temperature=r.temperature,
                           alpha=r.alpha, seed=cfg.seed, loss="pw" if r.loss == "pw" else loss_for(metric),
                           optimizer=r.optimizer, task=task, pw_min_weight=r.pw_min_weight, pw_gamma=r.pw_gamma)


def score_loss(cfg: RunConfig, metric: str) -> str:
    """The task loss gradient criteria differentiate: the metric's kind, or the PW loss with the recovery's
    parameters when ``recovery.loss: pw`` and the model outputs classes."""
    from stages.model.losses import pw_kind

    kind = EVALUATORS.get(metric).loss
    r = cfg.recovery
    return pw_kind(r.pw_min_weight, r.pw_gamma) if r.loss == "pw" and kind == "classes" else kind


def prune_settings(cfg: RunConfig, criterion: str | None = None) -> PruneSettings:
    """The pruner's settings; ``criterion`` overrides the config's (a replayed plan's own criterion)."""
    p = cfg.prune
    return PruneSettings(str(criterion or cfg.criterion), p.recalibrate_bn, p.recalibrate_batches)


def search_limits(cfg: RunConfig) -> SearchLimits:
    t = cfg.tune
    return SearchLimits(cfg.prune.max_ratio, t.step, t.min_step, t.max_candidates, t.time_limit_s, t.latency_margin)


def target_options(cfg: RunConfig) -> dict:
    """The target's options: ``target_options`` plus ``--device``."""
    return {**cfg.target_options, **({"device": cfg.device} if cfg.device else {})}


def final_settings(cfg: RunConfig) -> FinalSettings:
    """The final measurement's rounds per call, time cap and interval coverage."""
    m = cfg.measure
    return FinalSettings(rounds=m.final_rounds, cap_s=m.verdict_cap_s, level=m.verdict_level)


def budgets(cfg: RunConfig, baseline_accuracy: float | None, synthetic: bool = False) -> Budgets:
    """The user's budgets, each in the unit it was given (``--speedup`` stays a speedup); the floor as
    :func:`allowed_drop` says."""
    c = cfg.constraints
    return Budgets(c.latency_ms, c.memory_mb, allowed_drop(cfg, synthetic), baseline_accuracy, speedup=c.speedup)


def allowed_drop(cfg: RunConfig, synthetic: bool) -> float | None:
    """The accuracy floor's allowed drop, or ``None`` (no floor): on random inputs (``synthetic`` data) the
    floor would judge agreement on noise, so it is off unless ``constraints.floor_on_random_data`` (set by
    giving ``--max-accuracy-drop``) or the objective is accuracy."""
    c = cfg.constraints
    if synthetic and not c.floor_on_random_data and cfg.objective != "accuracy":
        return None
    return c.max_accuracy_drop


def tune_settings(cfg: RunConfig, run_dir: Path) -> TuneSettings:
    """The strategies' knobs; the Optuna study defaults to ``sqlite:///RUN/study.db``, named after the run."""
    t = cfg.tune
    return TuneSettings(
        initial_reduction=t.initial_reduction, decay=t.decay, lut_points=t.lut_points, families=t.families,
        keep_step=t.keep_step, sampler=t.sampler, recover_top=t.recover_top, uniform=t.uniform,
        staircase=cfg.prune.round_to is None or cfg.prune.round_to <= 1,
        storage=t.storage or f"sqlite:///{(Path(run_dir) / 'study.db').resolve()}",
        study=t.study or f"edge-{Path(run_dir).resolve().name}")


def evaluator_settings(cfg: RunConfig, metric: str | None = None) -> EvaluatorSettings:
    """How the search makes and measures candidates: candidate measurement, the short recovery of
    ``recovery.tune_steps`` (none with ``recovery.method: none``; never more than the final model gets,
    ``recovery.steps``: a candidate judged after more recovery than the final model gets looks better than
    it will be), prune and export settings."""
    r, p = cfg.recovery, cfg.prune
    return EvaluatorSettings(prune=prune_settings(cfg), round_to=p.round_to, ignore=p.ignore, max_ratio=p.max_ratio,
                             measure=measure_settings(cfg, candidate=True), rounds=cfg.measure.candidate_rounds,
                             export=export_settings(cfg),
                             distill=distill_settings(cfg, min(r.tune_steps, r.steps) if r.method != "none" else 0,
                                                      metric))


def build_evaluator(cfg: RunConfig, subject: Subject, target: Any, *, workdir: Path, baseline_onnx: Path,
                    baseline_latency_ms: float) -> CandidateEvaluator:
    """The run's candidate evaluator: the tune stage and ``pipeline worker`` both build it here."""
    return CandidateEvaluator(subject, target, evaluator_settings(cfg, subject.data.metric), workdir=Path(workdir),
                              baseline_onnx=Path(baseline_onnx), baseline_latency_ms=baseline_latency_ms)
