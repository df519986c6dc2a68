"""``report.json`` (the contract), ``report.md`` and ``pareto.png``; the constraint verdict."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipeline.config import RunConfig
from pipeline.manifest import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.versions import versions


def verdict(cfg: RunConfig, base: dict, final: dict, speedup: float) -> dict:
    """Check every constraint against the final measurement; say which failed and by how much.

    ``speedup`` is the median over interleaved rounds of baseline / final round medians.
    """
    c = cfg.constraints
    b_med, f_med = base["latency_ms"]["median"], final["latency_ms"]["median"]
    v: list[str] = []
    if c.speedup is not None and speedup < c.speedup:
        v.append(f"speedup {speedup:.2f}x < required {c.speedup:.2f}x (short by {100 * (1 - speedup / c.speedup):.1f}%; "
                 f"baseline {b_med:.3f} ms, final {f_med:.3f} ms)")
    if c.latency_ms is not None and f_med > c.latency_ms:
        v.append(f"latency {f_med:.3f} ms > budget {c.latency_ms:.3f} ms (over by {f_med - c.latency_ms:.3f} ms, "
                 f"{100 * (f_med / c.latency_ms - 1):.1f}%)")
    if c.memory_mb is not None and final["memory_mb"] > c.memory_mb:
        v.append(f"memory {final['memory_mb']:.1f} MB > budget {c.memory_mb:.1f} MB "
                 f"(over by {final['memory_mb'] - c.memory_mb:.1f} MB)")
    if c.max_accuracy_drop is not None and base.get("accuracy") is not None and final.get("accuracy") is not None:
        drop = base["accuracy"] - final["accuracy"]
        if drop > c.max_accuracy_drop + 1e-9:
            v.append(f"{final['accuracy_metric']} drop {drop:.2f} pts > allowed {c.max_accuracy_drop:.2f} pts "
                     f"({base['accuracy']:.2f}% -> {final['accuracy']:.2f}%)")
    return {"latency_ms": c.latency_ms, "speedup": c.speedup, "memory_mb": c.memory_mb,
            "max_accuracy_drop": c.max_accuracy_drop, "met": not v, "violations": v}


def build_report(state: Any) -> dict:
    cfg: RunConfig = state.cfg
    base, final = state.final["baseline"], state.final["final"]
    speedup = state.final.get("speedup") or base["latency_ms"]["median"] / final["latency_ms"]["median"]
    cons = verdict(cfg, base, final, speedup)
    tune = state.tune or {}
    return {
        "format": "edge-pipeline/report-v1",
        "model": state.loaded.spec,
        "data": state.data.name,
        "target": cfg.target,
        "objective": cfg.objective,
        "criterion": cfg.criterion if not cfg.policy else None,
        "search": cfg.search if not cfg.policy else "replay",
        "constraints": cons,
        "baseline": base,
        "final": final,
        "speedup": speedup,
        "accuracy_drop": (base["accuracy"] - final["accuracy"]) if base.get("accuracy") is not None else None,
        "policy": {"file": "policy.json", "groups": {g.id: {"width": g.width, "kept": len(g.keep)}
                                                      for g in state.plan.groups}},
        "candidates": tune.get("candidates", []),
        "tune": {"stop_reason": tune.get("stop_reason"), "budgets": tune.get("budgets")},
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3)} for r in state.records],
        "versions": versions(),
        "sparsity": sparsity_section(state),
    }


def sparsity_section(state: Any) -> dict | None:
    """Weight sparsity achieved in the final model when ``prune.sparsity`` masked it, else None."""
    path = Path(state.run_dir) / "masks.pt"
    if not path.is_file() or state.pruned is None:
        return None
    import torch

    from stages.prune.masks import MaskSpec, sparsity_report

    saved = torch.load(path, weights_only=True)
    rep = sparsity_report(state.pruned, layers=list(saved["pruned"]), spec=MaskSpec.parse(saved["pattern"]))
    dense = [n for n, m in state.pruned.named_modules() if n not in saved["pruned"]
             and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return {"pattern": saved["pattern"], "criterion": saved["criterion"], "sparsity": rep["sparsity"],
            "model_sparsity": rep["model_sparsity"], "masked_layers": len(saved["pruned"]), "dense_layers": dense,
            "nm_ok": all(v.get("nm_ok", True) for v in rep["layers"].values()), "note": rep["speedup_note"]}


def write_report(run_dir: Path, report: dict) -> None:
    report = {**report, "stages": report["stages"] + [{"name": "report", "status": "ok", "seconds": 0.0}]}
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_bytes(run_dir / "pareto.png", pareto_png(report))
    atomic_write_text(run_dir / "report.md", markdown(report))


def pareto_png(report: dict) -> bytes:
    """Accuracy vs measured latency: every candidate, the baseline and the chosen point."""
    import io

    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.2), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    b, f = report["baseline"], report["final"]
    base_ms = b["latency_ms"]["median"]
    cands = [c for c in report["candidates"] if c.get("accuracy") is not None]
    if cands:
        # each candidate's in-process speedup, placed on the final measurement's scale, so that
        # machine drift between the search and the verdict does not shift the points
        xs = [base_ms / c["speedup"] if c.get("speedup") else c["latency_ms"] for c in cands]
        ax.scatter(xs, [c["accuracy"] for c in cands], s=28, c="#6b7fa8", label="candidates (calib split)")
    if b.get("accuracy") is not None:
        ax.scatter([b["latency_ms"]["median"]], [b["accuracy"]], marker="s", s=70, c="#222222",
                   label="baseline (test, engine)")
    if f.get("accuracy") is not None:
        ax.scatter([f["latency_ms"]["median"]], [f["accuracy"]], marker="*", s=200, c="#d62728",
                   label="chosen, recovered (test, engine)")
    c = report["constraints"]
    line = c["latency_ms"] or (base_ms / c["speedup"] if c.get("speedup") else None)
    if line:
        ax.axvline(line, ls="--", c="#999999", lw=1, label="latency budget")
    ax.set_xlabel(f"measured median latency, ms ({report['target']}; candidates via their measured speedup)")
    ax.set_ylabel(f"{f.get('accuracy_metric') or 'accuracy'} (%)")
    ax.set_title(f"{report['model']}: accuracy vs measured latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ms(m: dict) -> str:
    return f"{m['latency_ms']['median']:.3f}"


def markdown(r: dict) -> str:
    b, f, c = r["baseline"], r["final"], r["constraints"]
    verdict_line = "**Constraints met.**" if c["met"] else "**Constraints NOT met:** " + "; ".join(c["violations"])

    def acc(m: dict) -> str:
        return "n/a" if m.get("accuracy") is None else f"{m['accuracy']:.2f}%"

    rows = [
        ("latency median (ms)", _ms(b), _ms(f)),
        ("latency p90 / p99 (ms)", f"{b['latency_ms']['p90']:.3f} / {b['latency_ms']['p99']:.3f}",
         f"{f['latency_ms']['p90']:.3f} / {f['latency_ms']['p99']:.3f}"),
        ("latency CV", f"{100 * b['latency_ms']['cv']:.1f}%", f"{100 * f['latency_ms']['cv']:.1f}%"),
        ("throughput (samples/s)", f"{b['throughput']:.1f}", f"{f['throughput']:.1f}"),
        ("memory (MB, RSS growth)", f"{b['memory_mb']:.1f}", f"{f['memory_mb']:.1f}"),
        (f"{f['accuracy_metric']} (test, through engine)", acc(b), acc(f)),
        ("MACs (M)", f"{b['macs'] / 1e6:.1f}", f"{f['macs'] / 1e6:.1f}"),
        ("params (M)", f"{b['params'] / 1e6:.3f}", f"{f['params'] / 1e6:.3f}"),
        ("ONNX size (MB)", f"{b['onnx_bytes'] / 1e6:.2f}", f"{f['onnx_bytes'] / 1e6:.2f}"),
    ]
    lines = [
        f"# Compression report: {r['model']} on {r['target']}",
        "",
        verdict_line,
        "",
        f"- objective: `{r['objective']}`; criterion: `{r['criterion']}`; search: `{r['search']}`",
        f"- speedup: **{r['speedup']:.2f}x** (median over interleaved rounds of baseline / final median latency)",
        f"- measured on: {f['measured_on']}",
        "",
        "## Constraints",
        "",
        "| constraint | budget | result |",
        "|---|---|---|",
    ]
    if c["speedup"] is not None:
        lines.append(f"| speedup | >= {c['speedup']:.2f}x | {r['speedup']:.2f}x |")
    if c["latency_ms"] is not None:
        lines.append(f"| latency | <= {c['latency_ms']:.3f} ms | {_ms(f)} ms |")
    if c["memory_mb"] is not None:
        lines.append(f"| memory | <= {c['memory_mb']:.1f} MB | {f['memory_mb']:.1f} MB |")
    if c["max_accuracy_drop"] is not None and r.get("accuracy_drop") is not None:
        lines.append(f"| accuracy drop | <= {c['max_accuracy_drop']:.2f} pts | {r['accuracy_drop']:.2f} pts |")
    lines += ["", "## Baseline vs final", "", "| metric | baseline | final |", "|---|---|---|"]
    lines += [f"| {a} | {x} | {y} |" for a, x, y in rows]
    sp = r.get("sparsity")
    if sp:
        lines += ["", "## Weight sparsity", "",
                  f"{100 * sp['sparsity']:.1f}% of the weights of {sp['masked_layers']} layers are zero "
                  f"(`{sp['pattern']}` by `{sp['criterion']}`; {100 * sp['model_sparsity']:.1f}% of all parameters); "
                  f"left dense: {', '.join(f'`{n}`' for n in sp['dense_layers']) or 'none'}.",
                  "",
                  f"**This gives no speedup on this target.** The latency above is what a dense runtime does with "
                  f"the zeros: {sp['note']}. The `jetson` / `tensorrt` targets turn a 2:4 pattern into "
                  f"speed on Orin with `SPARSE_WEIGHTS`."]
    lines += ["", "## Search", "", f"Stop reason: {r['tune'].get('stop_reason')}", "",
              "![accuracy vs measured latency](pareto.png)", ""]
    if r["candidates"]:
        lines += ["Candidates were measured during the search, interleaved with the unpruned model; "
                  "`speedup` is that in-process ratio, `latency ms` is the search-time baseline divided by it.", "",
                  "| prune ratio | speedup | latency ms | memory MB | MMACs | calib acc one-shot | calib acc recovered | chosen |",
                  "|---|---|---|---|---|---|---|---|"]
        for cd in sorted(r["candidates"], key=lambda x: x["prune_ratio"]):
            rec = f"{cd['accuracy']:.2f}" if cd.get("recovered") else "-"
            one = f"{cd['accuracy_oneshot']:.2f}" if cd.get("accuracy_oneshot") is not None else "-"
            spd = f"{cd['speedup']:.2f}x" if cd.get("speedup") else "-"
            lines.append(f"| {cd['prune_ratio']:.3f} | {spd} | {cd['latency_ms']:.3f} | {cd['memory_mb']:.1f} | "
                         f"{cd['macs'] / 1e6:.1f} | {one} | {rec} | {'**yes**' if cd.get('accepted') else ''} |")
    lines += ["", "## Kept width per group", "", "| group | width | kept |", "|---|---|---|"]
    lines += [f"| `{g}` | {v['width']} | {v['kept']} |" for g, v in r["policy"]["groups"].items()]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.2f} |" for s in r["stages"]]
    lines += ["", "## Versions", "", "```", json.dumps(r["versions"], indent=1), "```", ""]
    return "\n".join(lines)
