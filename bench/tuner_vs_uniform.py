"""Per-layer tuning (``greedy``, ``optuna``) vs the best uniform-ratio criterion, at measured speedup budgets.

For every model and speedup budget B on the ``cpu`` target, the benchmark runs the pipeline
itself (``python -m pipeline.cli run`` in a subprocess; every run writes its ``report.json``):

1. **Uniform baselines**: ``search: global`` (one prune ratio for every group, bisected on
   measured latency) with each Torch-Pruning criterion: ``magnitude-l2``, ``bn-scale``,
   ``taylor``. The best one (highest final accuracy / fidelity among the runs that meet B by their
   own verdict; the most accurate one if none does) is *the* uniform baseline.
2. **Tuned**, with that best criterion: ``greedy`` (per group), ``greedy --uniform`` (one width per
   stage), ``optuna`` with ``families: group`` (per group) and ``optuna --uniform`` (per stage).
   The uniform variants show what uniform widths cost (item: MaskPrune).
3. **Independent re-measure**: the unpruned model and every final ``model.onnx`` of that (model,
   B) are measured together in one fresh process, interleaved round by round (as the pipeline's
   verdict does), with more rounds than the runs used: ``speedup`` = median over rounds of
   baseline / final round medians. ``vs budget`` = re-measured speedup / B - 1.
4. **Same latency**: where a tuned run and the uniform baseline ended at different re-measured
   speedups *and* neither dominates (one is faster but less accurate), the uniform baseline is run
   again at the tuned run's re-measured speedup (``uniform@tuned``) and re-measured interleaved with
   it, so accuracy is compared at the same measured latency.

Every run of a (model, B) has the same recovery budget (``recovery.steps``, ``recovery.tune_steps``),
the same candidate cap and time cap, the same seed and the same latency margin; no accuracy floor
(``max_accuracy_drop: null``: the question is accuracy at equal latency). Reported per run: final
accuracy (test split, through ONNX Runtime; *fidelity* = top-1 agreement with the unpruned model
for ``--data random``), re-measured speedup, distance to the budget, tuning wall time (the ``tune``
stage; whether the greedy LUT came from the disk cache), full-model measurements made by the search
(``tune.evaluations``; LUT measurements not included), and the LUT's leave-one-out error.

Models: the embedded default (ResNet-20 on digits, top-1), torchvision ``resnet18`` and
``mobilenet_v2`` at 3x64x64 with random init and ``--data random`` (fidelity); nothing downloads.

Run on a quiet machine: every number is a latency measurement. ``--quick`` is a smoke test (one
model, one budget, tiny caps; numbers meaningless); ``--dry`` prints the runs and runs nothing.
Writes ``tuner_vs_uniform.json`` (every number, per run) and ``tuner_vs_uniform.md`` under ``--out``
(default ``bench/results``; ``--name`` for other names); ``--append`` merges into an existing JSON,
replacing the same (model, budget), so models can be run separately.

The staircase rounding (``prune.round_to: null``, opt-in method ``greedy-stairs``) measures a dense
LUT (``lut_points: 32``): compare it on the default model with
``--models default --criteria magnitude-l2 --methods greedy,greedy-stairs --name tuner_staircase``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MODELS = {  # name -> (model spec, data spec, input shape)
    "default": ("example:digits-resnet", "digits", None),
    "mobilenet_v2": ("torchvision:mobilenet_v2", "random", [3, 64, 64]),
    "resnet18": ("torchvision:resnet18", "random", [3, 64, 64]),
    "minilm": ("example:minilm", None, None),  # the real all-MiniLM-L6-v2, metric cosine on its own sentences
    "tiny-llama": ("example:tiny-llama", None, None),  # trained here, metric perplexity on held-out docstrings
}
MODEL_CRITERIA = {  # criteria for transformers: no BatchNorm (bn-scale), activation-aware ones from the papers
    "minilm": ("magnitude-l2", "wanda", "stade"),
    "tiny-llama": ("magnitude-l2", "wanda", "stade"),
}
DEFAULT_MODELS = ("default", "mobilenet_v2", "resnet18")  # the transformers by name: --models minilm,tiny-llama
BUDGETS = (1.5, 2.0, 3.0)
CRITERIA = ("magnitude-l2", "bn-scale", "taylor")
TUNED = {  # method -> config overrides (the criterion is the best uniform one)
    "greedy": {"search": "greedy"},
    "greedy-uniform": {"search": "greedy", "tune": {"uniform": True, "families": "stage"}},
    "optuna": {"search": "optuna", "tune": {"families": "group"}},
    "optuna-uniform": {"search": "optuna", "tune": {"families": "stage", "uniform": True}},
    # opt-in (--methods ...,greedy-stairs): no fixed rounding, widths from the measured staircase
    "greedy-stairs": {"search": "greedy", "prune": {"round_to": None}, "tune": {"lut_points": 32}},
    # one-shot sensitivity curves + a MAC-priced knapsack, landed on measured latency, vs the uniform path
    "sensitivity": {"search": "sensitivity"},
    # AAP's global threshold (scaled per layer by its share of weights) on the best uniform criterion's scores,
    # and on AAP's own activation score; both landed on measured latency
    "aap": {"search": "aap"},
    "aap-score": {"search": "aap", "criterion": "aap"},
}
DEFAULT_METHODS = ("greedy", "greedy-uniform", "optuna", "optuna-uniform")
UNIFORM_PAIRS = (("greedy", "greedy-uniform"), ("optuna", "optuna-uniform"))
QUICK = {  # tiny caps: a smoke test of the whole path, numbers meaningless
    "recovery": {"steps": 20, "tune_steps": 5},
    "tune": {"max_candidates": 6, "time_limit_s": 120, "lut_points": 3},
    "measure": {"final_rounds": 1, "min_duration_s": 0.3, "candidate_rounds": 2, "candidate_duration_s": 0.2},
}
QUICK_STAIRS_POINTS = 8


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=None, help=f"comma-separated: {', '.join(MODELS)} (default {','.join(DEFAULT_MODELS)}; --quick: default)")
    p.add_argument("--budgets", default=None, help="comma-separated speedup budgets (default 1.5,2,3; --quick: 2)")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"tuned methods: {', '.join(TUNED)} (default {','.join(DEFAULT_METHODS)})")
    p.add_argument("--criteria", default=None,
                   help=f"uniform-ratio criteria (default {','.join(CRITERIA)}; transformers: "
                        f"{','.join(MODEL_CRITERIA['minilm'])})")
    p.add_argument("--quick", action="store_true", help="smoke test: one model, one budget, tiny caps")
    p.add_argument("--dry", action="store_true", help="print the runs and their configs; run nothing")
    p.add_argument("--recovery-steps", type=int, default=150, help="final distillation steps, every run (150)")
    p.add_argument("--tune-steps", type=int, default=20, help="short recovery during the searches, every run (20)")
    p.add_argument("--max-candidates", type=int, default=16, help="candidate / trial cap of every search (16)")
    p.add_argument("--time-limit", type=float, default=900.0, help="time cap of every search, seconds (900)")
    p.add_argument("--rounds", type=int, default=7, help="re-measure: interleaved rounds (7)")
    p.add_argument("--duration", type=float, default=1.0, help="re-measure: seconds per engine per round (1.0)")
    p.add_argument("--no-match", action="store_true", help="skip the same-latency reruns of the uniform baseline")
    p.add_argument("--match-tol", type=float, default=0.02,
                   help="re-measured speedups closer than this (relative) count as the same latency (0.02)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: physical cores)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="output folder (bench/results)")
    p.add_argument("--runs", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    p.add_argument("--resume", action="store_true",
                   help="keep the runs of the same (model, budget) in the output JSON whose run folders still exist "
                        "(give the same --runs); run only what is missing (new methods, dropped reruns)")
    p.add_argument("--append", action="store_true",
                   help="merge into an existing output JSON (replaces the same model and budget)")
    p.add_argument("--name", default="tuner_vs_uniform",
                   help="output file names under --out: NAME.json and NAME.md (default tuner_vs_uniform)")
    a = p.parse_args(argv)
    a.models = [m.strip() for m in (a.models or ("default" if a.quick else ",".join(DEFAULT_MODELS))).split(",") if m.strip()]
    a.budgets = [float(b) for b in (a.budgets or ("2" if a.quick else ",".join(map(str, BUDGETS)))).split(",")
                 if b.strip()]
    a.methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    a.criteria = None if a.criteria is None else [c.strip() for c in a.criteria.split(",") if c.strip()]
    bad = [m for m in a.models if m not in MODELS] + [m for m in a.methods if m not in TUNED]
    if bad:
        p.error(f"unknown model or method: {', '.join(bad)}")
    if not a.models or not a.budgets or a.criteria == [] or any(b < 1.0 for b in a.budgets):
        p.error("give at least one model, one criterion and budgets >= 1")
    if not a.name.startswith("tuner_") or "/" in a.name:
        p.error("--name must start with tuner_ and name a file, e.g. tuner_staircase")
    if a.quick:
        a.rounds, a.duration = min(a.rounds, 2), min(a.duration, 0.3)
        a.no_match = True
    return a


# ------------------------------------------------------------------ configs and runs

def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def run_config(a: argparse.Namespace, model: str, budget: float, search: dict, criterion: str,
               speedup: float | None = None) -> dict:
    spec, data, shape = MODELS[model]
    cfg = {
        "model": spec, "data": data, "target": "cpu", "objective": "latency", "seed": a.seed,
        "constraints": {"speedup": round(speedup or budget, 4), "max_accuracy_drop": None},
        "criterion": criterion,
        "prune": {"round_to": 8},
        "recovery": {"method": "distill", "steps": a.recovery_steps, "tune_steps": a.tune_steps},
        "measure": {"threads": a.threads},
        "tune": {"max_candidates": a.max_candidates, "time_limit_s": a.time_limit},
    }
    if shape:
        cfg["input_shape"] = shape
    if a.quick:
        cfg = _merge(cfg, QUICK)
    cfg = _merge(cfg, search)
    if a.quick and cfg["search"] == "greedy" and cfg["prune"]["round_to"] is None:
        cfg["tune"]["lut_points"] = QUICK_STAIRS_POINTS
    return cfg


def launch(cfg: dict, run_dir: Path, log_path: Path) -> dict:
    """One ``pipeline run`` in a subprocess; returns what its report.json says (or the error)."""
    cfg_path = run_dir.parent / f"{run_dir.name}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    cmd = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(cfg_path), "--out", str(run_dir), "--quiet",
           "--overwrite"]  # only runs to be (re)made are launched: a folder of an earlier invocation is replaced
    # an empty torch hub: torchvision models are random init (seeded by the run) even where pretrained
    # weights happen to be cached; nothing downloads either way
    hub = run_dir.parent / "empty-torch-home"
    hub.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "TORCH_HOME": str(hub)}
    t0 = time.perf_counter()
    with log_path.open("w") as log:
        proc = subprocess.run(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env, check=False)
    wall = time.perf_counter() - t0
    rep_path = run_dir / "report.json"
    # exit 3 (the verdict could not decide: the budget inside the noise) still wrote its report: a row, verdict open
    if proc.returncode not in (0, 1, 3) or not rep_path.is_file():
        tail = log_path.read_text().strip().splitlines()[-3:]
        return {"error": f"exit {proc.returncode}: {' | '.join(tail)}", "wall_s": round(wall, 1)}
    return summarize(json.loads(rep_path.read_text()), run_dir, wall)


def summarize(rep: dict, run_dir: Path, wall: float) -> dict:
    stages = {s["name"]: s["seconds"] for s in rep["stages"]}
    tune = rep.get("tune") or {}
    cal = tune.get("lut_calibration") or None
    log = []
    cj = run_dir / "candidates.json"
    if cj.is_file():
        log = json.loads(cj.read_text()).get("log", [])
    groups = rep["policy"]["groups"]
    return {
        "run_dir": str(run_dir), "met": rep["constraints"]["met"], "verdict_speedup": rep["speedup"],
        "baseline_accuracy": rep["baseline"]["accuracy"], "accuracy": rep["final"]["accuracy"],
        "metric": rep["final"]["accuracy_metric"], "baseline_ms": rep["baseline"]["latency_ms"]["median"],
        "final_ms": rep["final"]["latency_ms"]["median"], "macs": rep["final"]["macs"], "params": rep["final"]["params"],
        "tune_s": stages.get("tune"), "run_s": round(sum(stages.values()), 1), "wall_s": round(wall, 1),
        "evaluations": tune.get("evaluations"), "candidates": len(rep.get("candidates") or []),
        "stop_reason": tune.get("stop_reason"),
        "lut_from_cache": any("latency LUT from cache" in line for line in log),
        "lut": None if not cal else {k: cal.get(k) for k in ("model", "n", "mean_abs_rel_err", "max_abs_rel_err",
                                                               "online", "raw", "additive_raw", "additive_loo")},
        "kept": {g: [v["width"], v["kept"]] for g, v in groups.items()},
    }


def remeasure(a: argparse.Namespace, baseline_onnx: Path, runs: dict[str, dict], shape: tuple[int, ...],
              workdir: Path) -> dict[str, dict]:
    """Every final model with the unpruned one in one fresh process, interleaved; speedup per run label."""
    from targets.base import MeasureSettings
    from targets.ort.cpu import CpuTarget

    labels = [k for k, r in runs.items() if "error" not in r and Path(r["run_dir"], "model.onnx").is_file()]
    if not labels:
        return {}
    target = CpuTarget({})
    engines = [target.build(baseline_onnx, shape, workdir)]
    engines += [target.build(Path(runs[k]["run_dir"]) / "model.onnx", shape, workdir) for k in labels]
    settings = MeasureSettings(threads=a.threads, min_duration_s=a.duration)
    recs = target.measure(engines, settings, rounds=a.rounds)
    out = {"baseline": {"median_ms": recs[0]["latency_ms"]["median"], "round_medians_ms": recs[0]["round_medians_ms"]}}
    for k, r in zip(labels, recs[1:]):
        out[k] = {"speedup": r["ratio_to_first"], "median_ms": r["latency_ms"]["median"],
                  "round_medians_ms": r["round_medians_ms"]}
    out["measured_on"] = recs[0]["measured_on"]
    return out


# ------------------------------------------------------------------ one (model, budget)

def criteria_for(a: argparse.Namespace, model: str) -> list[str]:
    """The uniform-ratio criteria of a model: ``--criteria``, else the model's own list, else :data:`CRITERIA`."""
    return a.criteria or list(MODEL_CRITERIA.get(model, CRITERIA))


