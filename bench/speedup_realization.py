"""How much of a MAC reduction from channel pruning becomes measured speed on the ``cpu`` target.

For each model, the benchmark prunes 30 / 50 / 70 % of the channels of every prunable group
(uniform ratio, magnitude-L2 scores, ``round_to=8``, classifier left alone), exports the baseline
and the three pruned copies to ONNX, and measures all four with ONNX Runtime (CPU execution
provider) through :class:`targets.ort.cpu.CpuTarget`. It reports, per (model, ratio)::

    MAC reduction    = MACs(baseline) / MACs(pruned)
    measured speedup = median over rounds of  baseline round median / pruned round median
    realisation      = measured speedup / MAC reduction   (1.0 = every MAC removed turns into time)

Method, and why:

- **One fresh process, interleaved rounds.** The baseline and its pruned variants are measured in
  a single ``CpuTarget.measure`` call: one fresh worker process loads all four sessions, runs a
  discarded warm-up round, then times them round-robin (B P30 P50 P70, B P30 P50 P70, ...). The
  process holds no torch state from this script, and every variant is timed within seconds of the
  baseline it is compared with, so slow drifts of the machine (frequency scaling, thermal limits,
  other jobs on a shared host) hit all of them alike.
- **Median of per-round ratios.** Each round gives one median latency per engine; the speedup is
  the median over rounds of the per-round ratio baseline / pruned (``ratio_to_first``). A ratio
  taken inside one round cancels the drift common to that round, and the median over rounds
  discards a round disturbed by a burst of outside load. Dividing two overall medians instead
  would mix rounds taken under different conditions.
- MACs are counted by Torch-Pruning's op counter at batch 1 (``stages.prune.plan.macs_params``).
  Weights are random init (nothing is downloaded); latency does not depend on weight values.

Run: ``.venv/bin/python bench/speedup_realization.py`` (or ``make bench``). Writes
``speedup_realization.json`` (every raw number, round medians included) and
``speedup_realization.md`` under ``--out`` (default ``bench/results``); ONNX files go to a
temporary directory that is removed at the end.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from core.errors import PipelineError
from pipeline.versions import versions
from stages.export import ExportSettings, export_onnx
from stages.load.models import LoadedModel, ModelRequest, load_model
from stages.model.cost import macs_params
from stages.model.graph import PruneGraph
from stages.prune.plan import PruningPlan, apply_plan, make_plan, uniform_ratios
from targets.base import Engine, MeasureSettings
from targets.ort.cpu import CpuTarget, cpu_name, physical_cores

MODELS = {
    "resnet18": "torchvision:resnet18",
    "mobilenet_v2": "torchvision:mobilenet_v2",
    "default": "example:digits-resnet",
}
PRUNE_RATIOS = (0.3, 0.5, 0.7)
ROUND_TO = 8
CRITERION = ("magnitude", {"p": 2})  # magnitude-L2
REPO = Path(__file__).resolve().parent.parent


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated names ({', '.join(MODELS)}) or model specs such as torchvision:resnet50")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in PRUNE_RATIOS),
                   help="comma-separated prune ratios (fraction of channels removed per group)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default 5)")
    p.add_argument("--duration", type=float, default=1.0,
                   help="minimum timed seconds per engine per round (default 1.0)")
    p.add_argument("--warmup", type=float, default=0.3, help="warm-up seconds before each engine's round (default 0.3)")
    p.add_argument("--min-iters", type=int, default=50, help="minimum timed calls per engine per round (default 50)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: physical cores)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="output folder (default bench/results)")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
    if not args.models or not args.ratios:
        p.error("--models and --ratios need at least one value")
    if any(not 0.0 < r < 1.0 for r in args.ratios):
        p.error("prune ratios must lie strictly between 0 and 1")
    if args.rounds < 1 or args.duration <= 0:
        p.error("--rounds must be >= 1 and --duration > 0")
    return args


def model_spec(name: str) -> str:
    """A short name from :data:`MODELS`, or a full spec passed through."""
    if ":" in name:
        return name
    if name not in MODELS:
        raise SystemExit(f"unknown model '{name}': use one of {', '.join(MODELS)} or a spec such as torchvision:NAME")
    return MODELS[name]


# ---------------------------------------------------------------- pruning


def make_plans(lm: LoadedModel, example: torch.Tensor,
               ratios: list[float]) -> tuple[dict[float, PruningPlan], tuple[str, ...]]:
    """Uniform magnitude-L2 plans, one per prune ratio (scores computed once on the unpruned model).

    Returns the plans and the modules left unpruned (the classifier, found by ``PruneGraph``).
    """
    graph = PruneGraph(lm.module, example)
    groups = graph.groups()
    kind, kwargs = CRITERION
    scores = graph.importance(kind, **kwargs)
    plans = {r: make_plan(groups, scores, uniform_ratios(groups, r), ROUND_TO,
                          meta={"prune_ratio": r, "round_to": ROUND_TO, "criterion": "magnitude-l2"})
             for r in ratios}
    return plans, graph.ignored_names


def widths_summary(plan: PruningPlan) -> dict:
    """Kept channels per group: min / max, totals, and every group's width -> kept."""
    kept = [len(g.keep) for g in plan.groups]
    return {
        "groups": len(plan.groups),
        "kept_min": min(kept),
        "kept_max": max(kept),
        "kept_total": sum(kept),
        "width_total": sum(g.width for g in plan.groups),
        "per_group": {g.id: [g.width, len(g.keep)] for g in plan.groups},
    }


