"""The concrete stages of ``pipeline run``: thin glue between the run folder and ``stages/``."""

from __future__ import annotations

import copy
import shutil
from contextlib import nullcontext
from pathlib import Path

import torch

from pipeline.candidates import CandidateEvaluator
from pipeline.errors import ConfigError, SpecError, StageError
from pipeline.manifest import atomic_torch_save
from pipeline.report import build_report, write_report
from pipeline.runner import RunState, Stage, load_pruned, read_json, save_pruned, write_json
from pipeline.tuner import Budgets, SearchLimits, search_global
from stages.export import ExportSettings, check_parity, export_onnx
from stages.load.data import load_data, with_model_labels
from stages.load.models import ModelRequest, load_model
from stages.measure import TorchRunner, evaluate_top1, measurement_record
from stages.prune.apply import Pruner, PruneSettings
from stages.prune.depth import drop_blocks, removable_blocks
from stages.prune.masks import reapply_masks
from stages.prune.plan import PruningPlan, apply_plan, macs_params
from stages.prune.tp_adapter import PruneGraph
from stages.recover import DistillSettings, distill
from stages.score import CRITERIA, ScoreContext, ScoreResult
from targets.base import MeasureSettings, build_engine
from targets.ort_runner import OrtRunner


def _example(state: RunState, batch: int = 2) -> torch.Tensor:
    return torch.zeros((batch, *state.loaded.input_shape))


def _export_settings(state: RunState) -> ExportSettings:
    e = state.cfg.export
    return ExportSettings(opset=e.opset, exporter=e.exporter, atol=e.atol, rtol=e.rtol)


def _measure_settings(state: RunState, candidate: bool = False) -> MeasureSettings:
    m = state.cfg.measure
    duration = m.candidate_duration_s if candidate else m.min_duration_s
    return MeasureSettings(m.threads, m.batch, m.warmup_s, duration, m.min_iters)


def _distill_settings(state: RunState, steps: int) -> DistillSettings:
    r = state.cfg.recovery
    return DistillSettings(steps=steps, batch_size=r.batch_size, lr=r.lr, temperature=r.temperature,
                           alpha=r.alpha, seed=state.cfg.seed)


def _parity_inputs(state: RunState) -> torch.Tensor:
    n = min(state.cfg.export.parity_samples, len(state.data.calib))
    return torch.stack([state.data.calib[i][0] for i in range(n)])


# ------------------------------------------------------------------ load

def s_load(state: RunState) -> dict:
    cfg = state.cfg
    torch.manual_seed(cfg.seed)
    lm = load_model(ModelRequest(cfg.model, cfg.arch, cfg.input_shape, cfg.trust_checkpoint))
    data = load_data(cfg.data, lm.input_shape)
    if tuple(data.input_shape) != tuple(lm.input_shape):
        raise SpecError(f"data '{cfg.data}' gives samples of shape {data.input_shape}, model expects {lm.input_shape}",
                        hint="pass --input-shape or use matching data")
    if not data.labeled:
        data = with_model_labels(data, lm.module)
    state.loaded, state.data = lm, data
    macs, params = macs_params(lm.module, lm.input_shape)
    return {"model": lm.spec, "params": params, "macs": macs, "input_shape": list(lm.input_shape),
            "data": data.name, "splits": [len(data.train), len(data.calib), len(data.test)],
            "metric": data.metric, "notes": lm.notes,
            "_summary": f"{lm.name}: {params / 1e6:.2f} M params, {macs / 1e6:.1f} MMACs; data {data.name}"}


# ------------------------------------------------------------------ baseline