def best_uniform(runs: dict[str, dict], criteria: list[str]) -> str | None:
    ok = {c: runs[f"uniform:{c}"] for c in criteria if "error" not in runs.get(f"uniform:{c}", {"error": 1})}
    if not ok:
        return None
    met = {c: r for c, r in ok.items() if r["met"]} or ok
    return max(met, key=lambda c: (met[c]["accuracy"] if met[c]["accuracy"] is not None else -1.0,
                                   -criteria.index(c)))


MATCH = {"search": "global", "tune": {"latency_margin": 0.0, "min_step": 0.005}}  # lands at the tuned speedup


def bench_point(a: argparse.Namespace, model: str, budget: float, root: Path, say, prior: dict | None = None) -> dict:
    """All runs of one (model, budget), the re-measure and the same-latency reruns. ``prior`` (``--resume``): the
    point as an earlier invocation wrote it; its runs (their run folders still on disk) are kept, not rerun."""
    tag = f"{model}-{budget:g}x"
    runs: dict[str, dict] = dict((prior or {}).get("runs", {}))
    configs: dict[str, dict] = dict((prior or {}).get("configs", {}))

    def go(label: str, cfg: dict) -> None:
        if label in runs and "error" not in runs[label] and Path(runs[label]["run_dir"], "model.onnx").is_file():
            return  # --resume: made by an earlier invocation
        configs[label] = cfg
        if a.dry:
            return
        say(f"[{tag}] {label}: search {cfg['search']}, criterion {cfg['criterion']}, speedup "
            f"{cfg['constraints']['speedup']}")
        safe = label.replace(":", "-").replace("@", "-at-")
        runs[label] = launch(cfg, root / f"{tag}-{safe}", root / f"{tag}-{safe}.log")
        r = runs[label]
        say(f"[{tag}] {label}: " + (r["error"] if "error" in r else
                                     f"{r['metric']} {r['accuracy']:.2f}, verdict {r['verdict_speedup']:.2f}x, "
                                     f"tune {r['tune_s']:.0f}s, {r['evaluations']} full measurements"))

    criteria = criteria_for(a, model)
    for c in criteria:
        go(f"uniform:{c}", run_config(a, model, budget, {"search": "global"}, c))
    best = criteria[0] if a.dry else best_uniform(runs, criteria)
    if best is None:
        return {"model": model, "budget": budget, "error": "every uniform run failed", "runs": runs}
    for m in a.methods:
        go(m, run_config(a, model, budget, TUNED[m], best))
    if a.dry:
        return {"model": model, "budget": budget, "configs": configs}
    first = next(r for r in runs.values() if "error" not in r)
    shape = tuple(MODELS[model][2]) if MODELS[model][2] else _shape_of(Path(first["run_dir"]))
    baseline_onnx = Path(first["run_dir"]) / "baseline.onnx"
    say(f"[{tag}] re-measuring {len(runs)} final models with the baseline, {a.rounds} interleaved rounds")
    rem = remeasure(a, baseline_onnx, runs, shape, root)
    matched: dict[str, dict] = {k: v for k, v in (prior or {}).get("matched", {}).items() if k in runs}
    ref = f"uniform:{best}"
    if not a.no_match and ref in rem:
        for m in a.methods:
            if m not in rem or runs[m].get("accuracy") is None:
                continue
            s_t, s_u = rem[m]["speedup"], rem[ref]["speedup"]
            faster, better = s_t > s_u, runs[m]["accuracy"] > runs[ref]["accuracy"]
            if abs(s_t / s_u - 1) <= a.match_tol or faster == better or f"uniform@{m}" in matched:
                continue  # same latency already, one of the two dominates, or matched by an earlier invocation
            label = f"uniform@{m}"
            go(label, run_config(a, model, budget, MATCH, best, speedup=s_t))
            if "error" not in runs[label]:
                matched[label] = remeasure(a, baseline_onnx, {m: runs[m], label: runs[label]}, shape, root)
    return {"model": model, "budget": budget, "best_criterion": best, "runs": runs, "remeasure": rem,
            "matched": matched, "configs": configs}


