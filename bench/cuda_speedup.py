"""How much of a MAC reduction becomes speed on a GPU: torchvision resnet50 and vit_b_16, fp16, cuda target.

For each model the benchmark prunes a few ratios with hardware-aligned channel counts (kept
widths rounded to multiples of ``--round-to``, 16 by default: fp16 tensor-core tiles want
multiples of 8, and 16 keeps every GEMM dimension aligned), then measures the baseline and the
pruned copies together on the ``cuda`` target (runtime torch, fp16), eager and with CUDA graphs,
at batch 1 and 32. It reports, per (model, ratio, mode, batch)::

    MAC reduction    = MACs(baseline) / MACs(pruned)            (batch 1, Torch-Pruning's counter)
    measured speedup = median over rounds of  baseline round median / pruned round median
    realisation      = measured speedup / MAC reduction          (goal: >= 0.7)

What is pruned:

- **resnet50**: every prunable channel group, uniformly (magnitude-L2 scores), the classifier
  left alone.
- **vit_b_16**: the MLP hidden dimension of every encoder block (``mlp.0``: 3072 wide), nothing
  else. Attention heads are *not* pruned: the pipeline's head support (``PruneGraph.heads``)
  finds BERT-style attention (separate ``query``/``key``/``value`` Linear layers), and
  torchvision's ViT uses ``nn.MultiheadAttention`` with packed q/k/v, for which it finds none
  (the JSON records what it found). The residual width (768) is left alone as well.

Weights are random init (``weights=None``: nothing is downloaded); latency does not depend on
weight values. Method of measurement: see ``targets/cuda/`` (CUDA events per call after a
warm-up, engines interleaved round by round after a discarded round, median of per-round ratios).

Run on a machine with a CUDA GPU::

    .venv/bin/python bench/cuda_speedup.py            # both models, fp16, eager + graphs, batch 1 and 32

Without a GPU it stops with the reason (exit 2). ``--dry-run`` builds and prunes the models,
counts MACs and prints what would be measured, on the CPU. Writes ``cuda_speedup.json`` (every
raw number) and ``cuda_speedup.md`` under ``--out`` (default ``bench/results``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/cuda_speedup.py` from anywhere
    sys.path.insert(0, str(REPO))

from core.errors import PipelineError  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from stages.load.models import ModelRequest, load_model  # noqa: E402
from stages.model.cost import macs_params  # noqa: E402
from stages.model.graph import PruneGraph  # noqa: E402
from stages.prune.plan import PruningPlan, apply_plan, make_plan  # noqa: E402
from targets.base import MeasureSettings  # noqa: E402

# name: (model spec, which groups to prune, channels_last by default)
MODELS = {
    "resnet50": ("torchvision:resnet50", "all", True),
    "vit_b_16": ("torchvision:vit_b_16", "mlp", False),
}
RATIOS = (0.3, 0.5, 0.7)
BATCHES = (1, 32)
MODES = ("eager", "graphs")
GOAL = 0.7


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated names ({', '.join(MODELS)}) or NAME=SPEC:GROUPS with GROUPS all|mlp, "
                        "e.g. r18=torchvision:resnet18:all")
    p.add_argument("--ratios", default=",".join(f"{r:g}" for r in RATIOS),
                   help="comma-separated prune ratios (fraction of each pruned group's channels removed)")
    p.add_argument("--round-to", type=int, default=16, help="kept widths are multiples of this (default 16)")
    p.add_argument("--batches", default=",".join(map(str, BATCHES)), help="comma-separated batch sizes (default 1,32)")
    p.add_argument("--modes", default=",".join(MODES), help="eager, graphs or both (default both)")
    p.add_argument("--precision", default="fp16", choices=("fp16", "fp32"), help="default fp16")
    p.add_argument("--channels-last", default="auto", choices=("auto", "on", "off"),
                   help="auto: on for CNNs, off for the ViT")
    p.add_argument("--rounds", type=int, default=5, help="interleaved measurement rounds (default 5)")
    p.add_argument("--duration", type=float, default=0.5, help="minimum timed seconds per engine and round")
    p.add_argument("--warmup", type=float, default=0.2, help="warm-up seconds before each engine's round")
    p.add_argument("--min-iters", type=int, default=50, help="minimum timed calls per engine and round")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="output folder (default bench/results)")
    p.add_argument("--dry-run", action="store_true",
                   help="build and prune the models, count MACs, print the plan; no GPU needed, nothing measured")
    args = p.parse_args(argv)
    try:
        args.models = [parse_model(m) for m in args.models.split(",") if m.strip()]
        args.ratios = [float(r) for r in args.ratios.split(",") if r.strip()]
        args.batches = [int(b) for b in args.batches.split(",") if b.strip()]
    except ValueError as e:
        p.error(str(e))
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.models or not args.ratios or not args.batches or not args.modes:
        p.error("--models, --ratios, --batches and --modes need at least one value")
    if any(not 0.0 < r < 1.0 for r in args.ratios) or any(b < 1 for b in args.batches):
        p.error("prune ratios must lie strictly between 0 and 1, batches must be >= 1")
    if any(m not in MODES for m in args.modes):
        p.error(f"--modes takes {', '.join(MODES)}")
    if args.round_to < 1 or args.rounds < 1 or args.duration <= 0:
        p.error("--round-to and --rounds must be >= 1, --duration > 0")
    return args


def parse_model(text: str) -> tuple[str, str, str, bool]:
    """``resnet50`` -> (name, spec, groups, channels_last); ``NAME=SPEC:GROUPS`` for anything else."""
    text = text.strip()
    if "=" not in text:
        if text not in MODELS:
            raise ValueError(f"unknown model '{text}': use {', '.join(MODELS)} or NAME=SPEC:GROUPS")
        spec, groups, cl = MODELS[text]
        return text, spec, groups, cl
    name, _, rest = text.partition("=")
    spec, _, groups = rest.rpartition(":")
    if groups not in ("all", "mlp") or not spec:
        raise ValueError(f"bad model '{text}': write NAME=SPEC:GROUPS with GROUPS all or mlp")
    return name, spec, groups, groups == "all"


# ---------------------------------------------------------------- pruning (CPU)


def prune_variants(spec: str, which: str, ratios: list[float], round_to: int) -> dict:
    """Load the model (random init), make one hardware-aligned plan per ratio, apply it, count MACs."""
    lm = load_model(ModelRequest(spec))
    shape = tuple(lm.input_shape)
    example = lm.example_input(2)
    graph = PruneGraph(lm.module, example)
    groups = graph.groups()
    chosen = [g for g in groups if which == "all" or g.id.endswith(".mlp.0")]
    if not chosen:
        raise PipelineError(f"{spec}: no groups to prune for '{which}'", hint="use GROUPS all")
    scores = graph.importance("magnitude", p=2)
    heads = graph.heads()
    base_macs, base_params = macs_params(lm.module, shape)
    variants = []
    for r in ratios:
        keep = {g.id: 1.0 - r for g in chosen}
        plan = make_plan(groups, scores, keep, round_to, graph.ignored_names,
                         meta={"prune_ratio": r, "round_to": round_to, "criterion": "magnitude-l2", "groups": which})
        pruned = apply_plan(lm.module, example, plan)
        macs, params = macs_params(pruned, shape)
        variants.append({"prune_ratio": r, "plan": plan, "module": pruned, "macs": macs, "params": params,
                         "mac_reduction": base_macs / macs, "widths": widths(plan, {g.id for g in chosen})})
    return {"loaded": lm, "shape": shape, "groups": len(groups), "pruned_groups": len(chosen),
            "ignored": list(graph.ignored_names), "heads_found": heads, "base_macs": base_macs,
            "base_params": base_params, "variants": variants}


def widths(plan: PruningPlan, pruned: set[str]) -> dict:
    """Kept channels of the pruned groups (all multiples of round_to unless a group is narrower)."""
    kept = {g.id: [g.width, len(g.keep)] for g in plan.groups if g.id in pruned}
    return {"pruned_groups": len(kept), "kept_min": min(k for _, k in kept.values()),
            "kept_max": max(k for _, k in kept.values()), "per_group": kept}


def plan_text(models: list[dict], args: argparse.Namespace) -> str:
    """What a run measures, per model: pruned groups, kept widths, MACs, MAC reduction."""
    lines = []
    for m in models:
        lines.append(f"{m['name']} ({m['spec']}, {m['shape']}): {m['pruned_groups']} of {m['groups']} groups pruned "
                     f"({m['which']}), classifier kept: {', '.join(m['ignored']) or '-'}; "
                     f"attention heads found: {m['heads_found'] or 'none'}; channels_last {m['channels_last']}")
        lines.append(f"  baseline: {m['base_macs'] / 1e9:.3f} GMACs, {m['base_params'] / 1e6:.2f} M params")
        for v in m["variants"]:
            w = v["widths"]
            lines.append(f"  prune {100 * v['prune_ratio']:.0f} %: {v['macs'] / 1e9:.3f} GMACs "
                         f"({v['mac_reduction']:.2f}x fewer), kept {w['kept_min']}-{w['kept_max']} per group "
                         f"(multiples of {args.round_to})")
    n_eng = 1 + len(args.ratios)
    lines.append(f"measure: cuda target, runtime torch, {args.precision}, modes {', '.join(args.modes)}, batches "
                 f"{', '.join(map(str, args.batches))}: {len(models) * len(args.modes) * len(args.batches)} "
                 f"interleaved measurements of {n_eng} engines, {args.rounds} rounds x >= {args.duration:g} s")
    return "\n".join(lines)


# ---------------------------------------------------------------- measurement (GPU)


def measure_model(m: dict, args: argparse.Namespace) -> list[dict]:
    """Every (mode, batch) of one model: baseline and pruned engines measured together."""
    from targets import get_target

    out = []
    for mode in args.modes:
        target = get_target("cuda", {"precision": args.precision, "graphs": mode == "graphs",
                                     "channels_last": m["channels_last"]})
        engines = [target.build_module(m["loaded"].module, m["shape"], f"{m['name']}-base")]
        engines += [target.build_module(v["module"], m["shape"], f"{m['name']}-p{round(100 * v['prune_ratio'])}")
                    for v in m["variants"]]
        for batch in args.batches:
            settings = MeasureSettings(batch=batch, warmup_s=args.warmup, min_duration_s=args.duration,
                                       min_iters=args.min_iters)
            print(f"[{m['name']}] {mode}, batch {batch}: {len(engines)} engines, {args.rounds} rounds", flush=True)
            recs = target.measure(engines, settings, rounds=args.rounds)
            base = recs[0]
            rows = []
            for v, rec in zip(m["variants"], recs[1:]):
                sp = rec["ratio_to_first"]
                rows.append({"prune_ratio": v["prune_ratio"], "mac_reduction": v["mac_reduction"], "speedup": sp,
                             "realisation": sp / v["mac_reduction"] if sp else None, "latency": keep(rec)})
            out.append({"mode": mode, "batch": batch, "baseline": keep(base), "variants": rows})
        del target, engines
        torch.cuda.empty_cache()
    return out


def keep(rec: dict) -> dict:
    keys = ("latency_ms", "iterations", "round_medians_ms", "ratio_to_first", "throughput", "memory_mb",
            "cuda_memory", "first_run_ms", "session_create_s", "batch", "rounds", "mode", "precision",
            "channels_last", "measured_on")
    return {k: rec.get(k) for k in keys}


# ---------------------------------------------------------------- report


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Speedup realisation on a GPU: MAC reduction vs measured speedup (cuda target)",
        "",
        f"- Machine: {report['machine']}",
        f"- Date: {report['date']}",
        f"- Method: magnitude-L2 pruning, kept widths multiples of {s['round_to']}; cuda target, runtime torch, "
        f"{s['precision']}; baseline and pruned engines interleaved, {s['rounds']} rounds x >= {s['duration_s']:g} s "
        f"(and >= {s['min_iters']} calls) per engine; speedup = median of per-round ratios; "
        f"realisation = speedup / MAC reduction (goal >= {GOAL})",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if k != "platform"),
        "",
        "| model | pruned | MAC reduction | batch | mode | latency ms (base→pruned) | speedup | realisation | ≥ 0.7 |",
        "|---|---:|---:|---:|---|---:|---:|---:|:---:|",
    ]
    for mod in report["models"]:
        if "error" in mod:
            lines.append(f"| {mod['name']} | failed: {mod['error']} | | | | | | | |")
            continue
        what = "MLP hidden" if mod["which"] == "mlp" else "all groups"
        for meas in mod["measurements"]:
            b = meas["baseline"]["latency_ms"]["median"]
            for v in meas["variants"]:
                real, sp = v["realisation"], v["speedup"]
                lines.append(
                    f"| {mod['name']} | {100 * v['prune_ratio']:.0f} % ({what}) | {v['mac_reduction']:.2f}× "
                    f"| {meas['batch']} | {meas['mode']} | {b:.3f} → {v['latency']['latency_ms']['median']:.3f} "
                    f"| {f'{sp:.2f}×' if sp else 'n/a'} | {f'{real:.2f}' if real else 'n/a'} "
                    f"| {'✅' if real and real >= GOAL else '❌'} |")
    return "\n".join(lines) + "\n"


def write_outputs(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / "cuda_speedup.json", out / "cuda_speedup.md"
    jpath.write_text(json.dumps(report, indent=2, default=str) + "\n")
    mpath.write_text(markdown(report))
    return jpath, mpath


def gpu_name() -> str:
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    return f"{p.name} (sm {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.dry_run:
        from targets.cuda import torch_cuda_unavailable_reason

        why = torch_cuda_unavailable_reason()
        if why is not None:
            print(f"error: this benchmark measures on a CUDA GPU and there is none usable here: {why}", file=sys.stderr)
            print("hint: run it on a machine with an NVIDIA GPU and a CUDA build of torch; "
                  "--dry-run prunes the models and prints the plan without one", file=sys.stderr)
            return 2
    t0 = time.perf_counter()
    models = []
    for name, spec, which, cl_default in args.models:
        print(f"[{name}] {spec}: pruning {which} at {', '.join(f'{r:g}' for r in args.ratios)}, "
              f"round_to {args.round_to}", flush=True)
        try:
            m = prune_variants(spec, which, args.ratios, args.round_to)
        except PipelineError as e:
            print(f"[{name}] failed: {e}", file=sys.stderr, flush=True)
            models.append({"name": name, "spec": spec, "which": which, "error": str(e)})
            continue
        cl = {"auto": cl_default, "on": True, "off": False}[args.channels_last]
        models.append({"name": name, "spec": spec, "which": which, "channels_last": cl, **m})
    ok = [m for m in models if "error" not in m]
    print(plan_text(ok, args), flush=True)
    if args.dry_run:
        print(f"dry run: nothing measured ({time.perf_counter() - t0:.1f} s)")
        return 1 if len(ok) < len(models) else 0
    for m in ok:
        try:
            m["measurements"] = measure_model(m, args)
        except PipelineError as e:
            print(f"[{m['name']}] failed: {e}", file=sys.stderr, flush=True)
            m["error"] = str(e)
    report = {
        "benchmark": "cuda_speedup",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": gpu_name(),
        "versions": versions(),
        "settings": {"prune_ratios": args.ratios, "round_to": args.round_to, "criterion": "magnitude-l2",
                     "precision": args.precision, "modes": args.modes, "batches": args.batches,
                     "rounds": args.rounds, "duration_s": args.duration, "warmup_s": args.warmup,
                     "min_iters": args.min_iters, "goal_realisation": GOAL},
        "models": [{k: v for k, v in m.items() if k != "loaded"} | (
            {"variants": [{k: v for k, v in var.items() if k not in ("module", "plan")} for var in m["variants"]]}
            if "variants" in m else {}) for m in models],
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    jpath, mpath = write_outputs(report, args.out)
    print()
    print(markdown(report))
    print(f"wrote {jpath} and {mpath} ({report['wall_s']} s)")
    return 1 if any("error" in m for m in models) else 0


if __name__ == "__main__":
    sys.exit(main())