def s_baseline(state: RunState) -> dict:
    lm, data = state.loaded, state.data
    path = state.run_dir / "baseline.onnx"
    exp = export_onnx(lm.module, lm.input_shape, path, _export_settings(state))
    with OrtRunner(path) as r:
        parity = check_parity(lm.module, r, _parity_inputs(state), state.cfg.export.atol, state.cfg.export.rtol)
    engine = _build_engine(state, "baseline.onnx", lm.module)
    timing = state.target.measure([engine], _measure_settings(state), rounds=state.cfg.measure.final_rounds)[0]
    with state.target.runner(engine) as r:
        test_acc = evaluate_top1(r, data.test)
    calib_acc = evaluate_top1(TorchRunner(lm.module), data.calib)
    macs, params = macs_params(lm.module, lm.input_shape)
    rec = measurement_record(timing, onnx_bytes=exp["onnx_bytes"], params=params, macs=macs,
                             accuracy=test_acc, metric=data.metric)
    state.baseline = {"record": rec, "calib_accuracy": calib_acc, "parity": parity, "export": exp}
    write_json(state, "baseline.json", state.baseline)
    return {"latency_ms": rec["latency_ms"]["median"], "accuracy": test_acc, "calib_accuracy": calib_acc,
            "_summary": f"{rec['latency_ms']['median']:.3f} ms, {data.metric} {test_acc:.2f}% (test, through ORT)"}


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
                                                    "options": options, "passes": result.passes, "depth": depth})
    return {"criterion": crit.name, "groups": len(scores), "options": options, "passes": result.passes,
            **({"depth": depth} if depth else {}),
            "_summary": f"{crit.name}: {len(scores)} groups, {sum(len(v) for v in scores.values())} channels"
                        + (f"; dropped blocks {', '.join(depth['dropped'])}" if depth else "")}


def r_score(state: RunState) -> None:
    if not state.cfg.policy:
        saved = torch.load(state.run_dir / "scores.pt", weights_only=True)
        state.scores = saved["scores"]
        state.score_result = ScoreResult(saved["scores"], saved.get("allocation"), saved.get("blocks"),
                                         saved.get("passes", {}))
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
    """``prune.depth_blocks``: score the loaded model's removable blocks with LD-Pruner and drop the
    lowest; sets ``state.drop_blocks``. With ``--criterion ld-pruner`` its options (``latent``,
    ``samples``) apply, so these are the block scores that criterion gives, without its channel pass."""
    import time

    from stages.score.calib_stats import calib_inputs
    from stages.score.ld_pruner import LATENT, SAMPLES, calib_samples, score_blocks

    n = state.cfg.prune.depth_blocks
    model = copy.deepcopy(state.loaded.module).eval()
    names = removable_blocks(model, _example(state))
    if n > len(names):
        raise ConfigError(f"prune.depth_blocks = {n} but the model has {len(names)} removable residual blocks"
                          + (f" ({', '.join(names)})" if names else ""),
                          hint=f"set prune.depth_blocks to at most {len(names)}" if names else
                          "set prune.depth_blocks: 0 (depth pruning needs residual blocks with identity shortcuts)")
    opts = crit.resolve_options(state.cfg.criterion_options) if crit.name == "ld-pruner" else {}
    latent = str(opts.get("latent", LATENT))
    batches = calib_samples(calib_inputs(state.data.calib, 4), int(opts.get("samples", SAMPLES)))
    t0 = time.perf_counter()
    scores, passes = score_blocks(model, batches, names, latent)
    order = sorted(names, key=lambda b: (scores[b], names.index(b)))  # lowest first, ties by position
    state.drop_blocks = tuple(b for b in names if b in order[:n])
    return {"dropped": list(state.drop_blocks), "block_scores": scores, "latent": latent,
            "passes": {"forward": passes["forward"]}, "seconds": round(time.perf_counter() - t0, 3)}


# ------------------------------------------------------------------ tune

def _search_bar(state: RunState, what: str):
    """The console's search progress bar (``tick(done, total, best)``), or a no-op where the UI has none."""
    bar = getattr(state.ui, "search_progress", None)
    return bar(what) if bar is not None else nullcontext(None)