def _shape_of(run_dir: Path) -> tuple[int, ...]:
    """The sample shape the run measured with (its load stage's; a token model's inputs of one shape are packed
    along the first axis, as the ORT worker feeds them)."""
    stages = json.loads((run_dir / "manifest.json").read_text())["stages"]
    load = next(s for s in stages if s.get("name") == "load")
    return tuple(int(d) for d in load["metrics"]["input_shape"])


# ------------------------------------------------------------------ report

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def rows_of(point: dict) -> list[dict]:
    """One row per run of a (model, budget): the numbers the table shows."""
    out = []
    rem = point.get("remeasure", {})
    for label, r in point.get("runs", {}).items():
        row = {"label": label, **r}
        if label.startswith("uniform@"):
            m = point.get("matched", {}).get(label, {})
            row["speedup"] = (m.get(label) or {}).get("speedup")
        else:
            row["speedup"] = (rem.get(label) or {}).get("speedup")
        row["vs_budget"] = None if row["speedup"] is None else row["speedup"] / point["budget"] - 1
        out.append(row)
    return out


def _verdict(met: bool | None) -> str:
    return "" if met else " unmet" if met is False else " undecided"


def _runs_line(s: dict) -> str:
    return (f"Runs: recovery {s['recovery_steps']} distillation steps (searches: {s['tune_steps']}), candidate cap "
            f"{s['max_candidates']}, time cap {s['time_limit_s']:.0f} s, seed {s['seed']}, ONNX Runtime threads "
            f"{s.get('threads') or 'default'}.")


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Per-layer tuning vs uniform pruning at measured speedup budgets (cpu target)",
        "",
        f"- Machine: {report.get('measured_on') or 'n/a'}; {report['platform']}",
        f"- Date: {report['date']}; total wall time {report['wall_s'] / 60:.1f} min"
        + ("; **--quick smoke: numbers are not meaningful**" if s["quick"] else ""),
        "- Every run of a section: the recovery budget, candidate cap and time cap on its `Runs:` line; no accuracy "
        "floor; round_to 8 unless the method says otherwise",
        f"- Speedup: re-measured, every final model interleaved with the unpruned one in one fresh process, "
        f"{s['rounds']} rounds x >= {s['duration_s']:g} s; `vs budget` = speedup / budget - 1",
        "- `uniform:<criterion>`: one prune ratio for every group (`search: global`); the tuned methods use the best "
        "of them; `uniform@<method>`: the best uniform criterion rerun at that method's re-measured speedup (bisection with no latency margin and a 0.005 step)",
        "- LUT error: leave-one-out, calibrated (uncalibrated; additive model uncalibrated)",
        "",
    ]
    for point in report["points"]:
        if "error" in point:
            lines += [f"## {point['model']} at {point['budget']:g}x: {point['error']}", ""]
            continue
        lines += [f"## {point['model']} at {point['budget']:g}x (best uniform criterion: "
                  f"`{point.get('best_criterion')}`)", "", _runs_line(point.get("settings") or s), "",
                  "| method | accuracy (test) | Δ vs unpruned | speedup (re-measured) | vs budget | verdict | "
                  "tune s | full measurements | LUT error |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for row in rows_of(point):
            if "error" in row:
                lines.append(f"| {row['label']} | failed: {row['error'][:80]} | | | | | | | |")
                continue
            acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.2f} ({row['metric']})"
            drop = "-" if row["accuracy"] is None else f"{row['accuracy'] - row['baseline_accuracy']:+.2f}"
            sp = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
            lut = row.get("lut")
            lut_s = "-" if not lut else (f"{_pct(lut['mean_abs_rel_err'])} ({_pct((lut.get('raw') or {}).get('mean_abs_rel_err'))}; "
                                         f"{_pct((lut.get('additive_raw') or {}).get('mean_abs_rel_err'))}), n={lut['n']}")
            tune = f"{row['tune_s']:.0f}" + (" (LUT cached)" if row.get("lut_from_cache") else "")
            lines.append(f"| {row['label']} | {acc} | {drop} | {sp} | {_pct(row['vs_budget'])} | "
                         f"{row['verdict_speedup']:.2f}x{_verdict(row['met'])} | {tune} | "
                         f"{row['evaluations'] if row['evaluations'] is not None else '-'} | {lut_s} |")
        lines.append("")
    summary = summary_rows(report)
    if summary:
        lines += ["## Summary", "", "| model | budget | method | accuracy − best uniform | at speedups | "
                  "uniform widths cost |", "|---|---:|---|---:|---|---:|"]
        lines += [f"| {r['model']} | {r['budget']:g}x | {r['method']} | {r['gain']} | {r['speedups']} | {r['uniform_cost']} |"
                  for r in summary]
        lines.append("")
    return "\n".join(lines)