def short_widths(summary: dict, first: int = 4) -> str:
    """``'8-256 kept/group; conv1 64->48, ...'`` for the Markdown table."""
    head = ", ".join(f"{gid} {w}→{k}" for gid, (w, k) in list(summary["per_group"].items())[:first])
    more = ", …" if summary["groups"] > first else ""
    return f"{summary['kept_min']}–{summary['kept_max']} kept/group; {head}{more}"


# ---------------------------------------------------------------- export and measure


def build_engine(target: CpuTarget, model: torch.nn.Module, shape: tuple[int, ...], path: Path) -> tuple[Engine, dict]:
    """Export ``model`` to ``path`` and load it in ONNX Runtime."""
    export_rec = export_onnx(model, shape, path, ExportSettings())
    return target.build(path, shape, path.parent), export_rec


def latency_record(rec: dict) -> dict:
    """The timing fields of one ``CpuTarget.measure`` record worth keeping."""
    keys = ("latency_ms", "iterations", "round_medians_ms", "ratio_to_first", "throughput", "memory_mb",
            "peak_rss_mb", "session_create_s", "threads", "rounds", "measured_on")
    return {k: rec[k] for k in keys}


def bench_model(name: str, args: argparse.Namespace, target: CpuTarget, settings: MeasureSettings,
                workdir: Path) -> dict:
    """Prune, export and measure one model; returns its JSON record."""
    t0 = time.perf_counter()
    lm = load_model(ModelRequest(model_spec(name)))
    shape = tuple(lm.input_shape)
    example = lm.example_input(2)
    print(f"[{name}] {lm.spec} {shape}: planning {len(args.ratios)} ratios", flush=True)
    plans, ignored = make_plans(lm, example, args.ratios)
    base_macs, base_params = macs_params(lm.module, shape)

    mdir = workdir / lm.name
    mdir.mkdir(parents=True, exist_ok=True)
    base_engine, base_export = build_engine(target, lm.module, shape, mdir / "baseline.onnx")
    engines, variants = [base_engine], []
    for r, plan in plans.items():
        pruned = apply_plan(lm.module, example, plan)
        macs, params = macs_params(pruned, shape)
        engine, export_rec = build_engine(target, pruned, shape, mdir / f"pruned-{round(100 * r)}.onnx")
        engines.append(engine)
        variants.append({"prune_ratio": r, "keep_ratio": round(1.0 - r, 6), "widths": widths_summary(plan),
                         "macs": macs, "params": params, "mac_reduction": base_macs / macs,
                         "onnx_nodes": export_rec["nodes"], "onnx_bytes": export_rec["onnx_bytes"]})

    print(f"[{name}] measuring {len(engines)} engines: {args.rounds} interleaved rounds", flush=True)
    records = target.measure(engines, settings, rounds=args.rounds)
    for v, rec in zip(variants, records[1:]):
        v["latency"] = latency_record(rec)
        v["speedup"] = rec["ratio_to_first"]
        v["realisation"] = rec["ratio_to_first"] / v["mac_reduction"] if rec["ratio_to_first"] else None
    return {
        "model": name, "spec": lm.spec, "input_shape": list(shape), "notes": lm.notes,
        "ignored": list(ignored),
        "baseline": {"macs": base_macs, "params": base_params, "onnx_nodes": base_export["nodes"],
                     "onnx_bytes": base_export["onnx_bytes"], "latency": latency_record(records[0])},
        "variants": variants,
        "wall_s": round(time.perf_counter() - t0, 1),
    }


