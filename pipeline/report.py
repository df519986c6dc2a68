"""``report.json`` (the contract), ``report.md`` and its plots; the constraint verdict.

Plots (matplotlib, Agg, written next to ``report.md``):

- ``pareto.png``: accuracy vs measured latency of every candidate, the baseline and the chosen point;
- ``keep_ratios.png``: the chosen keep ratio of every prunable group, one bar per group;
- ``lut_calibration.png`` (only when the search used a latency LUT): the LUT's leave-one-out
  prediction vs the measured full-model latency, with the y = x line and the error in the title.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from core.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from core.stats import Interval
from pipeline.config import RunConfig
from pipeline.report_generative import generative_lines
from pipeline.report_recovery import PLOT, recovery_lines, recovery_png, recovery_section
from pipeline.settings import allowed_drop
from pipeline.versions import versions
from search.budget import Budgets, Observed, verdict
from stages.evaluate import EVALUATORS, format_score, metric_info, perplexity_of

INCONCLUSIVE_ADVICE = ("the machine was too noisy to decide: quiet it (no other jobs), pin the measurement to cores "
                       "(taskset, measure.threads), or raise measure.verdict_cap_s")
FLOOR_ADVICE = ("to keep the accuracy floor: more final recovery (--recovery-steps), a criterion that keeps more "
                "at this cut (`pipeline criteria`; {criteria}), a smaller speedup, or a larger "
                "--max-accuracy-drop")
FLOOR_CRITERIA = {"fid-digits": "taylor, measured best on the digits U-Net (docs/results.md)",
                  "denoise-loss": "taylor, measured best on the digits U-Net (docs/results.md)"}
BUDGET_ADVICE = ("to reach the budget: let the search go further (tune.max_candidates, tune.time_limit_s, "
                 "prune.max_ratio), or check that the target turns fewer channels into less time "
                 "(bench/speedup_realization.py); --target-option and measure.threads change what is timed")

CSWAP_BUDGET_ADVICE = ("search cswap prunes only what C-SWAP's procedure accepted and does not chase the budget: let "
                       "the procedure go further (--criterion-option tolerance=..., max_fraction, patience=0), or "
                       "use a search that chases it (--search global or greedy, e.g. with --criterion magnitude-l2); "
                       "odd widths (prune.round_to: 1) may not turn into less time on this target "
                       "(bench/cswap_procedure.py)")


def floor_advice(metric: str) -> str:
    """What to try when the accuracy floor broke: the criteria named fit the metric."""
    return FLOOR_ADVICE.format(criteria=FLOOR_CRITERIA.get(metric, "wanda, stade or sbpf"))


def _advice(status: str, budgets: Budgets, observed: Observed, budget_advice: str = BUDGET_ADVICE) -> str | None:
    """What to try next: for an inconclusive verdict, or for each kind of budget that was missed."""
    if status == "inconclusive":
        return INCONCLUSIVE_ADVICE
    if status == "met":
        return None
    out = []
    if not budgets.resources_met(observed):
        out.append(budget_advice)
    if not budgets.accuracy_met(observed.accuracy):
        out.append(floor_advice(observed.metric))
    return "; ".join(out) or None


def constraints_section(cfg: RunConfig, base: dict, final: dict, speedup: float, measured: dict | None = None,
                        synthetic: bool = False) -> dict:
    """report.json's ``constraints``: every budget checked against the final measurement by the one
    :func:`search.budget.verdict`, with the sentence per violation, the verdict (``met`` / ``not_met`` /
    ``inconclusive``), the intervals it was decided on and the noise warnings.

    ``speedup`` is the median over measuring processes of each one's median per-round ratio; ``measured``
    (``final.json``) carries its interval and the final latency's (:mod:`pipeline.final_measure`).
    """
    c = cfg.constraints
    measured = measured or {}
    drop = allowed_drop(cfg, synthetic)
    budgets = Budgets(c.latency_ms, c.memory_mb, drop,
                      base.get("accuracy") if final.get("accuracy") is not None else None, speedup=c.speedup)
    metric = final.get("accuracy_metric") or "accuracy"
    unit = EVALUATORS.get(metric).unit if metric in EVALUATORS else "%"
    ivs = {k: Interval(**v) for k, v in (measured.get("intervals") or {}).items()}
    latency = ivs["latency_ms"].estimate if "latency_ms" in ivs else final["latency_ms"]["median"]
    observed = Observed(latency, final["memory_mb"], speedup, final.get("accuracy"), metric, unit, intervals=ivs,
                        level=cfg.measure.verdict_level)
    v = verdict(budgets, observed, baseline_ms=base["latency_ms"]["median"])
    warnings = noise_warnings(final, measured, cfg.measure.cv_warn)
    return {"latency_ms": c.latency_ms, "speedup": c.speedup, "memory_mb": c.memory_mb,
            "max_accuracy_drop": drop, "floor": _floor_state(c, drop, synthetic), "met": v.met, "verdict": v.status,
            "violations": v.violations, "undecided": v.undecided,
            "advice": _advice(v.status, budgets, observed,
                              CSWAP_BUDGET_ADVICE if cfg.search == "cswap" and not cfg.policy else BUDGET_ADVICE),
            "intervals": {k: iv.to_json() for k, iv in ivs.items()},
            "accuracy_intervals": measured.get("accuracy_intervals"), "warnings": warnings}


def _floor_state(c, drop: float | None, synthetic: bool) -> str:
    """Why the accuracy floor is on or off (report.json ``constraints.floor``)."""
    if drop is not None:
        return "on"
    if synthetic and c.max_accuracy_drop is not None:
        return "off: random inputs (set --max-accuracy-drop to judge agreement on them anyway)"
    return "off"


def noise_warnings(final: dict, measured: dict, cv_warn: float) -> list[str]:
    """A high CV of the final latency (per call) or of the per-round ratios, every time it happens."""
    out = []
    cv = final["latency_ms"].get("cv") or 0.0
    if cv > cv_warn:
        out.append(f"the final latency's CV is {100 * cv:.1f}% (> {100 * cv_warn:.0f}%): the machine was noisy")
    rcv = measured.get("ratio_cv") or 0.0
    if rcv > cv_warn / 2:
        out.append(f"the per-round speedups vary by {100 * rcv:.1f}% (CV > {100 * cv_warn / 2:.1f}%): the machine was "
                   "noisy; the interval says how much that matters")
    return out


def build_report(state: Any) -> dict:
    cfg: RunConfig = state.cfg
    base, final = state.final["baseline"], state.final["final"]
    speedup = state.final.get("speedup") or base["latency_ms"]["median"] / final["latency_ms"]["median"]
    cons = constraints_section(cfg, base, final, speedup, state.final, getattr(state.data, "synthetic", False))
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
        "metric": metric_section(state, base, final),
        "policy": {"file": "policy.json", "groups": {g.id: {"width": g.width, "kept": len(g.keep),
                                                             "keep_ratio": round(len(g.keep) / g.width, 4)}
                                                      for g in state.plan.groups}},
        "candidates": rescaled_candidates(tune.get("candidates", []), base["latency_ms"]["median"]),
        "tune": {"stop_reason": tune.get("stop_reason"), "budgets": tune.get("budgets"),
                 "evaluations": tune.get("evaluations"),  # full-model measurements the search made
                 "uniform": tune.get("uniform"),
                 "lut_calibration": tune.get("lut_calibration"),
                 "cswap": tune.get("cswap"),  # search: cswap: how far the procedure got, what its plan costs
                 # search: sensitivity: which path won, both recovered calibration metrics, where each landed
                 "sensitivity": {k: v for k, v in (tune.get("sensitivity") or {}).items() if k != "damage"} or None},
        "plots": {"pareto": "pareto.png", "keep_ratios": "keep_ratios.png",
                  "lut_calibration": "lut_calibration.png" if _lut_points(tune.get("lut_calibration")) else None},
        "stages": [{"name": r.name, "status": r.status, "seconds": round(r.seconds, 3)} for r in state.records],
        "versions": versions(),
        "sparsity": sparsity_section(state),
        "per_class": state.final.get("per_class"),  # top1 with labels: per-class accuracy, worst class, gap
        "recovery": recovery_section(state),  # method, phase, swaps, loss / metric curve (recovery.png)
        "generative": state.final.get("generative"),  # diffusion models: fid-digits, MSE, sampling time, samples.png
    }


def rescaled_candidates(cands: list[dict], baseline_ms: float) -> list[dict]:
    """Candidates with ``latency_ms`` on the final baseline's scale (baseline median / the candidate's measured
    speedup), so they compare with report.json's ``baseline`` and ``final``; the search-time value stays as
    ``search_latency_ms``."""
    out = []
    for c in cands:
        c = dict(c)
        if c.get("speedup"):
            c["search_latency_ms"] = c.get("latency_ms")
            c["latency_ms"] = baseline_ms / c["speedup"]
        out.append(c)
    return out


def metric_section(state: Any, base: dict, final: dict) -> dict | None:
    """What ``accuracy`` and the floor are in (name, unit, direction); for ``perplexity`` also the perplexities
    themselves on the test split."""
    name = final.get("accuracy_metric")
    if name not in EVALUATORS:
        return None
    out = metric_info(name)
    if out["name"] == "perplexity" and final.get("accuracy") is not None:
        out["perplexity"] = {k: round(perplexity_of(m["accuracy"], state.data.test), 4)
                             for k, m in (("baseline", base), ("final", final)) if m.get("accuracy") is not None}
    return out


def sparsity_section(state: Any) -> dict | None:
    """Weight sparsity achieved in the final model when ``prune.sparsity`` masked it, else None."""
    path = Path(state.run_dir) / "masks.pt"
    if not path.is_file() or state.pruned is None:
        return None
    import torch

    from stages.model.masks import MaskSpec, sparsity_report

    saved = torch.load(path, weights_only=True)
    rep = sparsity_report(state.pruned, layers=list(saved["pruned"]), spec=MaskSpec.parse(saved["pattern"]))
    dense = [n for n, m in state.pruned.named_modules() if n not in saved["pruned"]
             and isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    return {"pattern": saved["pattern"], "criterion": saved["criterion"], "sparsity": rep["sparsity"],
            "model_sparsity": rep["model_sparsity"], "masked_layers": len(saved["pruned"]), "dense_layers": dense,
            "nm_ok": all(v.get("nm_ok", True) for v in rep["layers"].values()), "note": rep["speedup_note"]}


def _lut_points(cal: dict | None) -> list[dict]:
    return [p for p in (cal or {}).get("points") or [] if p.get("measured_ms") and p.get("predicted_ms")]


def write_report(run_dir: Path, report: dict) -> None:
    report = {**report, "stages": report["stages"] + [{"name": "report", "status": "ok", "seconds": 0.0}]}
    report.setdefault("plots", {"pareto": "pareto.png", "keep_ratios": "keep_ratios.png", "lut_calibration": None})
    atomic_write_json(run_dir / "report.json", report)
    atomic_write_bytes(run_dir / "pareto.png", pareto_png(report))
    atomic_write_bytes(run_dir / "keep_ratios.png", keep_ratios_png(report))
    rec_png = recovery_png(report, _figure, _png)
    if rec_png is not None:
        atomic_write_bytes(run_dir / PLOT, rec_png)
    else:
        (run_dir / PLOT).unlink(missing_ok=True)
    if report["plots"].get("lut_calibration"):
        atomic_write_bytes(run_dir / "lut_calibration.png", lut_calibration_png(report))
    else:  # a rerun without a LUT must not leave an old plot that the report no longer describes
        (run_dir / "lut_calibration.png").unlink(missing_ok=True)
    atomic_write_text(run_dir / "report.md", markdown(report))


def _figure(width: float, height: float):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110)


def _png(fig) -> bytes:
    import io

    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def keep_ratios_png(report: dict) -> bytes:
    """The chosen keep ratio (kept / original channels) of every prunable group, one bar per group."""
    from search.families import natural_key

    groups = report["policy"]["groups"]
    ids = sorted(groups, key=natural_key)
    fig = _figure(max(6.4, 0.32 * len(ids) + 2.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ratios = [groups[g]["kept"] / groups[g]["width"] for g in ids]
    bars = ax.bar(range(len(ids)), ratios, color="#6b7fa8")
    for b, g in zip(bars, ids):
        ax.annotate(f"{groups[g]['kept']}/{groups[g]['width']}", (b.get_x() + b.get_width() / 2, b.get_height()),
                    ha="center", va="bottom", fontsize=6, rotation=90, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(ids)))
    ax.set_xticklabels(ids, rotation=90, fontsize=7)
    ax.set_ylim(0, 1.18)
    ax.set_ylabel("keep ratio (kept / original channels)")
    uniform = " (uniform per family)" if (report.get("tune") or {}).get("uniform") else ""
    ax.set_title(f"{report['model']}: kept channels per group, search {report.get('search')}{uniform}", fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


def lut_caption(cal: dict) -> str:
    """One line on how well the LUT predicted the full measurements (the honest, leave-one-out error first)."""
    def pct(x: float | None) -> str:
        return "n/a" if x is None else f"{100 * x:.1f}%"

    raw, add = cal.get("raw") or {}, cal.get("additive_raw")
    what = (f"MAC cost model (search: {cal.get('search', 'sensitivity')})" if cal.get("model") == "macs"
            else f"LUT ({cal.get('model')})")
    return (f"{what} vs {cal.get('n')} full-model measurements: leave-one-out error mean "
            f"{pct(cal.get('mean_abs_rel_err'))}, max {pct(cal.get('max_abs_rel_err'))} (calibrated a + b·prediction, "
            f"each point predicted by a fit on the others); uncalibrated mean {pct(raw.get('mean_abs_rel_err'))}"
            + ("" if add is None else f"; additive model uncalibrated mean {pct(add.get('mean_abs_rel_err'))}"))


def lut_calibration_png(report: dict) -> bytes:
    """LUT-predicted vs measured full-model latency, with the y = x line; the error in the title."""
    cal = report["tune"]["lut_calibration"]
    pts = _lut_points(cal)
    fig = _figure(5.6, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    meas = [p["measured_ms"] for p in pts]
    loo = [p["predicted_ms"] for p in pts]
    raw = [p.get("raw_ms") for p in pts]
    if all(r is not None for r in raw):
        ax.scatter(meas, raw, s=26, facecolors="none", edgecolors="#999999", label="uncalibrated prediction")
    ax.scatter(meas, loo, s=30, c="#d62728", label="calibrated, leave-one-out")
    vals = [v for v in (*meas, *loo, *(r for r in raw if r is not None))]
    lo, hi = min(vals), max(vals)
    pad = 0.05 * (hi - lo or hi or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], ls="--", c="#444444", lw=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_xlabel(f"measured full-model latency, ms ({report['target']})")
    ax.set_ylabel("LUT-predicted latency, ms")
    loo_err = cal.get("mean_abs_rel_err")
    raw_err = (cal.get("raw") or {}).get("mean_abs_rel_err")
    ax.set_title(f"LUT calibration ({cal.get('model')} model, {cal.get('n')} full measurements)\nleave-one-out mean error "
                 f"{'n/a' if loo_err is None else f'{100 * loo_err:.1f}%'}, uncalibrated "
                 f"{'n/a' if raw_err is None else f'{100 * raw_err:.1f}%'}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return _png(fig)


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
    numbered = [(i, c) for i, c in enumerate(report["candidates"], 1) if c.get("accuracy") is not None]
    if numbered:
        # each candidate's in-process speedup, placed on the final measurement's scale, so that
        # machine drift between the search and the verdict does not shift the points
        xs = [base_ms / c["speedup"] if c.get("speedup") else c["latency_ms"] for _, c in numbered]
        ys = [c["accuracy"] for _, c in numbered]
        ax.scatter(xs, ys, s=28, c="#6b7fa8", label="candidates (calib split; # as in report.md)")
        for (i, _), x, y in zip(numbered, xs, ys):  # the same number as the candidates table
            ax.annotate(str(i), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7, color="#44557a")
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
    if c.get("max_accuracy_drop") is not None and b.get("accuracy") is not None:
        ax.axhline(b["accuracy"] - c["max_accuracy_drop"], ls=":", c="#d62728", lw=1, label="accuracy floor")
    ax.set_xlabel(f"measured median latency, ms ({report['target']}; candidates via their measured speedup)")
    ax.set_ylabel(f"{f.get('accuracy_metric') or 'accuracy'} ({(report.get('metric') or {}).get('unit', '%')})")
    ax.set_title(f"{report['model']}: accuracy vs measured latency", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _ms(m: dict) -> str:
    return f"{m['latency_ms']['median']:.3f}"


def _verdict_line(c: dict) -> str:
    status = c.get("verdict") or ("met" if c["met"] else "not_met")
    if status == "met":
        line = "**Constraints met.** Verdict: met (exit 0)."
    elif status == "not_met":
        line = ("**Constraints NOT met:** " + "; ".join(c["violations"]) + " (verdict: not met, exit 1)" +
                (f"\n\nNext: {c['advice']}" if c.get("advice") else ""))
    else:
        line = ("**Verdict: inconclusive** (exit 3): " + "; ".join(c.get("undecided") or []) +
                (("; also: " + "; ".join(c["violations"])) if c["violations"] else "") + f". {c.get('advice') or ''}")
    warnings = "".join(f"\n\n> ⚠ {w}" for w in c.get("warnings") or [])
    return line + warnings


def _interval_lines(r: dict) -> list[str]:
    c = r["constraints"]
    lines = []
    for key, what, unit in (("speedup", "speedup", "x"), ("latency_ms", "final latency (median of round medians)",
                                                             " ms")):
        iv = (c.get("intervals") or {}).get(key)
        if iv:
            lines.append(f"- {what}: {iv['estimate']:.3f}{unit}, {100 * iv['level']:.1f}% interval "
                         f"[{iv['low']:.3f}, {iv['high']:.3f}]{unit} over {iv['n']} measuring processes "
                         f"({iv['method']})")
    acc = c.get("accuracy_intervals")
    if acc:
        lines.append("- accuracy on the finite test split, 95% Wilson intervals: " + "; ".join(
            f"{k} {v['estimate']:.2f}% [{v['low']:.2f}, {v['high']:.2f}] (n={v['n']})" for k, v in acc.items()))
    return lines


def _cswap_lines(cs: dict | None) -> list[str]:
    """``search: cswap``: what C-SWAP's procedure accepted, what was pruned, what it bought (no search)."""
    if not cs:
        return []
    spd = f"{cs['speedup']:.2f}x measured speedup" if cs.get("speedup") else "no measured speedup"
    met = {True: "met", False: "**not met** (reported, not chased)", None: "-"}[cs.get("budgets_met")]
    inexact = f" Groups whose width differs from the plan (whole heads): {', '.join(cs['inexact'])}." \
        if cs.get("inexact") else ""
    pruned = "" if cs.get("pruned") == cs["accepted"] else \
        f", {cs.get('pruned')} pruned (kept widths rounded up to prune.round_to {cs.get('round_to')})"
    return [f"C-SWAP's progressive procedure (no search, no fine-tuning) accepted {cs['accepted']} of "
            f"{cs['channels']} channels ({100 * cs['fraction']:.1f}%){pruned}: {spd}; resource budgets "
            f"{met}.{inexact}", ""]


