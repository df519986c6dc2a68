"""DPM and MaskPrune against hard prune + KD, at equal final widths (the same plan) and an equal step budget.

Workloads (real weights, all offline):

- ``digits``: the embedded digits ResNet-20, magnitude-L2, uniform 50% and 70% of the channels
  (round_to 8); top-1, worst class and the best-to-worst gap on the 450 test images;
- ``minilm``: all-MiniLM-L6-v2, STADE scores, 50% of the heads and FFN neurons of every layer;
  ``cosine`` x 100 to the unpruned embeddings on the held-out sentences;
- ``tiny-llama``: the trained tiny LLaMA, STADE, 50% heads + FFN; perplexity on its test text.

Rows per plan: the one-shot model (no recovery: what STADE alone gives), hard prune + KD, DPM
(``recovery.soft_steps`` = half the steps decaying, then KD), MaskPrune (half the steps learning the
masks, then KD). All recoveries take the same number of steps from the same start, seed 0. On a
uniform plan the widths are MaskPrune's own (one width per family), so "greedy ``--uniform`` at the
same widths" is the KD row: at fixed uniform widths that search reduces to the criterion's plan + KD.

    python bench/recovery_methods.py                  # all three workloads
    python bench/recovery_methods.py --models digits --steps 150

Writes ``bench/results/recovery_methods.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from stages.evaluate import TorchRunner, class_gap, evaluate, per_class_accuracy  # noqa: E402
from stages.load.inputs import load_inputs  # noqa: E402
from stages.load.models import ModelRequest  # noqa: E402
from stages.model.graph import PruneGraph  # noqa: E402
from stages.prune.apply import Pruner, PruneSettings  # noqa: E402
from stages.prune.plan import make_plan, uniform_ratios  # noqa: E402
from stages.recover import RECOVERIES, DistillSettings, RecoveryJob  # noqa: E402
from stages.recover.distill import loss_for  # noqa: E402
from stages.score import CRITERIA, ScoreContext  # noqa: E402
from targets.ort.cpu import cpu_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORKLOADS = {  # name: (criterion, ratios, round_to, batch size, default steps)
    "digits": ("magnitude-l2", (0.5, 0.7), 8, 64, 150),
    "minilm": ("stade", (0.5,), None, 16, 100),
    "tiny-llama": ("stade", (0.5,), None, 16, 100),
}
METHODS = (("distill", {}), ("dpm", {}), ("maskprune", {}), ("maskprune", {"bind": 0.3}))  # + a sensitivity row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="digits,minilm,tiny-llama")
    ap.add_argument("--steps", type=int, default=0, help="recovery steps (0: the workload's default)")
    ap.add_argument("--out", type=Path, default=RESULTS / "recovery_methods")
    a = ap.parse_args()
    names = a.models.split(",")
    old = a.out.with_suffix(".json")  # rows of workloads not rerun are kept
    rows = [r for r in json.loads(old.read_text())["rows"] if r["model"] not in names] if old.is_file() else []
    for name in names:
        rows += bench(name, a.steps)
        write(a.out, rows)
    print(markdown(report_of(rows)))


def bench(name: str, steps: int) -> list[dict]:
    criterion, ratios, round_to, batch, default_steps = WORKLOADS[name]
    steps = steps or default_steps
    torch.manual_seed(0)
    lm, data = load_inputs(ModelRequest("example:digits-resnet" if name == "digits" else f"example:{name}"),
                           "digits" if name == "digits" else None, 0)
    example = torch.zeros((2, *lm.input_shape))
    work = copy.deepcopy(lm.module).eval()
    graph = PruneGraph(work, example)
    groups = graph.groups()
    scores = CRITERIA.get(criterion).result(ScoreContext(model=work, graph=graph, calib=data.calib,
                                                         batch_size=16)).scores
    pruner = Pruner(lm.module, example, data.calib, PruneSettings(criterion))

    def judged(model) -> dict:
        if data.metric == "top1":
            g = class_gap(per_class_accuracy(TorchRunner(model), data.test))
            n = sum(g["samples"].values())
            top1 = sum(g["accuracy"][k] * g["samples"][k] for k in g["accuracy"]) / n
            return {"quality": top1, "worst": g["worst"], "gap": g["gap"]}
        return {"quality": evaluate(data.metric, TorchRunner(model), data.test, batch_size=16)}

    out = [{"model": name, "metric": data.metric, "ratio": 0.0, "method": "dense", **judged(lm.module)}]
    print(out[-1], flush=True)
    for ratio in ratios:
        plan = make_plan(groups, scores, uniform_ratios(groups, ratio), round_to, meta={"criterion": criterion})
        oneshot = pruner.build(plan)
        out.append({"model": name, "metric": data.metric, "ratio": ratio, "method": f"one-shot {criterion}",
                    **judged(oneshot)})
        print(out[-1], flush=True)
        settings = DistillSettings(steps=steps, batch_size=batch, seed=0, loss=loss_for(data.metric))
        for method, options in METHODS:  # the same start, seed and step budget
            job = RecoveryJob(teacher=lm.module, pruned=oneshot, plan=plan, example_input=example, train=data.train,
                              calib=data.calib, settings=settings, labeled=data.labeled, phase_steps=steps // 2,
                              scores=scores, options=options)
            t0 = time.perf_counter()
            done = RECOVERIES.get(method)(job)
            phase = done.record.get("phase") or {}
            widths = sorted({(len(g.keep), g.width) for g in done.plan.groups})
            out.append({"model": name, "metric": data.metric, "ratio": ratio,
                        "method": {"distill": "hard prune + KD"}.get(method, method)
                        + "".join(f" ({k} {v})" for k, v in options.items()), "steps": steps,
                        "seconds": round(time.perf_counter() - t0, 1),
                        "swapped": phase.get("swapped", phase.get("swapped_channels")),
                        "widths": [f"{k}/{w}" for k, w in widths], **judged(done.model)})
            print(out[-1], flush=True)
    return out


def report_of(rows: list[dict]) -> dict:
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
            "versions": {k: v for k, v in versions().items() if k in ("torch", "python")},
            "settings": {"workloads": {k: {"criterion": v[0], "ratios": v[1], "round_to": v[2], "batch_size": v[3]}
                                       for k, v in WORKLOADS.items()},
                         "dpm": dict(RECOVERIES.get("dpm").params), "maskprune": dict(RECOVERIES.get("maskprune").params),
                         "phase_steps": "half of the steps", "seed": 0},
            "rows": rows}


def write(out: Path, rows: list[dict]) -> None:
    write_results(out, report_of(rows), markdown, echo=False)


def markdown(rep: dict) -> str:
    lines = [
        "# Recovery methods at equal widths and steps: hard prune + KD vs DPM vs MaskPrune",
        "",
        f"- Machine: {rep['machine']}; date {rep['date']}; torch {rep['versions'].get('torch')}; seed 0 (one run each)",
        "- Same plan for every row of a block (the criterion's uniform plan); DPM and MaskPrune spend half the steps "
        "before the hard removal, then KD; the others KD all the steps",
        f"- DPM options {rep['settings']['dpm']}; MaskPrune options {rep['settings']['maskprune']}",
        "- digits: top-1 % on 450 test images (one image = 0.22 points; a class has about 45); minilm: cosine x 100 "
        "to the unpruned embeddings; tiny-llama: the perplexity metric, 100 - % perplexity increase (higher is "
        "better; -75 = perplexity 2.75x the dense model's)",
        "- seconds: wall time of the recovery; the first digits row ran beside another job (the others on a quiet "
        "machine)",
        "",
        "| model | pruned | method | quality | worst class % | gap | swapped | steps | seconds |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rep["rows"]:
        q, worst, gap = (f"{r[k]:.2f}" if r.get(k) is not None else "-" for k in ("quality", "worst", "gap"))
        lines.append(f"| {r['model']} | {100 * r['ratio']:.0f}% | {r['method']} | {q} | {worst} | "
                     f"{gap} | {r.get('swapped') if r.get('swapped') is not None else '-'} | "
                     f"{r.get('steps', '-')} | {r.get('seconds', '-')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