def s_tune(state: RunState) -> dict:
    cfg = state.cfg
    if cfg.policy:
        return _replay_policy(state, Path(cfg.policy))
    base = state.baseline
    c = cfg.constraints
    lat_budget = c.latency_ms if c.latency_ms is not None else (
        base["record"]["latency_ms"]["median"] / c.speedup if c.speedup else None)
    budgets = Budgets(lat_budget, c.memory_mb, c.max_accuracy_drop, base["calib_accuracy"])
    model = _base(state)  # depth-pruned when prune.depth_blocks > 0
    groups = _graph(state, copy.deepcopy(model)).groups()
    ev = CandidateEvaluator(
        model=model, sample_shape=state.loaded.input_shape, data=state.data, groups=groups, scores=state.scores,
        round_to=cfg.prune.round_to, ignore=cfg.prune.ignore, pruner=_pruner(state), target=state.target,
        measure=_measure_settings(state, candidate=True), rounds=cfg.measure.candidate_rounds,
        baseline_onnx=state.run_dir / "baseline.onnx", baseline_latency_ms=base["record"]["latency_ms"]["median"],
        export=_export_settings(state), distill=_distill_settings(state, cfg.recovery.tune_steps
                                                                  if cfg.recovery.method != "none" else 0),
        workdir=state.run_dir / "candidates",
        allocation=getattr(state.score_result, "allocation", None) if cfg.search == "global" else None,
        max_ratio=cfg.prune.max_ratio)
    t = cfg.tune
    limits = SearchLimits(cfg.prune.max_ratio, t.step, t.min_step, t.max_candidates, t.time_limit_s, t.latency_margin)
    extra: dict = {}
    if cfg.search == "greedy":
        res, extra = _greedy(state, ev, groups, budgets, limits)
    elif cfg.search == "optuna":
        res, extra = _optuna(state, ev, groups, budgets, limits)
    else:
        with _search_bar(state, "global") as tick:
            res = search_global(ev, cfg.objective, budgets, limits, log=state.ui.note, progress=tick)
    shutil.rmtree(state.run_dir / "candidates", ignore_errors=True)
    if res.chosen is None:
        raise StageError("the search evaluated no candidate", hint="raise tune.max_candidates or tune.time_limit_s")
    plan = res.chosen.payload["plan"]
    plan = PruningPlan(plan.groups, plan.ignore, {**plan.meta, "criterion": cfg.criterion, "objective": cfg.objective},
                       state.drop_blocks)
    state.plan = plan
    state.tune = {"budgets": vars(budgets), "stop_reason": res.stop_reason, "log": res.log,
                  "candidates": [c.to_json() for c in res.candidates], "evaluations": ev.evaluations, **extra}
    write_json(state, "policy.json", plan.to_json())
    write_json(state, "candidates.json", state.tune)
    ch = res.chosen
    return {"candidates": len(res.candidates), "chosen_ratio": ch.ratio, "stop_reason": res.stop_reason,
            "_summary": f"{len(res.candidates)} candidates; ratio {ch.ratio:.3f} -> {ch.latency_ms:.3f} ms "
                        f"(budget {lat_budget:.3f} ms)" if lat_budget else
                        f"{len(res.candidates)} candidates; ratio {ch.ratio:.3f}"}


def _greedy(state: RunState, ev: CandidateEvaluator, groups, budgets: Budgets, limits: SearchLimits):
    from pipeline.greedy import GreedySettings, search_greedy
    from pipeline.lut import build_lut, layer_terms
    from pipeline.manifest import sha256_file

    cfg, t = state.cfg, state.cfg.tune
    # prune.round_to null (or 1): no fixed rounding; the widths come from the measured staircase
    staircase = cfg.prune.round_to is None or cfg.prune.round_to <= 1
    settings = GreedySettings(t.initial_reduction, t.decay, t.lut_points, uniform=t.uniform, families=t.families,
                              staircase=staircase)
    ms = _measure_settings(state, candidate=True)
    key_parts = {"target_desc": state.target.describe(ms.threads), "sample_shape": state.loaded.input_shape,
                 "model_hash": sha256_file(state.run_dir / "baseline.onnx"), "batch": ms.batch}
    base_ms = state.baseline["record"]["latency_ms"]["median"]
    with _search_bar(state, "latency LUT") as tick:
        lut = build_lut(groups, ev.speedups, base_ms, cfg.prune.round_to, t.lut_points, key_parts, log=state.ui.note,
                        staircase=staircase, progress=tick)
    try:  # which conv / linear layers each group scales: the LUT's interaction model
        lut.layers = layer_terms(copy.deepcopy(ev.model), _example(state, 1), groups)
    except Exception as e:  # noqa: BLE001 - an exotic model: the additive model still works
        state.ui.note(f"LUT: no layer structure ({type(e).__name__}: {e}); predicting with the additive model")
    with _search_bar(state, "greedy") as tick:
        res = search_greedy(ev, lut, cfg.objective, budgets, limits, settings, cfg.prune.round_to, log=state.ui.note,
                            progress=tick)
    full = {g.id: g.width for g in groups}
    cal = lut.calibration(full)
    if cal["n"]:
        loo = (f"leave-one-out mean {100 * cal['mean_abs_rel_err']:.1f}%, max {100 * cal['max_abs_rel_err']:.1f}%"
               if cal["mean_abs_rel_err"] is not None else "no leave-one-out error (one point)")
        state.ui.note(f"LUT ({cal['model']}) vs {cal['n']} full measurements: {loo}; uncalibrated mean "
                      f"{100 * cal['raw']['mean_abs_rel_err']:.1f}% (additive model "
                      f"{100 * cal['additive_raw']['mean_abs_rel_err']:.1f}%)")
    extra = {"lut": lut.to_json(), "lut_calibration": cal, "uniform": t.uniform}
    if staircase:
        extra["staircase"] = {g.id: lut.bottoms(g.id, g.width) for g in groups}
    return res, extra