def _per_class_lines(pc: dict | None) -> list[str]:
    """Per-class test accuracy before and after, the worst class and the best-to-worst gap (fairness)."""
    if not pc:
        return []
    b, f = pc["baseline"], pc["final"]
    lines = ["", "## Per class (test split, through the engine)", "",
             f"Worst class: baseline `{b['worst_class']}` {b['worst']:.2f}%, final `{f['worst_class']}` "
             f"{f['worst']:.2f}%; gap best - worst: {b['gap']:.2f} -> {f['gap']:.2f} points.", "",
             "| class | samples | baseline % | final % | change |", "|---|---:|---:|---:|---:|"]
    lines += _accuracy_rows(b, f)
    if b.get("groups") and f.get("groups"):
        bg, fg = b["groups"], f["groups"]
        lines += ["", "### Per group (the data source's test_groups)", "",
                  f"Worst group: baseline `{bg['worst_class']}` {bg['worst']:.2f}%, final `{fg['worst_class']}` "
                  f"{fg['worst']:.2f}%; gap best - worst: {bg['gap']:.2f} -> {fg['gap']:.2f} points.", "",
                  "| group | samples | baseline % | final % | change |", "|---|---:|---:|---:|---:|"]
        lines += _accuracy_rows(bg, fg)
    return lines


