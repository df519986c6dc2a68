"""C-SWAP's progressive procedure as a no-fine-tune pruner, against the largest uniform magnitude-L2 cut
that keeps the same floor, on the embedded digits ResNet-20 (real weights).

Both arms prune with **no fine-tuning** (one shot, BatchNorm statistics re-estimated on the
calibration split, as the pipeline's prune stage does) and hold the same floor, **1 point of
top-1** below the unpruned model on calibration data the arm did not train on:

- ``cswap``: criterion ``cswap`` with its defaults (``tolerance`` 1.0 on the held-out half of the
  calibration samples, checked with channels zeroed, no BN re-estimation), its plan pruned the way
  ``search: cswap`` prunes it (:func:`search.cswap.plan_widths`): exactly (``prune.round_to: 1``),
  and with the kept widths rounded *up* to multiples of 8 (the default ``round_to``), which
  removes only accepted channels.
- ``magnitude-l2 uniform``: the ``global`` search's idea without its budget: the largest uniform
  ratio on a 0.05 grid whose one-shot calibration top-1 stays within 1 point (``round_to`` 8, the
  default).

Columns: params, MACs, one-shot top-1 on the test split (PyTorch), and the speedup over the
unpruned model measured on the ``cpu`` target (ONNX Runtime CPU EP) by the pipeline's own timer
(``CpuTarget.measure``: every engine in one fresh process, interleaved rounds, speedup = median
over rounds of baseline round median / arm round median), once with 1 thread and once with the
default thread count (the physical cores).

    python bench/cswap_procedure.py                # about 3-5 minutes on 2 cores
    python bench/cswap_procedure.py --rounds 3     # shorter timing

Writes ``bench/results/cswap_procedure.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from pipeline.config import PruneConfig  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from targets.ort.cpu import cpu_name, physical_cores  # noqa: E402

RESULTS = ROOT / "bench" / "results"
FLOOR = 1.0  # points of top-1


class Bench:
    """The model, data and tools every arm shares; :meth:`arm` prunes, judges and records one arm."""

    def __init__(self) -> None:
        from stages.load.data import load_data
        from stages.load.models import ModelRequest, load_model
        from stages.model.graph import PruneGraph

        torch.manual_seed(0)
        self.lm = load_model(ModelRequest("example:digits-resnet"))
        self.data = load_data("digits", self.lm.input_shape)
        self.shape, self.example = tuple(self.lm.input_shape), torch.zeros((2, *self.lm.input_shape))
        self.pc = PruneConfig()
        self.work = copy.deepcopy(self.lm.module).eval()
        self.graph = PruneGraph(self.work, self.example)
        self.groups = self.graph.groups()
        self.total = sum(g.width for g in self.groups)
        self.arms: list[dict] = []
        self.load: dict[str, float] = {}  # 1-minute load average before each timing

    def macs_params(self, model) -> tuple[int, int]:
        from stages.model.cost import macs_params

        return macs_params(model, self.shape)

    def top1(self, model, split) -> float:
        from stages.evaluate import TorchRunner, evaluate

        return evaluate(self.data.metric, TorchRunner(model), split)

    def pruner(self, criterion: str):
        from stages.prune.apply import Pruner, PruneSettings

        return Pruner(self.lm.module, self.example, self.data.calib,
                      PruneSettings(criterion, self.pc.recalibrate_bn, self.pc.recalibrate_batches))

    def arm(self, name: str, model, plan, **extra) -> None:
        kept = sum(len(g.keep) for g in plan.groups)
        macs, params = self.macs_params(model)
        self.arms.append({"arm": name, "model": model, "channels_pruned": self.total - kept, "channels": self.total,
                          "params": params, "macs": macs, "calib_top1": self.top1(model, self.data.calib),
                          "test_top1": self.top1(model, self.data.test), **extra})
        print({k: v for k, v in self.arms[-1].items() if k != "model"}, flush=True)


def cswap_arms(b: Bench) -> dict:
    """C-SWAP's plan pruned as ``search: cswap`` prunes it, exactly and rounded up to 8; returns its options."""
    from search.cswap import proposal_keep_ratios
    from stages.model.graph import PruneGraph
    from stages.prune.plan import make_plan
    from stages.score import CRITERIA, ScoreContext

    t0 = time.perf_counter()
    cmodel = copy.deepcopy(b.lm.module).eval()
    res = CRITERIA.get("cswap").result(ScoreContext(model=cmodel, graph=PruneGraph(cmodel, b.example),
                                                    calib=b.data.calib, options={"tolerance": FLOOR}))
    score_s = time.perf_counter() - t0
    pr = b.pruner("cswap")
    meta = {k: res.meta.get(k) for k in ("critical", "neutral", "detrimental", "accepted", "heldout_base",
                                          "heldout_final", "heldout_samples", "scoring_samples", "evaluations",
                                          "undone_chunks", "swapped_in", "kept_by_swap", "stopped")}
    plan = make_plan(b.groups, res.scores, proposal_keep_ratios(b.groups, res.proposal, 1), 1)
    b.arm("cswap, round_to 1 (exact)", pr.build(plan), plan, score_s=round(score_s, 1), procedure=meta,
          test_top1_no_bn_reestimation=b.top1(_zeroed(b.lm.module, b.example, plan), b.data.test))
    r = b.pc.round_to
    plan8 = make_plan(b.groups, res.scores, proposal_keep_ratios(b.groups, res.proposal, r), r)
    b.arm(f"cswap, round_to {r} (rounded up)", pr.build(plan8), plan8)
    return res.options


