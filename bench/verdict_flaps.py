"""Does the verdict flap? The same run's final verdict repeated on this machine while a busy loop loads a core.

One run of the embedded default (``pipeline run``, or ``--run-dir`` of an existing run) gives the
unpruned ``baseline.onnx`` and the pruned ``model.onnx``. Each repetition then judges that one pair
twice, interleaved, each in fresh measuring processes (the cpu target's own):

- **point rule** (what the verdict was before: one call of ``final_rounds`` interleaved rounds, the
  median per-round ratio against the budget: met or not met);
- **interval rule** (the pipeline's verdict now, :func:`pipeline.final_measure.measure_until_decided`:
  the order-statistic interval of the median over measuring processes of each one's median round
  ratio; more processes until it clears the budget or the cap is hit; undecided at the cap:
  inconclusive). ``--unit`` names what the interval's draws were in the results (the first version
  drew rounds, kept in ``verdict_flaps_round_unit.md``).

Budgets: the run's own (``--speedup`` of the run, 2.0 by default) and a *knife edge*, the
median speedup a first calibration measured (the hardest case: the true value sits on the budget).
A *flip* is a repetition whose met / not-met differs from the previous decided one; the goal is no
met <-> not-met flip for the interval rule; noise may only move a repetition to inconclusive.

The load: ``--load-cores`` processes spinning in Python (default 1 of the 2 cores), started
before the first repetition and stopped after the last. The measurement uses the run's settings
(ONNX Runtime threads as configured; none pinned).

    python bench/verdict_flaps.py                       # default run, 10 repetitions per budget
    python bench/verdict_flaps.py --run-dir runs/x --repeats 12 --cap 120

Writes ``bench/results/verdict_flaps.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from core.stats import median_interval  # noqa: E402
from pipeline.config import RunConfig  # noqa: E402
from pipeline.final_measure import FinalSettings, Pooled, measure_until_decided  # noqa: E402
from pipeline.orchestrate import saved_config  # noqa: E402
from pipeline.settings import measure_settings  # noqa: E402
from search.budget import Budgets, Observed, verdict  # noqa: E402
from targets.ort.cpu import CpuTarget, cpu_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def _spin(stop) -> None:  # a busy core
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


def default_run(out: Path) -> Path:
    """One ``pipeline run`` of the embedded default into ``out`` (its exit code does not matter here)."""
    if not (out / "model.onnx").is_file():
        subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--out", str(out), "--overwrite"], cwd=ROOT,
                       check=False)
    if not (out / "model.onnx").is_file():
        raise SystemExit(f"the run in {out} wrote no model.onnx; see its logs/pipeline.log")
    return out


def run_config(run_dir: Path) -> RunConfig:
    return RunConfig.model_validate(saved_config(run_dir))


def point_rule(measure, budget: float, rounds: int) -> dict:
    pool = Pooled()
    pool.add(measure(rounds))
    sp = pool.speedup  # one call: the median per-round ratio
    return {"speedup": sp, "verdict": "met" if sp >= budget else "not_met", "rounds": len(pool.ratios)}


def interval_rule(measure, budget: float, fs: FinalSettings) -> dict:
    t0 = time.monotonic()
    pool = measure_until_decided(measure, Budgets(None, None, None, None, speedup=budget), fs)
    ivs = pool.intervals(fs.level)
    v = verdict(Budgets(None, None, None, None, speedup=budget),
                Observed(pool.records[1]["latency_ms"]["median"], None, pool.speedup, intervals=ivs, level=fs.level))
    iv = ivs["speedup"]
    return {"speedup": pool.speedup, "verdict": v.status, "rounds": len(pool.ratios), "calls": pool.calls,
            "low": iv.low, "high": iv.high, "level": iv.level, "cv": pool.ratio_cv(),
            "seconds": round(time.monotonic() - t0, 1)}


def flips(verdicts: list[str]) -> int:
    """Met <-> not-met changes between consecutive decided repetitions (inconclusive ones skipped)."""
    decided = [v for v in verdicts if v != "inconclusive"]
    return sum(a != b for a, b in zip(decided, decided[1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run-dir", type=Path, default=None, help="an existing run folder (default: run the default)")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cap", type=float, default=None, help="verdict_cap_s (default: the run's)")
    ap.add_argument("--load-cores", type=int, default=1)
    ap.add_argument("--out", type=Path, default=RESULTS / "verdict_flaps")
    a = ap.parse_args()

    run_dir = a.run_dir or default_run(ROOT / "runs" / "bench-verdict-flaps")
    cfg = run_config(run_dir)
    target = CpuTarget(dict(cfg.target_options))
    load = next(s for s in json.loads((run_dir / "manifest.json").read_text())["stages"] if s["name"] == "load")
    shape = tuple(load["metrics"]["input_shape"])
    work = run_dir / "flaps"
    work.mkdir(exist_ok=True)
    engines = [target.build(run_dir / "baseline.onnx", shape, work), target.build(run_dir / "model.onnx", shape, work)]
    ms = measure_settings(cfg)
    fs = FinalSettings(rounds=cfg.measure.final_rounds, cap_s=cfg.measure.verdict_cap_s if a.cap is None else a.cap,
                       level=cfg.measure.verdict_level)

    def measure(rounds: int):
        return target.measure(engines, ms, rounds=rounds)

    stop = mp.Event()
    load = [mp.Process(target=_spin, args=(stop,), daemon=True) for _ in range(a.load_cores)]
    for p in load:
        p.start()
    try:
        calib = [point_rule(measure, 1.0, fs.rounds)["speedup"] for _ in range(3)]
        edge = round(statistics.median(calib), 3)
        budgets = {"run's budget": float(cfg.constraints.speedup or 2.0), "knife edge": edge}
        rows = {k: {"budget": b, "point": [], "interval": []} for k, b in budgets.items()}
        for i in range(a.repeats):
            for name, b in budgets.items():
                rows[name]["point"].append(point_rule(measure, b, fs.rounds))
                rows[name]["interval"].append(interval_rule(measure, b, fs))
                print(f"[{i + 1}/{a.repeats}] {name} {b:.3f}x: point {rows[name]['point'][-1]['verdict']} "
                      f"({rows[name]['point'][-1]['speedup']:.3f}x), interval {rows[name]['interval'][-1]['verdict']} "
                      f"({rows[name]['interval'][-1]['low']:.3f}-{rows[name]['interval'][-1]['high']:.3f}x)",
                      flush=True)
    finally:
        stop.set()
        for p in load:
            p.join(5)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "run_dir": str(run_dir), "load_cores": a.load_cores, "repeats": a.repeats, "unit": "calls",
              "settings": {"final_rounds": fs.rounds, "cap_s": fs.cap_s, "level": fs.level,
                           "threads": ms.threads, "duration_s": ms.min_duration_s},
              "calibration_speedups": calib, "budgets": rows}
    for r in rows.values():
        for rule in ("point", "interval"):
            vs = [x["verdict"] for x in r[rule]]
            r[f"{rule}_summary"] = {"met": vs.count("met"), "not_met": vs.count("not_met"),
                                    "inconclusive": vs.count("inconclusive"), "flips": flips(vs),
                                    "speedup_interval_of_medians": median_interval([x["speedup"] for x in r[rule]])
                                    .to_json()}
    write_results(a.out, report, markdown)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# Verdict flapping: the same pruned model judged again and again (cpu target)",
        "",
        f"- Machine: {report['machine']}; {report['load_cores']} core(s) loaded by a busy loop the whole time",
        f"- Date: {report['date']}; run folder `{Path(report['run_dir']).name}` (the embedded default, "
        f"`pipeline run`)",
        f"- Point rule: one call of {s['final_rounds']} interleaved rounds, median per-round ratio vs the budget. "
        f"Interval rule (the pipeline's verdict): {s['final_rounds']} rounds per call, more calls until the "
        f"{100 * s['level']:.0f}% order-statistic interval of the median over **{report.get('unit', 'calls')}** "
        f"clears the budget, cap {s['cap_s']:g} s, else inconclusive",
        "- Calibration (3 point-rule calls before the repetitions): "
        + ", ".join(f"{x:.3f}x" for x in report["calibration_speedups"]),
        "",
        "| budget | rule | repetitions | met | not met | inconclusive | met↔not-met flips | speedups seen "
        "| mean seconds |",
        "|---|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for name, r in report["budgets"].items():
        for rule in ("point", "interval"):
            su, xs = r[f"{rule}_summary"], r[rule]
            sps = [x["speedup"] for x in xs]
            secs = statistics.fmean(x.get("seconds", 0.0) for x in xs) if rule == "interval" else None
            lines.append(f"| {name} {r['budget']:.3f}x | {rule} | {len(xs)} | {su['met']} | {su['not_met']} | "
                         f"{su['inconclusive']} | **{su['flips']}** | {min(sps):.3f}-{max(sps):.3f}x | "
                         f"{'' if secs is None else f'{secs:.0f}'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
