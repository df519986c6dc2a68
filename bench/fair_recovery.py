"""PW (performance-weighted) loss vs KD recovery: overall top-1, worst-class accuracy and the gap.

Meyer & Wong's claim (methods.md §8): recovering a pruned model with the PW loss keeps the classes
the unpruned model finds hard from paying for the cut, so the gap between the best and the worst
class is smaller at a similar overall accuracy. Checked here on the embedded digits ResNet-20
(real weights, 450 test images, about 45 a class): magnitude-L2 channel pruning at 50% and 70%
(the same plan for both losses), then the same number of steps of each recovery from the same
one-shot model, several seeds. Metrics on the test split in PyTorch (the engine computes the same
numbers; the pipeline's report does it through the engine).

    python bench/fair_recovery.py                 # ratios 0.5 0.7, 150 steps, seeds 0 1 2
    python bench/fair_recovery.py --quick         # one seed, 30 steps (smoke)

Writes ``bench/results/fair_recovery.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from pipeline.config import PruneConfig, RecoveryConfig  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from stages.evaluate import TorchRunner, class_gap, per_class_accuracy  # noqa: E402
from targets.ort.cpu import cpu_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.7])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "fair_recovery")
    a = ap.parse_args()
    if a.quick:
        a.steps, a.seeds = 30, [0]

    from stages.load.data import load_data
    from stages.load.models import ModelRequest, load_model
    from stages.model.graph import PruneGraph
    from stages.prune.apply import Pruner, PruneSettings
    from stages.prune.plan import make_plan, uniform_ratios
    from stages.recover import DistillSettings, distill
    from stages.score import CRITERIA, ScoreContext

    torch.manual_seed(0)
    lm = load_model(ModelRequest("example:digits-resnet"))
    data = load_data("digits", lm.input_shape)
    example = torch.zeros((2, *lm.input_shape))
    pc, rc = PruneConfig(), RecoveryConfig()
    work = copy.deepcopy(lm.module).eval()
    graph = PruneGraph(work, example)
    groups = graph.groups()
    scores = CRITERIA.get("magnitude-l2").result(ScoreContext(model=work, graph=graph, calib=data.calib)).scores
    pruner = Pruner(lm.module, example, data.calib, PruneSettings("magnitude-l2", pc.recalibrate_bn,
                                                                   pc.recalibrate_batches))

    def judged(model) -> dict:
        g = class_gap(per_class_accuracy(TorchRunner(model), data.test))
        n = sum(g["samples"].values())
        top1 = sum(g["accuracy"][k] * g["samples"][k] for k in g["accuracy"]) / n
        return {"top1": top1, "worst": g["worst"], "worst_class": g["worst_class"], "gap": g["gap"]}

    rows = [{"ratio": 0.0, "recovery": "dense", "seed": None, **judged(lm.module)}]
    print(f"dense: {rows[0]}", flush=True)
    for ratio in a.ratios:
        plan = make_plan(groups, scores, uniform_ratios(groups, ratio), pc.round_to,
                         meta={"criterion": "magnitude-l2", "prune_ratio": ratio})
        pruned = pruner.build(plan)
        rows.append({"ratio": ratio, "recovery": "one-shot", "seed": None, **judged(pruned)})
        for seed in a.seeds:
            for loss in ("kl", "pw"):  # interleaved: the same seed's two losses back to back
                s = DistillSettings(steps=a.steps, batch_size=rc.batch_size, lr=rc.lr, temperature=rc.temperature,
                                    alpha=rc.alpha, seed=seed, loss=loss, pw_min_weight=rc.pw_min_weight,
                                    pw_gamma=rc.pw_gamma)
                student = copy.deepcopy(pruned)
                t0 = time.perf_counter()
                distill(student, lm.module, data.train, s, True)
                row = {"ratio": ratio, "recovery": "KD" if loss == "kl" else "PW", "seed": seed,
                       "seconds": round(time.perf_counter() - t0, 1), **judged(student)}
                rows.append(row)
                print(row, flush=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "versions": {k: v for k, v in versions().items() if k in ("torch", "python")},
              "settings": {"steps": a.steps, "seeds": a.seeds, "criterion": "magnitude-l2", "round_to": pc.round_to,
                           "kd": {"temperature": rc.temperature, "alpha": rc.alpha},
                           "pw": {"min_weight": rc.pw_min_weight, "gamma": rc.pw_gamma}},
              "rows": rows}
    write_results(a.out, report, markdown)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [
        "# PW loss vs KD recovery: overall and worst-class accuracy (digits ResNet-20)",
        "",
        f"- Machine: {report['machine']}; date {report['date']}; torch {report['versions'].get('torch')}",
        f"- Same plan for both (magnitude-L2, uniform ratio, round_to {s['round_to']}); {s['steps']} steps from the "
        f"same one-shot model; seeds {', '.join(map(str, s['seeds']))}; KD T={s['kd']['temperature']:g}, "
        f"alpha={s['kd']['alpha']:g}; PW min_weight={s['pw']['min_weight']:g}, gamma={s['pw']['gamma']:g}",
        "- Test split, 450 images (about 45 a class: one image is 2.2 points of a class)",
        "",
        "| channels pruned | recovery | top-1 % (mean over seeds) | worst class % | gap best-worst (points) "
        "| per seed: top-1 / worst / gap |",
        "|---|---|---:|---:|---:|---|",
    ]
    rows = report["rows"]
    for key in dict.fromkeys((r["ratio"], r["recovery"]) for r in rows):
        rs = [r for r in rows if (r["ratio"], r["recovery"]) == key]
        m = {k: statistics.fmean(r[k] for r in rs) for k in ("top1", "worst", "gap")}
        per = "; ".join(f"{r['top1']:.2f} / {r['worst']:.2f} / {r['gap']:.2f}" for r in rs) if len(rs) > 1 else ""
        lines.append(f"| {100 * key[0]:.0f}% | {key[1]} | {m['top1']:.2f} | {m['worst']:.2f} | {m['gap']:.2f} | "
                     f"{per} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
