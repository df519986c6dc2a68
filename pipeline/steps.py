"""The concrete stages of ``pipeline run``: thin glue between the run folder and ``stages/``."""

from __future__ import annotations

import copy
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from core.errors import ConfigError, StageError
from core.io import atomic_torch_save, sha256_file
from core.records import Measurement
from pipeline import settings
from pipeline.final_measure import measure_until_decided
from pipeline.preflight import check_baseline, check_loaded
from pipeline.report import build_report, write_report
from pipeline.report_generative import measure_generative
from pipeline.runner import RunState, Stage, load_pruned, read_json, save_pruned, write_json
from pipeline.settings import distill_settings, export_settings, measure_settings
from search import SEARCHES, SearchContext
from search.evaluator import Subject
from stages.evaluate import EVALUATORS, TorchRunner, evaluate, evaluate_with_classes, format_score
from stages.export import check_parity, export_onnx
from stages.load.inputs import load_inputs as _load_inputs
from stages.model.blocks import drop_blocks
from stages.model.cost import macs_params
from stages.model.graph import PruneGraph
from stages.model.masks import reapply_masks
from stages.prune.apply import Pruner
from stages.prune.plan import PruningPlan
from stages.recover import RECOVERIES, RecoveryJob
from stages.score import CRITERIA, ScoreContext, ScoreResult
from targets.base import build_engine
from targets.ort.runner import OrtRunner


def _example(state: RunState, batch: int = 2) -> torch.Tensor:
    return torch.zeros((batch, *state.loaded.input_shape))


def _parity_inputs(state: RunState) -> torch.Tensor:
    n = min(state.cfg.export.parity_samples, len(state.data.calib))
    return torch.stack([state.data.calib[i][0] for i in range(n)])


# ------------------------------------------------------------------ load

def load_inputs(cfg) -> tuple:
    """The model and data of ``cfg`` (:func:`stages.load.inputs.load_inputs`), within ``load_timeout_s``;
    the data's metric must be a registered evaluator (``stages.evaluate.EVALUATORS``)."""
    req = settings.model_request(cfg)
    lm, data = within(cfg.load_timeout_s, "loading the model and data",
                      lambda: _load_inputs(req, cfg.data, cfg.seed, cfg.metric),
                      hint="a python: factory or data function may hang: check it, or raise load_timeout_s")
    EVALUATORS.get(data.metric)
    return lm, data


