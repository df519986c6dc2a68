"""The searches' :class:`~search.base.Evaluator` for real models on a real target.

A candidate is the original model pruned one-shot at a global ratio with the run's criterion
scores, BN statistics re-estimated on calibration data, exported to ONNX and measured on the
target. Its accuracy is taken on the *calibration* split (so the test split stays unseen until
the final verdict), in PyTorch for speed; the final accuracy is always taken through the engine.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from search.base import Candidate
from stages.evaluate import TorchRunner, evaluate
from stages.export import ExportSettings, export_onnx
from stages.load.data import DataBundle
from stages.model.cost import macs_params
from stages.model.graph import GroupInfo
from stages.prune.apply import Pruner, PruneSettings
from stages.prune.plan import make_plan, uniform_ratios
from stages.recover import DistillSettings, distill
from targets.base import MeasureSettings, Target, build_engine


@dataclass(frozen=True)
class EvaluatorSettings:
    """How candidates are made and measured (frozen; ``pipeline.settings.evaluator_settings`` builds it
    from the run's config, for the tune stage and for every ``pipeline worker`` alike).

    Attributes:
        prune: The pruner's settings (criterion for compensation, BN re-estimation).
        round_to: Channel rounding of the plans.
        ignore: Modules never pruned.
        max_ratio: The most any group may lose (allocation clipping).
        measure: Candidate measurement settings (shorter than the final measurement's).
        rounds: Interleaved rounds per candidate measurement.
        export: ONNX export settings.
        distill: The short recovery of a candidate (``steps: 0`` for none).
    """

    prune: PruneSettings
    round_to: int | None
    ignore: tuple[str, ...]
    max_ratio: float
    measure: MeasureSettings
    rounds: int
    export: ExportSettings
    distill: DistillSettings


@dataclass(frozen=True)
class Subject:
    """What the search prunes: the model (depth-pruned where blocks were dropped), its sample shape,
    data, prunable groups, the criterion's scores and optional per-group allocation (SBPF)."""

    model: nn.Module
    sample_shape: tuple[int, ...]
    data: DataBundle
    groups: list[GroupInfo]
    scores: Mapping[str, torch.Tensor]
    allocation: Mapping[str, float] | None = None


class CandidateEvaluator:
    """Evaluates pruning policies (group -> keep ratio) on the target; identical widths are evaluated once.

    :meth:`measure` takes a global ratio (the ``global`` search); :meth:`measure_policy` takes any
    per-group policy (per-layer searches).

    Args:
        subject: What is pruned.
        target: Where candidates are measured.
        settings: How candidates are made and measured.
        workdir: Scratch folder for candidate ONNX files.
        baseline_onnx: The unpruned model's ONNX (every candidate is timed interleaved with it).
        baseline_latency_ms: The baseline stage's median: candidate latencies are this divided by
            the measured speedup, so drift of the machine's speed cancels out of comparisons.
    """

    def __init__(self, subject: Subject, target: Target, settings: EvaluatorSettings, *, workdir: Path,
                 baseline_onnx: Path, baseline_latency_ms: float) -> None:
        self.subject, self.settings = subject, settings
        self.model, self.sample_shape, self.data = subject.model, tuple(subject.sample_shape), subject.data
        self.groups, self.scores = list(subject.groups), subject.scores
        self.round_to, self.ignore = settings.round_to, settings.ignore
        self.pruner = Pruner(self.model, torch.zeros((2, *self.sample_shape)), self.data.calib, settings.prune)
        self.target, self.measure_settings, self.export_settings = target, settings.measure, settings.export
        self.distill_settings = settings.distill
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.baseline_engine = self._build(Path(baseline_onnx), self.model)
        self.baseline_latency_ms, self.rounds = baseline_latency_ms, settings.rounds
        self.evaluations = 0  # full-model measurements actually made
        self._cache: dict[tuple, Candidate] = {}
        self._full_key = tuple(sorted((g.id, g.width) for g in self.groups))
        self._oneshot: dict[tuple, float] = {}
        self.allocation, self.max_ratio = subject.allocation, settings.max_ratio  # SBPF: per-group share of a ratio

    def _build(self, onnx_path: Path, module: nn.Module):
        return build_engine(self.target, onnx_path, self.sample_shape, self.workdir, module=module,
                            calibration=self.data.calib)

    def plan_for(self, keep_ratios: Mapping[str, float], meta: Mapping[str, object]):
        return make_plan(self.groups, self.scores, keep_ratios, self.round_to, self.ignore,
                         meta={**meta, "round_to": self.round_to})

    def global_keep_ratios(self, ratio: float) -> dict[str, float]:
        """Per-group keep ratios for a global prune ratio: uniform, or shared out by the criterion's
        allocation (SBPF: less sensitive groups lose more, channel-weighted mean still ``ratio``)."""
        if not self.allocation:
            return uniform_ratios(self.groups, ratio)
        from stages.score.sbpf import allocated_keep_ratios

        return allocated_keep_ratios(self.allocation, {g.id: g.width for g in self.groups}, ratio, self.max_ratio)

    def measure(self, ratio: float) -> Candidate:
        """A global ratio: every group keeps ``1 - ratio`` of its channels (or its allocated share)."""
        policy = {"kind": "global", "prune_ratio": round(ratio, 4)}
        if self.allocation:
            policy["allocation"] = "criterion"
        return self.measure_policy(self.global_keep_ratios(ratio), policy, ratio)

    def measure_policy(self, keep_ratios: Mapping[str, float], policy: Mapping[str, object],
                       ratio: float | None = None) -> Candidate:
        """Prune with a per-group policy (one shot + BN re-estimation), export, measure on the target.

        Args:
            keep_ratios: group id -> keep ratio (missing groups keep everything).
            policy: How to describe this candidate in the report (JSON-serialisable).
            ratio: The candidate's prune ratio for ordering; default: the fraction of channels removed.
        """
        plan = self.plan_for(keep_ratios, {**policy, "search": policy.get("kind", "per-group")})
        key = tuple(sorted(plan.widths().items()))
        if key in self._cache:
            return self._cache[key]
        total = sum(g.width for g in plan.groups)
        removed = 1.0 - sum(len(g.keep) for g in plan.groups) / total if total else 0.0
        ratio = removed if ratio is None else ratio
        self.evaluations += 1
        pruned = self.pruner.build(plan) if removed > 0 else copy.deepcopy(self.model)
        onnx_path = self.workdir / f"candidate-{len(self._cache):02d}.onnx"
        export_onnx(pruned, self.sample_shape, onnx_path, self.export_settings)
        engine = self._build(onnx_path, pruned)
        timing = self.target.measure([self.baseline_engine, engine], self.measure_settings, rounds=self.rounds)[1]
        # latency relative to the baseline measured in the same process, scaled to the baseline
        # stage's reference: drift of the machine's speed cancels out of the comparison
        latency = self.baseline_latency_ms / timing.ratio_to_first
        macs, params = macs_params(pruned, self.sample_shape)
        acc = evaluate(self.data.metric, TorchRunner(pruned), self.data.calib)
        cand = Candidate(ratio, key, latency, timing.memory_mb, acc, macs, params, speedup=timing.ratio_to_first,
                         policy=dict(policy),
                         payload={"plan": plan, "model": pruned, "raw_latency_ms": timing.latency_ms["median"]})
        self._cache[key] = cand
        onnx_path.unlink(missing_ok=True)
        return cand

    def confirm(self, cand: Candidate) -> Candidate:
        """Re-measure ``cand`` with twice the rounds; keep the slower of the two estimates."""
        path = self.workdir / "confirm.onnx"
        export_onnx(cand.payload["model"], self.sample_shape, path, self.export_settings)
        try:
            engine = self._build(path, cand.payload["model"])
            timing = self.target.measure([self.baseline_engine, engine], self.measure_settings,
                                         rounds=2 * self.rounds)[1]
        finally:
            path.unlink(missing_ok=True)
        speedup = min(float(timing.ratio_to_first), cand.speedup or float("inf"))
        cand.speedup = speedup
        cand.latency_ms = self.baseline_latency_ms / speedup
        cand.memory_mb = max(cand.memory_mb, timing.memory_mb)
        cand.payload["confirmed"] = True
        return cand

    def oneshot_accuracy(self, keep_ratios: Mapping[str, float]) -> float:
        """Calibration accuracy of a policy pruned one-shot (+ BN re-estimation), no measurement."""
        plan = self.plan_for(keep_ratios, {"kind": "proposal"})
        key = tuple(sorted(plan.widths().items()))
        if key in self._cache:
            return float(self._cache[key].accuracy_oneshot)
        if key not in self._oneshot:
            self._oneshot[key] = evaluate(self.data.metric, TorchRunner(self.pruner.build(plan)), self.data.calib)
        return self._oneshot[key]

    def speedups(self, policies: list[Mapping[str, float]]) -> list[float]:
        """Measured speedup of each policy over the unpruned model, all in one interleaved measurement.

        Used to build latency lookup tables: no accuracy, no caching of models.
        """
        engines = []
        paths = []
        for i, keep in enumerate(policies):
            plan = self.plan_for(keep, {"kind": "lut"})
            pruned = self.pruner.build(plan)
            path = self.workdir / f"lut-{i:03d}.onnx"
            export_onnx(pruned, self.sample_shape, path, self.export_settings)
            engines.append(self._build(path, pruned))
            paths.append(path)
        try:
            records = self.target.measure([self.baseline_engine, *engines], self.measure_settings, rounds=self.rounds)
        finally:
            for p in paths:
                p.unlink(missing_ok=True)
        return [float(r["ratio_to_first"]) for r in records[1:]]

    def recover(self, cand: Candidate) -> float:
        student = copy.deepcopy(cand.payload["model"])
        if cand.key != self._full_key and self.distill_settings.steps > 0:
            distill(student, self.model, self.data.train, self.distill_settings, self.data.labeled)
        return evaluate(self.data.metric, TorchRunner(student), self.data.calib)