def _optuna(state: RunState, ev: CandidateEvaluator, groups, budgets: Budgets, limits: SearchLimits):
    from pipeline.families import families
    from pipeline.search_optuna import make_run_spec, redact_url, search_optuna

    cfg, t = state.cfg, state.cfg.tune
    if t.uniform and t.families == "group":
        raise ConfigError("--uniform needs families of several groups, not tune.families 'group'",
                          hint="set tune.families to stage or block, or drop --uniform")
    storage = t.storage or f"sqlite:///{(state.run_dir / 'study.db').resolve()}"
    study = t.study or f"edge-{state.run_dir.resolve().name}"
    base_ms = state.baseline["record"]["latency_ms"]["median"]
    run_spec = make_run_spec(cfg, model=state.loaded.module, groups=groups, scores=state.scores,
                             baseline_latency_ms=base_ms)
    state.ui.note(f"more machines: pipeline worker --study {study} --storage {redact_url(storage)}")
    with _search_bar(state, "optuna") as tick:
        res = search_optuna(ev, cfg.objective, budgets, limits, families=families(groups, t.families),
                            storage=storage, study_name=study, sampler=t.sampler, seed=cfg.seed, log=state.ui.note,
                            step=t.keep_step, recover_top=t.recover_top, run_spec=run_spec, uniform=t.uniform,
                            progress=tick)
    return res, {"optuna": {"storage": redact_url(storage), "study": study, "sampler": t.sampler,
                            "families": t.families}, "uniform": t.uniform}


def _replay_policy(state: RunState, path: Path) -> dict:
    plan = PruningPlan.from_file(path)
    apply_plan(state.loaded.module, _example(state), plan)  # validates it fits this model
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
    p = state.cfg.prune
    criterion = state.plan.meta.get("criterion", state.cfg.criterion) if state.cfg.policy and state.plan \
        else state.cfg.criterion
    return Pruner(_base(state), _example(state), state.data.calib,
                  PruneSettings(str(criterion), p.recalibrate_bn, p.recalibrate_batches))


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
    acc = evaluate_top1(TorchRunner(pruned), state.data.calib)
    extra = f"; {100 * sparsity['sparsity']:.1f}% weight sparsity ({sparsity['pattern']})" if sparsity else ""
    return {"macs": macs, "params": params, "bn_recalibrated": state.cfg.prune.recalibrate_bn,
            "calib_accuracy_oneshot": acc, "sparsity": sparsity,
            "_summary": f"{params / 1e6:.2f} M params, {macs / 1e6:.1f} MMACs; one-shot calib acc {acc:.2f}%{extra}"}


