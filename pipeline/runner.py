"""The staged run: each stage is a function from artifacts to artifacts, recorded in the manifest.

::

    load -> baseline -> score -> tune -> prune -> recover -> export -> build -> measure -> report

Each :class:`Stage` names the files it reads and writes (relative to the run folder) and the
config sections it depends on. The runner records every stage (sha256 of inputs and outputs,
config digest, metrics, seconds) in ``manifest.json``; with ``--resume`` a stage whose inputs,
outputs and config still hash the same is restored from its files instead of rerun.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

from core.errors import PipelineError, StageError
from core.io import atomic_torch_save, atomic_write_json, digest, sha256_file
from pipeline.config import RunConfig
from pipeline.manifest import Manifest, StageRecord
from pipeline.versions import versions
from stages.load.models import PRUNED_FORMAT as PLAN_FORMAT

log = logging.getLogger("pipeline")


@dataclass
class RunState:
    """In-memory artifacts passed between stages (restored from files on resume)."""

    cfg: RunConfig
    run_dir: Path
    ui: Any  # pipeline.console.Console
    target: Any = None
    loaded: Any = None  # stages.load.models.LoadedModel
    data: Any = None  # stages.load.data.DataBundle
    baseline: dict | None = None
    scores: dict | None = None
    score_result: Any = None  # stages.score.ScoreResult (allocation / block scores beyond the channel scores)
    plan: Any = None  # PruningPlan
    drop_blocks: tuple[str, ...] = ()  # blocks depth pruning dropped (score stage); the plan carries them after tune
    pruned: nn.Module | None = None
    tune: dict | None = None
    final: dict | None = None
    report: dict | None = None
    records: list[StageRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[RunState], dict]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    config_keys: tuple[str, ...] = ()
    restore: Callable[[RunState], None] | None = None  # None: always rerun (no artifact)


def default_run_dir(model_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in model_name)
    return Path("runs") / f"{stamp}-{safe}"


def _config_digest(cfg: RunConfig, keys: tuple[str, ...]) -> str:
    """Digest of the config sections a stage depends on. ``trust_checkpoint`` is permission, not a setting:
    it changes no artifact, so it enters as False (the value every digest had before it stopped being
    inherited by ``--resume``): a resume that forgets the flag reruns nothing that could load anyway."""
    d = {**cfg.model_dump(mode="json"), "trust_checkpoint": False}
    return digest({k: d.get(k) for k in keys})


def execute(stages: list[Stage], state: RunState, resume: bool) -> list[StageRecord]:
    """Run ``stages`` in order, recording each; stop at the first failure (re-raised)."""
    old = Manifest.load(state.run_dir) if resume else None
    manifest = Manifest(state.run_dir, {
        "config": state.cfg.model_dump(mode="json"), "versions": versions(),
        "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })
    if old is not None:  # until a stage is redone, the earlier records stand (a crash now loses nothing)
        manifest.stages = dict(old.stages)
    manifest.save()  # before the first stage: a kill -9 during load still leaves a run to resume
    for st in stages:
        cdig = _config_digest(state.cfg, st.config_keys)
        # a rerun upstream stage that writes different files changes this stage's input hashes,
        # so freshness propagates through the files themselves
        if (old is not None and st.restore is not None
                and old.is_fresh(st.name, cdig, list(st.inputs), list(st.outputs))):
            t0 = time.perf_counter()
            st.restore(state)
            rec = old.stages[st.name]
            rec.metrics = {**rec.metrics, "resumed": True}
            manifest.record(rec)
            state.records.append(rec)
            state.ui.stage_done(st.name, rec.status, time.perf_counter() - t0, "resumed from run folder")
            continue
        state.ui.stage_start(st.name)
        t0 = time.perf_counter()
        ins = manifest.hashes(list(st.inputs))
        manifest.record(StageRecord(st.name, "running", 0.0, cdig, ins, {}, {}, None, versions()))
        try:
            rec = _run_stage(st, state, cdig, ins, t0)
        except BaseException as e:  # the record must never stay "running" (Ctrl-C, SIGTERM, a failed check)
            _record_failure(st.name, e, time.perf_counter() - t0, cdig, ins, manifest, state)
            if isinstance(e, SystemExit):  # user code must not decide the exit code (0 would read as "met")
                raise StageError(f"stage {st.name}: user code called sys.exit({e.code!r})",
                                 hint="a python: factory or data function must return its result, not exit") from None
            raise
        manifest.record(rec)
        state.records.append(rec)
        state.ui.stage_done(st.name, rec.status, rec.seconds, rec.metrics.get("_summary", ""))
    return state.records


def _run_stage(st: Stage, state: RunState, cdig: str, ins: dict, t0: float) -> StageRecord:
    """Run one stage and make its record: status, output hashes, metrics (a missing output is a bug)."""
    metrics = st.fn(state) or {}
    secs = time.perf_counter() - t0
    status = metrics.pop("_status", "ok")
    outs = {p: sha256_file(state.run_dir / p) for p in st.outputs if (state.run_dir / p).is_file()}
    missing = [p for p in st.outputs if p not in outs]
    if missing and status == "ok":
        raise StageError(f"stage {st.name} did not write {', '.join(missing)}", hint="this is a bug; see logs/")
    return StageRecord(st.name, status, secs, cdig, ins, outs, metrics, None, versions())


def _record_failure(name: str, e: BaseException, secs: float, cdig: str, ins: dict, manifest: Manifest,
                    state: RunState) -> None:
    """The stage's record when it did not finish: ``interrupted`` (Ctrl-C, SIGTERM) or ``failed``."""
    interrupted = isinstance(e, KeyboardInterrupt)
    if isinstance(e, PipelineError):
        msg = e.message
    elif isinstance(e, SystemExit):
        msg = f"user code called sys.exit({e.code!r})"
    else:
        msg = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    status = "interrupted" if interrupted else "failed"
    log.error("stage %s %s: %s\n%s", name, status, msg, traceback.format_exc())
    rec = StageRecord(name, status, secs, cdig, ins, {}, {}, msg, versions())
    manifest.record(rec)
    state.records.append(rec)
    state.ui.stage_done(name, status, secs, msg)


# ------------------------------------------------------------------ artifact helpers

def save_pruned(path: Path, model: nn.Module, plan, spec: str, extra: dict | None = None) -> None:
    """``pruned.pt``: a state_dict plus the replayable plan, never a pickled module."""
    atomic_torch_save(path, {"format": PLAN_FORMAT, "model_spec": spec, "plan": plan.to_json(),
                             "state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()},
                             **(extra or {})})


def load_pruned(path: Path, base: nn.Module, example: torch.Tensor) -> tuple[nn.Module, Any]:
    """Rebuild a pruned model: replay the plan on ``base`` (not modified), load the weights."""
    from stages.model.bias import ensure_bias_params
    from stages.prune.plan import PruningPlan, apply_plan

    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != PLAN_FORMAT:
        raise StageError(f"{path} is not a pruned checkpoint of this tool", hint="rerun without --resume")
    plan = PruningPlan.from_json(blob["plan"])
    model = apply_plan(base, example, plan)
    ensure_bias_params(model, blob["state_dict"])  # STADE's compensation may have created biases
    model.load_state_dict(blob["state_dict"])
    return model.eval(), plan


def write_json(state: RunState, name: str, obj: Any) -> None:
    atomic_write_json(state.run_dir / name, obj)


def read_json(state: RunState, name: str) -> Any:
    return json.loads((state.run_dir / name).read_text())