def summary_rows(report: dict) -> list[dict]:
    """Tuned minus best uniform (at the same latency when a rerun was needed), and uniform minus per-group."""
    out = []
    for p in report["points"]:
        if "error" in p or not p.get("best_criterion"):
            continue
        rows = {r["label"]: r for r in rows_of(p)}
        ref = rows.get(f"uniform:{p['best_criterion']}")
        for m in [k for k in rows if k in TUNED]:
            r = rows[m]
            if "error" in r or ref is None or "error" in ref or r["accuracy"] is None:
                continue
            u = rows.get(f"uniform@{m}") if f"uniform@{m}" in rows and "error" not in rows[f"uniform@{m}"] else ref
            mt = p.get("matched", {}).get(f"uniform@{m}") if u is not ref else None
            su = (mt or {}).get(f"uniform@{m}", {}).get("speedup") if mt else u["speedup"]
            st = (mt or {}).get(m, {}).get("speedup") if mt else r["speedup"]
            pair = next((x for x in UNIFORM_PAIRS if m in x), None)
            cost = "-"
            if pair and m == pair[1] and pair[0] in rows and "error" not in rows[pair[0]] \
                    and rows[pair[0]]["accuracy"] is not None:
                cost = f"{r['accuracy'] - rows[pair[0]]['accuracy']:+.2f} pts vs {pair[0]}"
            out.append({"model": p["model"], "budget": p["budget"], "method": m,
                        "gain": f"{r['accuracy'] - u['accuracy']:+.2f} pts" + (" (same-latency rerun)" if mt else ""),
                        "speedups": f"{st:.2f}x vs {su:.2f}x" if st and su else "-", "uniform_cost": cost})
    return out