def magnitude_arm(b: Bench, step: float, base_calib: float) -> list[dict]:
    """The largest uniform magnitude-L2 ratio on the grid whose one-shot calibration top-1 keeps the floor."""
    from stages.prune.plan import make_plan, uniform_ratios
    from stages.score import CRITERIA, ScoreContext

    mag = CRITERIA.get("magnitude-l2").result(ScoreContext(model=b.work, graph=b.graph, calib=b.data.calib)).scores
    pm = b.pruner("magnitude-l2")
    scan, best = [], None
    for i in range(1, int(round(0.9 / step)) + 1):
        r = round(i * step, 4)
        p = make_plan(b.groups, mag, uniform_ratios(b.groups, r), b.pc.round_to)
        m = pm.build(p)
        acc = b.top1(m, b.data.calib)
        scan.append({"ratio": r, "calib_top1": acc, "within_floor": base_calib - acc <= FLOOR + 1e-9})
        if scan[-1]["within_floor"]:
            best = (r, p, m)
    print(f"magnitude-l2 scan: {[(x['ratio'], round(x['calib_top1'], 2)) for x in scan]}", flush=True)
    if best is not None:
        b.arm(f"magnitude-l2 uniform {best[0]:.2f}", best[2], best[1], ratio=best[0])
    return scan


def measure(b: Bench, rounds: int, duration: float) -> dict:
    """Every arm with the unpruned model, interleaved in one fresh process (``CpuTarget.measure``), once per
    thread setting (1 and the physical cores); returns ``{threads: records}``, the unpruned model first."""
    from stages.export import ExportSettings, export_onnx
    from targets.base import MeasureSettings
    from targets.ort.cpu import CpuTarget

    target = CpuTarget({})
    timing = {}
    with tempfile.TemporaryDirectory(prefix="cswap-bench-") as tmp:
        engines = []
        for i, mod in enumerate([b.lm.module] + [x["model"] for x in b.arms]):
            path = Path(tmp) / f"m{i}.onnx"
            export_onnx(mod, b.shape, path, ExportSettings())
            engines.append(target.build(path, b.shape, Path(tmp)))
        for th in sorted({1, physical_cores()}):
            b.load[str(th)] = round(os.getloadavg()[0], 2)
            timing[th] = target.measure(engines, MeasureSettings(threads=th, min_duration_s=duration), rounds=rounds)
            print(f"threads {th}: " + ", ".join(f"{r['latency_ms']['median']:.3f} ms" for r in timing[th]), flush=True)
    return timing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per thread setting")
    ap.add_argument("--duration", type=float, default=0.5, help="seconds per engine per round (at least)")
    ap.add_argument("--step", type=float, default=0.05, help="grid of the uniform magnitude-L2 ratio")
    ap.add_argument("--out", type=Path, default=RESULTS / "cswap_procedure")
    a = ap.parse_args()

    t_start = time.perf_counter()
    b = Bench()
    base_calib, base_test = b.top1(b.lm.module, b.data.calib), b.top1(b.lm.module, b.data.test)
    base_macs, base_params = b.macs_params(b.lm.module)
    options = cswap_arms(b)
    scan = magnitude_arm(b, a.step, base_calib)
    timing = measure(b, a.rounds, a.duration)
    ths = sorted(timing)
    for i, x in enumerate(b.arms, 1):
        x.pop("model")
        x["speedup"] = {str(th): timing[th][i]["ratio_to_first"] for th in ths}
        x["latency_ms"] = {str(th): timing[th][i]["latency_ms"]["median"] for th in ths}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "measured_on": {str(th): timing[th][0]["measured_on"] for th in ths},
              "versions": {k: v for k, v in versions().items() if k in ("torch", "python", "onnxruntime")},
              "settings": {"floor_points": FLOOR, "step": a.step, "round_to": b.pc.round_to, "rounds": a.rounds,
                           "duration_s": a.duration, "threads": ths, "cswap_options": options,
                           "calib_samples": len(b.data.calib), "test_samples": len(b.data.test)},
              "baseline": {"params": base_params, "macs": base_macs, "calib_top1": base_calib, "test_top1": base_test,
                           "latency_ms": {str(th): timing[th][0]["latency_ms"]["median"] for th in ths},
                           "latency_cv": {str(th): timing[th][0]["latency_ms"]["cv"] for th in ths},
                           "load_average": b.load},
              "arms": b.arms, "magnitude_scan": scan, "wall_s": round(time.perf_counter() - t_start, 1)}
    write_results(a.out, report, markdown)


