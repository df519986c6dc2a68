"""``pipeline worker``: join a ``--search optuna`` study and evaluate its trials on this machine.

The run stores in the study what a worker needs (:func:`make_run_spec`: the resolved config, the
criterion's scores, the blocks depth pruning dropped, fingerprints of model, groups and data);
:func:`evaluator_from_study` rebuilds the run's evaluator from it, through the same
:func:`pipeline.settings.build_evaluator` as the tune stage, and refuses a machine whose model,
groups or data differ. The ask / evaluate / tell loop is :func:`search.optuna.run_worker`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

from core.errors import ConfigError
from search.optuna import FORMAT, RUN_KEY, SEARCH_KEY, SearchSpec
from search.optuna import run_worker as _run_worker


def model_fingerprint(model) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): the worker's model must be the run's."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update((a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy().tobytes())
    return h.hexdigest()


def _scores_digest(scores: Mapping[str, Sequence[float]]) -> str:
    return hashlib.sha256(json.dumps({k: list(map(float, v)) for k, v in sorted(scores.items())}).encode()).hexdigest()


def make_run_spec(cfg, *, model, groups, scores, baseline_latency_ms: float, drop_blocks: Sequence[str] = ()) -> dict:
    """What ``pipeline worker`` needs to rebuild the run's evaluator on its own machine.

    The criterion's scores travel with the study (so every worker keeps the same channels for
    the same ratios, whatever its floating point), and fingerprints of the model and of the
    group structure let a worker refuse to measure a different model.

    Args:
        cfg: The resolved :class:`pipeline.config.RunConfig` of the run.
        model: The unpruned model (for the fingerprint).
        groups: The prunable groups (``GroupInfo``).
        scores: Group id -> per-channel scores (tensors or lists).
        baseline_latency_ms: The run's baseline median: candidates' latencies are reported as
            this times the measured per-process ratio to the unpruned model, on every worker.
        drop_blocks: Residual blocks depth pruning dropped before the channel search: a worker
            drops them too, so its groups are the run's.
    """
    sc = {k: [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)] for k, v in scores.items()}
    return {"format": FORMAT, "config": cfg.model_dump(mode="json"), "baseline_latency_ms": float(baseline_latency_ms),
            "groups": [[g.id, g.width] for g in groups], "scores": sc, "scores_sha256": _scores_digest(sc),
            "model_sha256": model_fingerprint(model), "drop_blocks": list(drop_blocks)}


def study_config(run: Mapping, *, trust: bool = False, device: str | None = None):
    """The run's config as a worker may use it: trust comes from the worker's own command line.

    The study (a shared database) must not choose code for this machine to run: a ``python:`` model,
    architecture or data spec, or pickled checkpoints (``trust_checkpoint``), needs the worker's
    ``--trust-study``.
    """
    from pipeline.config import RunConfig

    cfg = RunConfig.model_validate(run["config"])
    code = [f"{k} {v}" for k, v in (("model", cfg.model), ("arch", cfg.arch), ("data", cfg.data))
            if v and str(v).startswith("python:")]
    if (code or cfg.trust_checkpoint) and not trust:
        what = ", ".join(code) if code else "pickled checkpoints (trust_checkpoint)"
        raise ConfigError(f"the study asks this worker to run code it names: {what}",
                          hint="start the worker with --trust-study if you trust whoever can write to this storage")
    return cfg.model_copy(update={"trust_checkpoint": bool(trust and cfg.trust_checkpoint),
                                  **({"device": device} if device else {})})


def evaluator_from_study(attrs: Mapping, workdir: Path, *, device: str | None = None, log=lambda s: None,
                         trust: bool = False):
    """Rebuild the run's evaluator on this machine from a study's user attributes.

    Loads the model and data named by the run's config, checks they are the run's (weights
    fingerprint, group structure, unpruned calibration accuracy), drops the blocks the run's depth
    pruning dropped, exports the unpruned model and builds the evaluator on this machine's target
    (``device`` overrides the config's ``--device``, for a worker that drives its own Jetson over
    SSH). Code the study names runs only with ``trust`` (:func:`study_config`).
    """
    import copy

    import torch

    from pipeline.settings import build_evaluator, export_settings, model_request, target_options
    from search.evaluator import Subject
    from stages.evaluate import TorchRunner, evaluate
    from stages.export import export_onnx
    from stages.load.inputs import load_inputs
    from stages.model.blocks import drop_blocks
    from stages.model.graph import PruneGraph
    from targets import get_target

    run = attrs.get(RUN_KEY)
    if not isinstance(run, Mapping) or run.get("format") != FORMAT:
        raise ConfigError("the study carries no run description (edge_pipeline.run) for workers",
                          hint="start the search with `pipeline run --search optuna --storage URL`; it writes one")
    spec = SearchSpec.from_json(attrs.get(SEARCH_KEY))
    cfg = study_config(run, trust=trust, device=device)
    options = target_options(cfg)
    target = get_target(cfg.target, options)
    lm, data = load_inputs(model_request(cfg), cfg.data, cfg.seed, cfg.metric)
    if model_fingerprint(lm.module) != run["model_sha256"]:
        raise ConfigError(f"this machine's '{cfg.model}' is not the run's model (weights fingerprint differs)",
                          hint="give workers the same checkpoint (file: spec) and the same torch version")
    blocks = tuple(run.get("drop_blocks") or ())
    model = drop_blocks(lm.module, blocks) if blocks else lm.module
    groups = PruneGraph(copy.deepcopy(model), torch.zeros((2, *lm.input_shape)), cfg.prune.ignore).groups()
    if sorted([g.id, g.width] for g in groups) != sorted(list(x) for x in run["groups"]):
        raise ConfigError("this machine finds other prunable groups than the run",
                          hint="use the same torch / torch-pruning versions and prune.ignore as the run")
    if _scores_digest(run["scores"]) != run["scores_sha256"]:
        raise ConfigError("the study's scores are damaged (digest mismatch)", hint="restart the search")
    base_acc = spec.budgets.baseline_accuracy
    if base_acc is not None:
        acc = evaluate(data.metric, TorchRunner(lm.module), data.calib)
        if abs(acc - base_acc) > 1e-6:
            raise ConfigError(f"this machine's calibration data differ from the run's (unpruned accuracy {acc:.4f} "
                              f"vs {base_acc:.4f})", hint="give workers the same data (path and files)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    export_onnx(lm.module, lm.input_shape, workdir / "baseline.onnx", export_settings(cfg))
    scores = {k: torch.tensor(v, dtype=torch.float32) for k, v in run["scores"].items()}
    log(f"worker ready: {cfg.model} on {target.describe()}, {len(groups)} groups"
        + (f", blocks {', '.join(blocks)} dropped" if blocks else ""))
    return build_evaluator(cfg, Subject(model, tuple(lm.input_shape), data, groups, scores), target,
                           workdir=workdir / "candidates", baseline_onnx=workdir / "baseline.onnx",
                           baseline_latency_ms=float(run["baseline_latency_ms"]))


def run_worker(study: str, storage: str, n_trials: int | None = None, timeout: float | None = None, *,
               device: str | None = None, log=lambda s: None, evaluator_factory=None,
               heartbeat_s: int | None = None, trust: bool = False) -> tuple[int, str]:
    """:func:`search.optuna.run_worker` with the run's own evaluator (:func:`evaluator_from_study`, code the
    study names only with ``trust``) unless ``evaluator_factory`` is given (tests pass a fake one)."""
    def own(attrs, workdir, *, device=None, log=lambda s: None):
        return evaluator_from_study(attrs, workdir, device=device, log=log, trust=trust)

    return _run_worker(study, storage, n_trials, timeout, evaluator_factory=evaluator_factory or own,
                       device=device, log=log, heartbeat_s=heartbeat_s)