def _accuracy_rows(b: dict, f: dict) -> list[str]:
    rows = []
    for k, n in b["samples"].items():
        x, y = b["accuracy"][k], f["accuracy"].get(k)
        rows.append(f"| {k} | {n} | {x:.2f} | {'-' if y is None else f'{y:.2f}'} | "
                    f"{'' if y is None else f'{y - x:+.2f}'} |")
    return rows


def _metric_lines(m: dict | None) -> list[str]:
    if not m:
        return []
    lines = [f"- metric: `{m['name']}` in {m['unit']} ({m['summary']}); the accuracy floor is read in this unit"]
    ppl = m.get("perplexity")
    if ppl:
        lines.append("- perplexity on the test split: " + ", ".join(f"{k} {v:.3f}" for k, v in ppl.items()))
    return lines


def markdown(r: dict) -> str:
    b, f, c = r["baseline"], r["final"], r["constraints"]
    verdict_line = _verdict_line(c)

    def acc(m: dict) -> str:
        return format_score(m.get("accuracy_metric") or "", m.get("accuracy"))

    unit = (r.get("metric") or {}).get("unit", "%")
    drop_unit = "pts" if unit == "%" else f"({unit})"
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
        f"- speedup: **{r['speedup']:.2f}x**: the median over measuring processes of each one's median per-round "
        "ratio (baseline round median / final round median, interleaved rounds); not the ratio of the two medians "
        "in the table below, which come from the last measuring process",
        *_interval_lines(r),
        f"- measured on: {f['measured_on']}",
        *_metric_lines(r.get("metric")),
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
        lines.append(f"| {f['accuracy_metric']} drop | <= {c['max_accuracy_drop']:.2f} {drop_unit} | "
                     f"{r['accuracy_drop']:.2f} {drop_unit} |")
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
    lines += _per_class_lines(r.get("per_class"))
    lines += recovery_lines(r.get("recovery"), (r.get("metric") or {}).get("name"))
    lines += generative_lines(r.get("generative"))
    lines += ["", "## Search", "", f"Stop reason: {r['tune'].get('stop_reason')}", ""]
    lines += _cswap_lines((r.get("tune") or {}).get("cswap"))
    lines += ["![accuracy vs measured latency](pareto.png)", ""]
    if r["candidates"]:
        lines += ["Candidates were measured during the search, interleaved with the unpruned model; "
                  "`speedup` is that in-process ratio, `latency ms` is the final baseline median divided by it.", "",
                  "`#` is the order of evaluation and the point's label in pareto.png.", "",
                  "| # | prune ratio | speedup | latency ms | memory MB | MMACs | calib acc one-shot | calib acc recovered "
                  "| chosen |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for i, cd in sorted(enumerate(r["candidates"], 1), key=lambda x: x[1]["prune_ratio"]):
            rec = f"{cd['accuracy']:.2f}" if cd.get("recovered") else "-"
            one = f"{cd['accuracy_oneshot']:.2f}" if cd.get("accuracy_oneshot") is not None else "-"
            spd = f"{cd['speedup']:.2f}x" if cd.get("speedup") else "-"
            lines.append(f"| {i} | {cd['prune_ratio']:.3f} | {spd} | {cd['latency_ms']:.3f} | {cd['memory_mb']:.1f} | "
                         f"{cd['macs'] / 1e6:.1f} | {one} | {rec} | {'**yes**' if cd.get('accepted') else ''} |")
    cal = (r.get("tune") or {}).get("lut_calibration")
    if (r.get("plots") or {}).get("lut_calibration") and cal:
        lines += ["", "### Latency LUT", "", "![LUT-predicted vs measured latency](lut_calibration.png)", "",
                  f"*{lut_caption(cal)}.*"]
    lines += ["", "## Kept width per group", ""]
    if (r.get("tune") or {}).get("uniform"):
        lines += ["Uniform widths (`--uniform`): every member of a family keeps the same number of channels.", ""]
    lines += ["![keep ratio per group](keep_ratios.png)", "", "| group | width | kept |", "|---|---|---|"]
    lines += [f"| `{g}` | {v['width']} | {v['kept']} |" for g, v in r["policy"]["groups"].items()]
    lines += ["", "## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']:.2f} |" for s in r["stages"]]
    lines += ["", "## Versions", "", "```", json.dumps(r["versions"], indent=1), "```", ""]
    return "\n".join(lines)