def _zeroed(model, example, plan):
    """The plan applied without BN re-estimation (what C-SWAP's held-out check sees)."""
    from stages.prune.plan import apply_plan

    return apply_plan(model, example, plan)


def markdown(report: dict) -> str:
    s, b = report["settings"], report["baseline"]
    th = [str(t) for t in s["threads"]]
    cs = next((x for x in report["arms"] if "procedure" in x), None)
    lines = [
        "# C-SWAP's procedure (no fine-tuning) vs the largest uniform magnitude-L2 cut within the same floor",
        "",
        f"- Machine: {report['machine']}; date {report['date']}; torch {report['versions'].get('torch')}, "
        f"onnxruntime {report['versions'].get('onnxruntime')}; wall {report['wall_s']:.0f} s",
        "- Embedded digits ResNet-20 (real weights); no fine-tuning anywhere: one-shot prune, BN statistics "
        "re-estimated on the calibration split (the pipeline's prune stage)",
        f"- Floor: {s['floor_points']:g} point of top-1. C-SWAP checks it on the held-out half of its calibration "
        f"samples ({cs['procedure']['heldout_samples'] if cs else '?'} images, channels zeroed, no BN "
        f"re-estimation); magnitude-L2 on the whole calibration split ({s['calib_samples']} images) after BN "
        f"re-estimation, ratios on a {s['step']:g} grid, round_to {s['round_to']}",
        f"- Test top-1 on {s['test_samples']} test images (PyTorch). Speedup: ORT CPU EP, all engines "
        f"interleaved in one fresh process, {s['rounds']} rounds x >= {s['duration_s']:g} s, median of per-round "
        f"ratios, with {' and with '.join(th)} thread(s); unpruned median "
        + ", ".join(f"{b['latency_ms'][t]:.3f} ms ({t} thr, CV {100 * b['latency_cv'][t]:.0f}%, load average "
                    f"{b.get('load_average', {}).get(t, float('nan')):.1f} before)" for t in th)
        + ". A CV far above 10% means other work shared the cores: that column is noise-limited",
        "",
        "| arm | channels pruned | params | MACs | test top-1 % | calib top-1 % | "
        + " | ".join(f"speedup ({t} thr)" for t in th) + " |",
        "|---|---:|---:|---:|---:|---:|" + "---:|" * len(th),
        f"| unpruned | 0 / {cs['channels'] if cs else '?'} | {b['params'] / 1e6:.3f} M | {b['macs'] / 1e6:.1f} M | "
        f"{b['test_top1']:.2f} | {b['calib_top1']:.2f} | " + " | ".join("1.00x" for _ in th) + " |",
    ]
    for x in report["arms"]:
        lines.append(f"| {x['arm']} | {x['channels_pruned']} / {x['channels']} | {x['params'] / 1e6:.3f} M "
                     f"({x['params'] / b['params']:.2f}) | {x['macs'] / 1e6:.1f} M ({x['macs'] / b['macs']:.2f}) | "
                     f"{x['test_top1']:.2f} | {x['calib_top1']:.2f} | "
                     + " | ".join(f"{x['speedup'][t]:.2f}x" for t in th) + " |")
    if cs:
        p = cs["procedure"]
        lines += ["", f"C-SWAP: {p['critical']} critical, {p['neutral']} neutral, {p['detrimental']} detrimental "
                      f"channels; accepted {p['accepted']} in {p['evaluations']} held-out evaluations "
                      f"({p['undone_chunks']} chunks undone, {p['swapped_in']} channels swapped back in), stopped on "
                      f"{p['stopped']}; held-out {p['heldout_base']:.2f} -> {p['heldout_final']:.2f}; scoring took "
                      f"{cs['score_s']:.0f} s. Its plan without BN re-estimation scores "
                      f"{cs['test_top1_no_bn_reestimation']:.2f} % test top-1."]
    scan = report["magnitude_scan"]
    lines += ["", "Magnitude-L2 scan (calibration top-1, one-shot): "
              + ", ".join(f"{x['ratio']:.2f}: {x['calib_top1']:.2f}{'' if x['within_floor'] else ' (x)'}"
                          for x in scan)]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