def write_outputs(report: dict, out: Path, append: bool, name: str = "tuner_vs_uniform") -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    if append and jpath.is_file():
        old = json.loads(jpath.read_text())
        keep = [p for p in old.get("points", []) if (p["model"], p["budget"]) not in
                {(q["model"], q["budget"]) for q in report["points"]}]
        report = {**report, "points": keep + report["points"], "wall_s": old.get("wall_s", 0) + report["wall_s"]}
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    mpath.write_text(markdown(report))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    from pipeline.versions import versions

    def say(s: str) -> None:
        print(s, flush=True)

    t0 = time.perf_counter()
    if a.dry:
        n = 0
        for model in a.models:
            for budget in a.budgets:
                point = bench_point(a, model, budget, Path("."), say)
                for label, cfg in point["configs"].items():
                    n += 1
                    say(f"{model} {budget:g}x {label}: " + json.dumps(cfg, sort_keys=True))
        say(f"{n} pipeline runs, plus one re-measure per (model, budget)"
            + ("" if a.no_match else " and up to one same-latency rerun per tuned method"))
        return 0
    tmp = None
    if a.runs is None:
        tmp = tempfile.mkdtemp(prefix="tuner-bench-")
        root = Path(tmp)
    else:
        root = a.runs
        root.mkdir(parents=True, exist_ok=True)
    points = []
    prior = {}
    jpath = a.out / f"{a.name}.json"
    if a.resume and jpath.is_file():
        prior = {(p["model"], p["budget"]): p for p in json.loads(jpath.read_text()).get("points", [])}
    try:
        for model in a.models:
            for budget in a.budgets:
                points.append(bench_point(a, model, budget, root, say, prior.get((model, budget))))
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    measured_on = next((p["remeasure"].get("measured_on") for p in points if p.get("remeasure")), None)
    report = {
        "benchmark": "tuner_vs_uniform",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "measured_on": measured_on, "platform": versions()["platform"], "versions": versions(),
        "settings": {"quick": a.quick, "models": a.models, "budgets": a.budgets, "methods": a.methods,
                     "criteria": a.criteria or "per model", "recovery_steps": QUICK["recovery"]["steps"] if a.quick else a.recovery_steps,
                     "tune_steps": QUICK["recovery"]["tune_steps"] if a.quick else a.tune_steps,
                     "max_candidates": QUICK["tune"]["max_candidates"] if a.quick else a.max_candidates,
                     "time_limit_s": QUICK["tune"]["time_limit_s"] if a.quick else a.time_limit,
                     "rounds": a.rounds, "duration_s": a.duration, "match": not a.no_match, "seed": a.seed,
                     "threads": a.threads},
        "points": points,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    for p in points:  # per point: --append merges points made with other settings
        p["settings"] = report["settings"]
    jpath, mpath = write_outputs(report, a.out, a.append or a.resume, a.name)
    print()
    print(mpath.read_text())
    print(f"wrote {jpath} and {mpath} ({report['wall_s'] / 60:.1f} min)")
    return 1 if any("error" in p or any("error" in r for r in p.get("runs", {}).values()) for p in points) else 0


if __name__ == "__main__":
    sys.exit(main())