# ---------------------------------------------------------------- report


def machine_info(results: list[dict], threads: int) -> dict:
    measured = next((m["baseline"]["latency"]["measured_on"] for m in results if "baseline" in m), None)
    return {"measured_on": measured or CpuTarget({}).describe(threads), "cpu": cpu_name(),
            "physical_cores": physical_cores(), "platform": versions()["platform"]}


def markdown(report: dict) -> str:
    """The results table (plus a kept-widths table) as Markdown."""
    s, m = report["settings"], report["machine"]
    lines = [
        "# Speedup realisation: MAC reduction vs measured speedup (cpu target)",
        "",
        f"- Machine: {m['measured_on']}; {m['platform']}",
        f"- Date: {report['date']}",
        f"- Method: uniform magnitude-L2 channel pruning, round_to={s['round_to']}; baseline and pruned "
        f"engines measured interleaved in one fresh process, {s['rounds']} rounds x >= {s['duration_s']:g} s "
        f"(and >= {s['min_iters']} calls) per engine; speedup = median of per-round ratios",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform"),
        "",
        "| model | prune ratio | MACs M (base→pruned) | MAC reduction | latency ms (base→pruned) "
        "| measured speedup | speedup ÷ MAC reduction |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for mod in report["models"]:
        if "error" in mod:
            lines.append(f"| {mod['model']} | failed: {mod['error']} | | | | | |")
            continue
        b = mod["baseline"]
        for v in mod["variants"]:
            sp = f"{v['speedup']:.2f}×" if v["speedup"] else "n/a"
            real = f"{v['realisation']:.2f}" if v["realisation"] else "n/a"
            lines.append(
                f"| {mod['model']} | {100 * v['prune_ratio']:.0f} % | {b['macs'] / 1e6:.1f} → {v['macs'] / 1e6:.1f} "
                f"| {v['mac_reduction']:.2f}× | {b['latency']['latency_ms']['median']:.3f} → "
                f"{v['latency']['latency_ms']['median']:.3f} | {sp} | {real} |")
    lines += ["", "Kept channels per group (first groups shown; all in the JSON):", "",
              "| model | prune ratio | kept channels |", "|---|---:|---|"]
    for mod in report["models"]:
        for v in mod.get("variants", []):
            lines.append(f"| {mod['model']} | {100 * v['prune_ratio']:.0f} % | {short_widths(v['widths'])} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "speedup_realization.json", out / "speedup_realization.md"
    jpath.write_text(json.dumps(report, indent=2) + "\n")
    mpath.write_text(markdown(report))
    return jpath, mpath


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    target = CpuTarget({})
    threads = args.threads or physical_cores()
    settings = MeasureSettings(threads=threads, min_duration_s=args.duration, warmup_s=args.warmup,
                               min_iters=args.min_iters)
    t0 = time.perf_counter()
    results = []
    with tempfile.TemporaryDirectory(prefix="speedup-bench-") as tmp:
        for name in args.models:
            try:
                results.append(bench_model(name, args, target, settings, Path(tmp)))
            except PipelineError as e:
                print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
                results.append({"model": name, "error": str(e)})
    report = {
        "benchmark": "speedup_realization",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(results, threads),
        "versions": versions(),
        "settings": {"prune_ratios": args.ratios, "round_to": ROUND_TO, "criterion": "magnitude-l2",
                     "policy": "uniform", "rounds": args.rounds, "duration_s": args.duration,
                     "warmup_s": args.warmup, "min_iters": args.min_iters, "threads": threads,
                     "batch": settings.batch, "graph_optimization": target.optimization},
        "models": results,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    jpath, mpath = write_outputs(report, args.out)
    print()
    print(markdown(report))
    print(f"wrote {jpath} and {mpath} ({report['wall_s']} s)")
    return 1 if any("error" in m for m in results) else 0


if __name__ == "__main__":
    sys.exit(main())