def within(seconds: float, what: str, fn, hint: str):
    """``fn()`` in a daemon thread, given ``seconds`` to finish (user code can hang: a stuck factory must not
    hold a CI job forever). Its exception, ``SystemExit`` included, is raised here."""
    import threading

    box: dict = {}

    def work() -> None:
        try:
            box["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - a thread swallows SystemExit; carry everything over
            box["error"] = e

    t = threading.Thread(target=work, name="edge-load", daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        raise StageError(f"{what} did not finish in {seconds:g} s", hint=hint)
    if "error" in box:
        raise box["error"]
    return box["value"]


def s_load(state: RunState) -> dict:
    lm, data = load_inputs(state.cfg)
    check_loaded(state.cfg, lm, data)  # before the baseline: ignore names, policy fit, labels
    state.loaded, state.data = lm, data
    macs, params = macs_params(lm.module, lm.input_shape)
    notes = list(lm.notes)
    if data.synthetic and state.cfg.constraints.max_accuracy_drop is not None and \
            settings.allowed_drop(state.cfg, True) is None:
        notes.append("random inputs: the accuracy floor is off (a latency-only run); pass --max-accuracy-drop to "
                     "judge agreement with the unpruned model anyway")
        state.ui.note(notes[-1])
    return {"model": lm.spec, "params": params, "macs": macs, "input_shape": list(lm.input_shape),
            "data": data.name, "splits": [len(data.train), len(data.calib), len(data.test)],
            "metric": data.metric, "notes": notes,
            "_summary": f"{lm.name}: {params / 1e6:.2f} M params, {macs / 1e6:.1f} MMACs; data {data.name}"}


# ------------------------------------------------------------------ baseline

def s_baseline(state: RunState) -> dict:
    lm, data = state.loaded, state.data
    path = state.run_dir / "baseline.onnx"
    exp = export_onnx(lm.module, lm.input_shape, path, export_settings(state.cfg))
    with OrtRunner(path) as r:
        parity = check_parity(lm.module, r, _parity_inputs(state), state.cfg.export.atol, state.cfg.export.rtol)
    engine = _build_engine(state, "baseline.onnx", lm.module)
    timing = state.target.measure([engine], measure_settings(state.cfg), rounds=state.cfg.measure.final_rounds)[0]
    with state.target.runner(engine) as r:
        test_acc = evaluate(data.metric, r, data.test)
    check_baseline(test_acc, data, settings.allowed_drop(state.cfg, data.synthetic))
    calib_acc = evaluate(data.metric, TorchRunner(lm.module), data.calib)
    macs, params = macs_params(lm.module, lm.input_shape)
    rec = Measurement.from_timing(timing, onnx_bytes=exp["onnx_bytes"], params=params, macs=macs,
                                  accuracy=test_acc, metric=data.metric).to_json()
    state.baseline = {"record": rec, "calib_accuracy": calib_acc, "parity": parity, "export": exp}
    write_json(state, "baseline.json", state.baseline)
    return {"latency_ms": rec["latency_ms"]["median"], "accuracy": test_acc, "calib_accuracy": calib_acc,
            "_summary": f"{rec['latency_ms']['median']:.3f} ms, {data.metric} "
                        f"{format_score(data.metric, test_acc, data.test)} (test, through the engine)"}


def r_baseline(state: RunState) -> None:
    state.baseline = read_json(state, "baseline.json")


# ------------------------------------------------------------------ score

def s_score(state: RunState) -> dict:
    if state.cfg.policy:
        return {"_status": "skipped", "_summary": "policy replayed; no scoring"}
    crit = CRITERIA.get(state.cfg.criterion)
    depth = _depth_prune(state, crit) if state.cfg.prune.depth_blocks else None
    model = copy.deepcopy(_base(state)).eval()
    graph = _graph(state, model)
    ctx = ScoreContext(model=model, graph=graph, calib=state.data.calib, seed=state.cfg.seed,
                       loss=settings.score_loss(state.cfg, state.data.metric),
                       options={**state.cfg.criterion_options,  # blocks are scored already: channels only
                                **({"blocks": False} if depth and "blocks" in crit.params else {})})
    result = crit.result(ctx)
    if depth:
        result.blocks = depth["block_scores"]  # of the loaded model: the ones that chose what to drop
    options = result.options
    scores = result.scores
    state.scores = {k: v.detach().float() for k, v in scores.items()}
    state.score_result = result
    atomic_torch_save(state.run_dir / "scores.pt", {"criterion": crit.name, "scores": state.scores,
                                                    "allocation": result.allocation, "blocks": result.blocks,
                                                    "options": options, "passes": result.passes, "depth": depth,
                                                    "proposal": result.proposal})
    return {"criterion": crit.name, "groups": len(scores), "options": options, "passes": result.passes,
            **({"depth": depth} if depth else {}),
            "_summary": f"{crit.name}: {len(scores)} groups, {sum(len(v) for v in scores.values())} channels"
                        + (f"; dropped blocks {', '.join(depth['dropped'])}" if depth else "")}


def r_score(state: RunState) -> None:
    if not state.cfg.policy:
        saved = torch.load(state.run_dir / "scores.pt", weights_only=True)
        state.scores = saved["scores"]
        state.score_result = ScoreResult(saved["scores"], saved.get("allocation"), saved.get("blocks"),
                                         saved.get("passes", {}), proposal=saved.get("proposal"))
        state.drop_blocks = tuple((saved.get("depth") or {}).get("dropped", ()))


def _graph(state: RunState, model) -> PruneGraph:
    try:
        return PruneGraph(model, _example(state), state.cfg.prune.ignore)
    except KeyError as e:
        raise ConfigError(f"prune.ignore names unknown modules: {e.args[0]}",
                          hint="use module names from model.named_modules()") from None


def _base(state: RunState):
    """The model the channel search and the pruner start from: the loaded model with the blocks
    depth pruning dropped (the plan's once there is one) replaced by identity; never modified."""
    blocks = tuple(state.plan.drop_blocks) if state.plan is not None else state.drop_blocks
    return drop_blocks(state.loaded.module, blocks) if blocks else state.loaded.module


def _depth_prune(state: RunState, crit) -> dict:
    """``prune.depth_blocks``: drop the loaded model's lowest-scoring residual blocks (LD-Pruner's block
    score); sets ``state.drop_blocks``. With ``--criterion ld-pruner`` its options (``latent``,
    ``samples``) apply, so these are the block scores that criterion gives, without its channel pass."""
    from stages.prune.depth import choose_blocks

    opts = crit.resolve_options(state.cfg.criterion_options) if crit.name == "ld-pruner" else {}
    kw = {k: opts[k] for k in ("latent", "samples") if k in opts}
    depth = choose_blocks(state.loaded.module, _example(state), state.data.calib, state.cfg.prune.depth_blocks, **kw)
    state.drop_blocks = tuple(depth["dropped"])
    return depth


# ------------------------------------------------------------------ tune

def _search_bar(state: RunState, what: str):
    """The console's search progress bar (``tick(done, total, best)``), or a no-op where the UI has none."""
    bar = getattr(state.ui, "search_progress", None)
    return bar(what) if bar is not None else nullcontext(None)


def s_tune(state: RunState) -> dict:
    cfg = state.cfg
    if cfg.policy:
        return _replay_policy(state, Path(cfg.policy))
    strategy = SEARCHES.get(cfg.search)
    base_ms = state.baseline["record"]["latency_ms"]["median"]
    budgets = settings.budgets(cfg, state.baseline["calib_accuracy"], state.data.synthetic)
    strategy.check(cfg.objective, budgets.has_latency, criterion=CRITERIA.get(cfg.criterion).name)
    model = _base(state)  # depth-pruned when prune.depth_blocks > 0
    groups = _graph(state, copy.deepcopy(model)).groups()
    allocation = getattr(state.score_result, "allocation", None) if strategy.uses_allocation else None
    ev = settings.build_evaluator(cfg, Subject(model, tuple(state.loaded.input_shape), state.data, groups,
                                               state.scores, allocation), state.target,
                                  workdir=state.run_dir / "candidates", baseline_onnx=state.run_dir / "baseline.onnx",
                                  baseline_latency_ms=base_ms)
    ctx = SearchContext(ev, groups, cfg.objective, budgets, settings.search_limits(cfg),
                        settings.tune_settings(cfg, state.run_dir), cfg.prune.round_to, base_ms, seed=cfg.seed,
                        lut_key=_lut_key(state), example=_example(state, 1), run_spec=lambda: _run_spec(state, groups),
                        log=state.ui.note, progress=lambda what: _search_bar(state, what),
                        proposal=getattr(state.score_result, "proposal", None))
    outcome = strategy.run(ctx)
    res = outcome.result
    shutil.rmtree(state.run_dir / "candidates", ignore_errors=True)
    if res.chosen is None:
        raise StageError("the search evaluated no candidate", hint="raise tune.max_candidates or tune.time_limit_s")
    plan = res.chosen.payload["plan"]
    plan = PruningPlan(plan.groups, plan.ignore, {**plan.meta, "criterion": cfg.criterion, "objective": cfg.objective},
                       state.drop_blocks)
    state.plan = plan
    state.tune = {"search": strategy.name, "budgets": budgets.to_json(), "stop_reason": res.stop_reason,
                  "log": res.log, "candidates": [c.to_json() for c in res.candidates], "evaluations": ev.evaluations,
                  **outcome.extra}
    write_json(state, "policy.json", plan.to_json())
    write_json(state, "candidates.json", state.tune)
    ch, limit = res.chosen, budgets.latency_limit_ms(base_ms)
    return {"candidates": len(res.candidates), "chosen_ratio": ch.ratio, "stop_reason": res.stop_reason,
            "_summary": f"{len(res.candidates)} candidates; ratio {ch.ratio:.3f} -> {ch.latency_ms:.3f} ms "
                        f"(budget {limit:.3f} ms)" if limit else
                        f"{len(res.candidates)} candidates; ratio {ch.ratio:.3f}"}


def _lut_key(state: RunState) -> dict:
    """What a cached latency LUT depends on: the target, the input, the unpruned ONNX and the batch."""
    ms = measure_settings(state.cfg, candidate=True)
    return {"target_desc": state.target.describe(ms.threads), "sample_shape": state.loaded.input_shape,
            "model_hash": sha256_file(state.run_dir / "baseline.onnx"), "batch": ms.batch}


def _run_spec(state: RunState, groups) -> dict:
    """What ``pipeline worker`` processes need to rebuild this run's evaluator (``search: optuna``)."""
    from pipeline.worker import make_run_spec

    return make_run_spec(state.cfg, model=state.loaded.module, groups=groups, scores=state.scores,
                         baseline_latency_ms=state.baseline["record"]["latency_ms"]["median"],
                         drop_blocks=state.drop_blocks)


def _replay_policy(state: RunState, path: Path) -> dict:
    plan = PruningPlan.from_file(path)  # its fit to the model was checked by the load stage (check_loaded)
    state.plan = plan
    state.tune = {"budgets": None, "stop_reason": f"replayed {path}", "log": [], "candidates": []}
    write_json(state, "policy.json", plan.to_json())
    write_json(state, "candidates.json", state.tune)
    return {"replayed": str(path), "_summary": f"replayed {path.name}"}


def r_tune(state: RunState) -> None:
    state.plan = PruningPlan.from_json(read_json(state, "policy.json"))
    state.tune = read_json(state, "candidates.json")


# ------------------------------------------------------------------ prune

def _pruner(state: RunState) -> Pruner:
    criterion = state.plan.meta.get("criterion", state.cfg.criterion) if state.cfg.policy and state.plan \
        else state.cfg.criterion
    return Pruner(_base(state), _example(state), state.data.calib, settings.prune_settings(state.cfg, str(criterion)))


def s_prune(state: RunState) -> dict:
    lm = state.loaded
    pruned = _pruner(state).build(state.plan)
    sparsity = _sparsify(state, pruned) if state.cfg.prune.sparsity else None
    if sparsity is not None:
        pruned = sparsity.pop("_model")
    else:
        (state.run_dir / "masks.pt").unlink(missing_ok=True)
    state.pruned = pruned
    save_pruned(state.run_dir / "pruned_raw.pt", pruned, state.plan, lm.spec)
    macs, params = macs_params(pruned, lm.input_shape)
    acc = evaluate(state.data.metric, TorchRunner(pruned), state.data.calib)
    extra = f"; {100 * sparsity['sparsity']:.1f}% weight sparsity ({sparsity['pattern']})" if sparsity else ""
    return {"macs": macs, "params": params, "bn_recalibrated": state.cfg.prune.recalibrate_bn,
            "calib_accuracy_oneshot": acc, "sparsity": sparsity,
            "_summary": f"{params / 1e6:.2f} M params, {macs / 1e6:.1f} MMACs; one-shot calib {state.data.metric} "
                        f"{format_score(state.data.metric, acc, state.data.calib)}{extra}"}


def _sparsify(state: RunState, pruned) -> dict:
    """Weight masks on top of the channel plan (``prune.sparsity``); masks saved to masks.pt so
    recovery can hold the zeros."""
    from stages.model.calib import calib_inputs
    from stages.model.masks import output_layer
    from stages.prune.sparsify import sparsify

    p = state.cfg.prune
    inputs = list(calib_inputs(state.data.calib, 4))
    head = output_layer(pruned, inputs[0][:1])
    ignore = (*p.ignore, *((head,) if head else ()))
    masked, masks, rep = sparsify(pruned, inputs, p.sparsity_criterion, p.sparsity, ignore=ignore)
    atomic_torch_save(state.run_dir / "masks.pt", {"pattern": str(masks.spec), "criterion": p.sparsity_criterion,
                                                   "pruned": masks.pruned})
    return {"_model": masked, "pattern": rep["pattern"], "criterion": p.sparsity_criterion,
            "sparsity": rep["sparsity"], "model_sparsity": rep["model_sparsity"], "dense_layers": sorted(ignore),
            "skipped": masks.skipped, "note": rep["speedup_note"]}


def r_prune(state: RunState) -> None:
    state.pruned, state.plan = load_pruned(state.run_dir / "pruned_raw.pt", state.loaded.module, _example(state))


# ------------------------------------------------------------------ recover

def s_recover(state: RunState) -> dict:
    from stages.recover.soft import SoftSettings

    r = state.cfg.recovery
    method = RECOVERIES.get(r.method or "distill")
    out = state.run_dir / "pruned.pt"
    if not method.trains or r.steps == 0 or (all(len(g.keep) == g.width for g in state.plan.groups)
                                             and not state.plan.drop_blocks):
        save_pruned(out, state.pruned, state.plan, state.loaded.spec)
        return {"_status": "skipped", "_summary": "no recovery configured" if r.steps == 0 or not method.trains
                else "nothing pruned"}
    masks = _saved_masks(state)
    data, metric = state.data, state.data.metric
    job = RecoveryJob(teacher=state.loaded.module, pruned=state.pruned, plan=state.plan, example_input=_example(state),
                      train=data.train, calib=data.calib, settings=distill_settings(state.cfg, r.steps, metric),
                      labeled=data.labeled, phase_steps=r.soft_steps, options=r.options,
                      scores=state.scores or None,
                      probe=lambda m: evaluate(metric, TorchRunner(m), data.calib),
                      soft=SoftSettings(r.soft_steps, r.soft_beta, r.soft_eta, r.soft_rescore)
                      if r.soft_steps and method.name == "distill" else None,
                      hold=(lambda m: reapply_masks(m, masks)) if masks else None)
    with state.ui.progress(_recovery_label(method.name, r.soft_steps), r.steps) as tick:
        job.on_step = tick
        done = method(job)
    state.pruned, state.plan = done.model, done.plan
    save_pruned(out, done.model, done.plan, state.loaded.spec)
    acc = evaluate(metric, TorchRunner(done.model), data.calib)
    rec = {**done.record, "method": method.name}
    phase = rec.get("phase") or {}
    swaps = phase.get("swapped", phase.get("swapped_channels"))
    extra = f", {swaps} swapped" if swaps else ""
    return {**rec, "calib_accuracy": acc,
            "_summary": f"{r.steps} steps {_recovery_label(method.name, r.soft_steps)}{extra}; calib {metric} "
                        f"{format_score(metric, acc, data.calib)}"}


def _recovery_label(method: str, soft_steps: int) -> str:
    if method == "distill":
        return f"KD ({soft_steps} with soft masks)" if soft_steps else "KD"
    return method.upper() if method == "dpm" else method


def _saved_masks(state: RunState) -> dict | None:
    path = state.run_dir / "masks.pt"
    return torch.load(path, weights_only=True)["pruned"] if path.is_file() else None


def r_recover(state: RunState) -> None:
    state.pruned, state.plan = load_pruned(state.run_dir / "pruned.pt", state.loaded.module, _example(state))


# ------------------------------------------------------------------ export / build / measure

def s_export(state: RunState) -> dict:
    path = state.run_dir / "model.onnx"
    exp = export_onnx(state.pruned, state.loaded.input_shape, path, export_settings(state.cfg))
    with OrtRunner(path) as r:
        parity = check_parity(state.pruned, r, _parity_inputs(state), state.cfg.export.atol, state.cfg.export.rtol)
    write_json(state, "parity.json", {"export": exp, "parity": parity})
    worst = max((v["max_abs"] for v in parity.values()), default=0.0)
    return {**exp, "parity": parity, "_summary": f"opset {exp['opset']}, {exp['nodes']} nodes, "
                                                 f"{exp['onnx_bytes'] / 1e6:.2f} MB; parity max_abs {worst:.2e}"}


def _build_engine(state: RunState, onnx_name: str, module):
    """Build ``onnx_name`` on the target, handing over what it asks for beyond the ONNX (its ``build_inputs``):
    the torch module the ONNX was exported from (``cuda``, runtime torch), calibration samples (INT8)."""
    return build_engine(state.target, state.run_dir / onnx_name, state.loaded.input_shape, state.run_dir,
                        module=module, calibration=state.data.calib)


def s_build(state: RunState) -> dict:
    eng = _build_engine(state, "model.onnx", state.pruned)
    write_json(state, "engine.json", {"target": eng.target, "path": eng.path, "engine_bytes": eng.engine_bytes,
                                      "build_s": eng.build_s, "meta": dict(eng.meta)})
    return {"build_s": eng.build_s, "_summary": f"{eng.meta.get('runtime', eng.target)} session in {eng.build_s:.2f}s"}


def s_measure(state: RunState) -> dict:
    lm, data, cfg = state.loaded, state.data, state.cfg
    base_engine = _build_engine(state, "baseline.onnx", lm.module)
    final_engine = _build_engine(state, "model.onnx", state.pruned)
    pool = measure_until_decided(
        lambda rounds: state.target.measure([base_engine, final_engine], measure_settings(cfg), rounds=rounds),
        settings.budgets(cfg, None), settings.final_settings(cfg), log=state.ui.note)
    accs, classes = [], []
    for eng in (base_engine, final_engine):
        with state.target.runner(eng) as r:
            acc, gap = evaluate_with_classes(data.metric, r, data.test, data.labeled,
                                             groups=getattr(data, "test_groups", None))
            accs.append(acc)
            if gap is not None:
                classes.append(gap)
    records = []
    for i, (name, module) in enumerate((("baseline.onnx", lm.module), ("model.onnx", state.pruned))):
        macs, params = macs_params(module, lm.input_shape)
        rec = Measurement.from_timing(pool.records[i], onnx_bytes=(state.run_dir / name).stat().st_size,
                                      params=params, macs=macs, accuracy=accs[i], metric=data.metric).to_json()
        rec["memory_mb"] = pool.memory_mb(i)
        rec["details"].update(round_medians_ms=pool.final_ms if i else pool.base_ms, rounds=len(pool.ratios),
                              ratio_to_first=pool.speedup if i else 1.0)
        records.append(rec)
    ivs = pool.intervals(cfg.measure.verdict_level)
    state.final = {"baseline": records[0], "final": records[1], "speedup": pool.speedup,
                   "intervals": {k: iv.to_json() for k, iv in ivs.items()}, "ratio_cv": pool.ratio_cv(),
                   "calls": pool.calls, "seconds": round(pool.seconds, 2),
                   "accuracy_intervals": accuracy_intervals(data, accs),
                   "per_class": {"baseline": classes[0], "final": classes[1]} if classes else None,
                   "generative": measure_generative(state, base_engine, final_engine)}
    write_json(state, "final.json", state.final)
    sp, iv = pool.speedup, ivs["speedup"]
    return {"speedup": sp, "accuracy": accs[1], "rounds": len(pool.ratios),
            "_summary": f"{records[0]['latency_ms']['median']:.3f} -> {records[1]['latency_ms']['median']:.3f} ms "
                        f"({sp:.2f}x, {100 * iv.level:.0f}% interval {iv.low:.2f}-{iv.high:.2f}x over "
                        f"{pool.calls} processes), {data.metric} {format_score(data.metric, accs[0], data.test)} -> "
                        f"{format_score(data.metric, accs[1], data.test)}"}


def accuracy_intervals(data, accs: list[float]) -> dict | None:
    """Wilson intervals of baseline and final accuracy for % metrics (a proportion of the test samples)."""
    from core.stats import wilson_interval

    ev = EVALUATORS.get(data.metric)
    if ev.unit != "%":
        return None
    n = len(data.test)
    return {k: wilson_interval(a / 100 * n, n).to_json() for k, a in (("baseline", accs[0]), ("final", accs[1]))}


def r_measure(state: RunState) -> None:
    state.final = read_json(state, "final.json")


def s_report(state: RunState) -> dict:
    state.report = build_report(state)
    write_report(state.run_dir, state.report)
    v = state.report["constraints"]
    return {"met": v["met"], "_summary": "constraints met" if v["met"] else "; ".join(v["violations"])}


def build_stages() -> list[Stage]:
    model_keys = ("model", "arch", "data", "input_shape", "trust_checkpoint", "seed")
    return [
        Stage("load", s_load, config_keys=model_keys),
        Stage("baseline", s_baseline, (), ("baseline.onnx", "baseline.json"),
              (*model_keys, "target", "export", "measure"), r_baseline),
        Stage("score", s_score, (), ("scores.pt",), (*model_keys, "criterion", "criterion_options", "prune", "policy"),
              r_score),
        Stage("tune", s_tune, ("baseline.json", "scores.pt"), ("policy.json", "candidates.json"),
              (*model_keys, "criterion", "criterion_options", "objective", "constraints", "search", "policy", "prune",
               "recovery",
               "tune", "target", "measure", "export"), r_tune),
        Stage("prune", s_prune, ("policy.json",), ("pruned_raw.pt",), (*model_keys, "prune"), r_prune),
        Stage("recover", s_recover, ("pruned_raw.pt",), ("pruned.pt",), (*model_keys, "recovery"), r_recover),
        Stage("export", s_export, ("pruned.pt",), ("model.onnx", "parity.json"), ("export",), lambda s: None),
        Stage("build", s_build, ("model.onnx",), ("engine.json",), ("target",), lambda s: None),
        Stage("measure", s_measure, ("model.onnx", "baseline.onnx"), ("final.json",), ("target", "measure"),
              r_measure),
        Stage("report", s_report, ("final.json", "candidates.json", "policy.json"),
              ("report.json", "report.md", "pareto.png"), ("objective", "constraints"), None),
    ]