def _sparsify(state: RunState, pruned) -> dict:
    """Weight masks on top of the channel plan (``prune.sparsity``); masks saved to masks.pt so
    recovery can hold the zeros."""
    from stages.prune.masks import output_layer, sparsify
    from stages.score.calib_stats import calib_inputs

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
    r = state.cfg.recovery
    out = state.run_dir / "pruned.pt"
    if r.method == "none" or r.steps == 0 or (all(len(g.keep) == g.width for g in state.plan.groups)
                                              and not state.plan.drop_blocks):
        save_pruned(out, state.pruned, state.plan, state.loaded.spec)
        return {"_status": "skipped", "_summary": "no recovery configured" if r.steps == 0 or r.method == "none"
                else "nothing pruned"}
    if r.soft_steps:
        student, rec = _soft_recover(state)
    else:
        student = copy.deepcopy(state.pruned)
        masks = _saved_masks(state)
        with state.ui.progress("distill", r.steps) as tick:
            def on_step(step: int, loss: float) -> None:
                if masks:  # prune.sparsity: the zeros must not grow back
                    reapply_masks(student, masks)
                tick(step, loss)

            rec = distill(student, state.loaded.module, state.data.train, _distill_settings(state, r.steps),
                          state.data.labeled, on_step=on_step)
    state.pruned = student
    save_pruned(out, student, state.plan, state.loaded.spec)
    acc = evaluate_top1(TorchRunner(student), state.data.calib)
    soft = f" ({r.soft_steps} with soft masks)" if r.soft_steps else ""
    return {**rec, "calib_accuracy": acc, "_summary": f"{r.steps} steps KD{soft}; calib acc {acc:.2f}%"}


def _saved_masks(state: RunState) -> dict | None:
    path = state.run_dir / "masks.pt"
    return torch.load(path, weights_only=True)["pruned"] if path.is_file() else None


def _soft_recover(state: RunState):
    """``recovery.soft_steps > 0``: gradient-flow soft masks on the unpruned model, then the plan's
    hard removal, then plain KD for the remaining steps (``stages/soft_masks.py``)."""
    from stages.soft_masks import SoftSettings, soft_prune

    r = state.cfg.recovery  # soft_steps <= steps and no prune.sparsity: checked by RunConfig
    with state.ui.progress("soft masks + distill", r.steps) as tick:
        return soft_prune(state.loaded.module, state.plan, _example(state), state.data.train, state.data.calib,
                          SoftSettings(r.soft_steps, r.soft_beta, r.soft_eta, r.soft_rescore),
                          _distill_settings(state, r.steps), state.data.labeled, on_step=tick)


def r_recover(state: RunState) -> None:
    state.pruned, state.plan = load_pruned(state.run_dir / "pruned.pt", state.loaded.module, _example(state))


# ------------------------------------------------------------------ export / build / measure

def s_export(state: RunState) -> dict:
    path = state.run_dir / "model.onnx"
    exp = export_onnx(state.pruned, state.loaded.input_shape, path, _export_settings(state))
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
    lm, data = state.loaded, state.data
    base_engine = _build_engine(state, "baseline.onnx", lm.module)
    final_engine = _build_engine(state, "model.onnx", state.pruned)
    timings = state.target.measure([base_engine, final_engine], _measure_settings(state),
                                   rounds=state.cfg.measure.final_rounds)
    accs = []
    for eng in (base_engine, final_engine):
        with state.target.runner(eng) as r:
            accs.append(evaluate_top1(r, data.test))
    bm, bp = macs_params(lm.module, lm.input_shape)
    fm, fp = macs_params(state.pruned, lm.input_shape)
    base = measurement_record(timings[0], onnx_bytes=(state.run_dir / "baseline.onnx").stat().st_size,
                              params=bp, macs=bm, accuracy=accs[0], metric=data.metric)
    final = measurement_record(timings[1], onnx_bytes=(state.run_dir / "model.onnx").stat().st_size,
                               params=fp, macs=fm, accuracy=accs[1], metric=data.metric)
    state.final = {"baseline": base, "final": final}
    write_json(state, "final.json", state.final)
    sp = timings[1]["ratio_to_first"]
    state.final["speedup"] = sp
    write_json(state, "final.json", state.final)
    return {"speedup": sp, "accuracy": accs[1],
            "_summary": f"{base['latency_ms']['median']:.3f} -> {final['latency_ms']['median']:.3f} ms "
                        f"({sp:.2f}x), {data.metric} {accs[0]:.2f} -> {accs[1]:.2f}%"}


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
