"""Transformers through the product's own stages: MiniLM at equal *measured* speedup, tiny-llama perplexity.

Writes ``bench/results/transformer_models.json`` and ``transformer_models.md`` (``--out DIR`` elsewhere)::

    python bench/transformer_models.py                      # both workloads (about 20 min on 2 cores)
    python bench/transformer_models.py --models tiny-llama  # one
    python bench/transformer_models.py --quick              # a smoke run (*.quick.* files, not committed)

**MiniLM** (``example:minilm``: the real all-MiniLM-L6-v2, the 245 shipped sentences, split 60/20/20,
metric ``cosine`` x 100 on the test sentences). Heads + FFN neurons of every layer are pruned
(residual width held). For each speedup budget (1.5x, 2x) the global prune ratio that reaches it is
found by bisection on *measured* speedup (ONNX Runtime CPU, batch 1, sequence 128, the candidate
timed in interleaved rounds with the unpruned model in one process, as the pipeline's candidates
are). Uniform ratios give every criterion the same widths, so magnitude, Wanda and STADE share that
ratio; SBPF's allocation (a per-group share of the ratio) has widths of its own, so it gets its own
bisection. Each plan is scored one-shot and after the same short recovery (``--recovery-steps``
of feature distillation, AdamW, as ``pipeline run`` recovers transformers).

**tiny-llama** (``example:tiny-llama``, perplexity on the held-out standard-library docstrings):
one-shot at 25% and 50% heads + FFN (magnitude, Wanda, STADE, STADE-W channel scores) and 50%
unstructured / 2:4 weight sparsity (the same four by their weight-level scores), plus the input
statistics behind STADE's claim: how far from zero the Linear inputs' means are.

Latency of each structured plan at batch 1 and batch 8 (sequence 128), each interleaved with the
unpruned model in one process. Quality is measured in PyTorch (the export parity gate keeps ONNX
Runtime within 1e-4 of it). The machine is named in the output.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from stages.evaluate import TorchRunner, evaluate, perplexity_of  # noqa: E402
from stages.export import ExportSettings, export_onnx  # noqa: E402
from stages.load.inputs import load_inputs  # noqa: E402
from stages.load.models import ModelRequest  # noqa: E402
from stages.model.calib import calib_inputs  # noqa: E402
from stages.model.graph import PruneGraph  # noqa: E402
from stages.model.masks import output_layer  # noqa: E402
from stages.prune.apply import Pruner, PruneSettings  # noqa: E402
from stages.prune.plan import make_plan, uniform_ratios  # noqa: E402
from stages.prune.sparsify import sparsify  # noqa: E402
from stages.recover.distill import DistillSettings, distill, loss_for  # noqa: E402
from stages.score import CRITERIA, ScoreContext  # noqa: E402
from stages.score.sbpf import allocated_keep_ratios  # noqa: E402
from targets import get_target  # noqa: E402
from targets.base import MeasureSettings, build_engine  # noqa: E402

MINILM_CRITERIA = ("magnitude-l2", "wanda", "stade", "sbpf")
LLAMA_CRITERIA = ("magnitude-l2", "wanda", "stade", "stadew")
MINILM_SPEEDUPS = (1.5, 2.0)
LLAMA_RATIOS = (0.25, 0.5)
LLAMA_PATTERNS = ("0.5", "2:4")
MAX_RATIO = 0.9


@dataclass
class Work:
    """One workload: the loaded model, its data and metric, a temp folder, the cpu target."""

    name: str
    lm: object
    data: object
    tmp: Path
    target: object
    quick: bool
    log: Callable[[str], None]

    @property
    def example(self) -> torch.Tensor:
        return torch.zeros((2, *self.lm.input_shape))

    def graph(self) -> PruneGraph:
        return PruneGraph(copy.deepcopy(self.lm.module), self.example)

    def score(self, criterion: str):
        model = copy.deepcopy(self.lm.module).eval()
        ctx = ScoreContext(model=model, graph=PruneGraph(model, self.example), calib=self.data.calib,
                           batches=2 if self.quick else 4, batch_size=16)
        return CRITERIA.get(criterion).result(ctx)

    def build(self, keep: dict[str, float], scores: dict, criterion: str) -> torch.nn.Module:
        groups = self.graph().groups()
        plan = make_plan(groups, scores, keep, round_to=None)
        return Pruner(self.lm.module, self.example, self.data.calib, PruneSettings(criterion)).build(plan)

    def quality(self, model: torch.nn.Module) -> float:
        return evaluate(self.data.metric, TorchRunner(model), self.data.test, batch_size=16)

    def timings(self, model: torch.nn.Module, batch: int, rounds: int) -> dict:
        """Baseline and ``model`` timed interleaved in one process: medians and the speedup."""
        paths = []
        for tag, m in (("base", self.lm.module), ("cand", model)):
            p = self.tmp / f"{self.name}-{tag}-{id(m)}.onnx"
            if not p.exists():
                export_onnx(m, self.lm.input_shape, p, ExportSettings())
            paths.append(p)
        engines = [build_engine(self.target, p, self.lm.input_shape, self.tmp) for p in paths]
        dur = 0.2 if self.quick else 0.6
        recs = self.target.measure(engines, MeasureSettings(batch=batch, warmup_s=0.2, min_duration_s=dur,
                                                            min_iters=10), rounds=rounds)
        return {"base_ms": recs[0]["latency_ms"]["median"], "ms": recs[1]["latency_ms"]["median"],
                "speedup": recs[1]["ratio_to_first"]}


def bisect_ratio(w: Work, make: Callable[[float], torch.nn.Module], speedup: float, steps: int) -> tuple[float, dict]:
    """The smallest global prune ratio whose plan reaches ``speedup`` (measured, batch 1)."""
    lo, hi = 0.0, MAX_RATIO
    best = (hi, w.timings(make(hi), 1, 3))
    if best[1]["speedup"] < speedup:
        return best
    for _ in range(steps):
        mid = (lo + hi) / 2
        t = w.timings(make(mid), 1, 3)
        w.log(f"  ratio {mid:.3f}: {t['speedup']:.2f}x")
        if t["speedup"] >= speedup:
            hi, best = mid, (mid, t)
        else:
            lo = mid
    return best


def _recovered(w: Work, model: torch.nn.Module, steps: int) -> torch.nn.Module:
    student = copy.deepcopy(model)
    distill(student, w.lm.module, w.data.train, DistillSettings(steps=steps, batch_size=16, seed=0,
                                                                 loss=loss_for(w.data.metric)), labeled=False)
    return student.eval()


def bench_minilm(w: Work, steps: int) -> list[dict]:
    graph = w.graph()
    groups = graph.groups()
    widths = {g.id: g.width for g in groups}
    scored = {}
    for c in MINILM_CRITERIA:
        t0 = time.time()
        scored[c] = (w.score(c), time.time() - t0)
        w.log(f"scored {c} in {scored[c][1]:.0f}s")
    rows = []
    bisect_steps = 3 if w.quick else 6
    for sp in MINILM_SPEEDUPS:
        uni = lambda r: w.build(uniform_ratios(groups, r), scored["magnitude-l2"][0].scores, "magnitude-l2")  # noqa: E731
        r_uni, t_uni = bisect_ratio(w, uni, sp, bisect_steps)
        w.log(f"{sp}x: uniform ratio {r_uni:.3f} ({t_uni['speedup']:.2f}x)")
        for c in MINILM_CRITERIA:
            res, secs = scored[c]
            if c == "sbpf" and res.allocation:
                def alloc(r, res=res, c=c):
                    return w.build(allocated_keep_ratios(res.allocation, widths, r, MAX_RATIO), res.scores, c)
                ratio, t = bisect_ratio(w, alloc, sp, bisect_steps)
                model = alloc(ratio)
            else:
                ratio, t = r_uni, t_uni
                model = w.build(uniform_ratios(groups, ratio), res.scores, c)
            rows.append({"model": "minilm", "budget": f"{sp}x", "criterion": c + (" (allocation)" if c == "sbpf"
                                                                                   else ""),
                         "prune_ratio": round(ratio, 4), "measured_speedup": round(t["speedup"], 3),
                         "oneshot": round(w.quality(model), 3),
                         "recovered": round(w.quality(_recovered(w, model, steps)), 3), "recovery_steps": steps,
                         "score_s": round(secs, 1), **latency_rows(w, model)})
            w.log(f"  {c}: one-shot {rows[-1]['oneshot']:.2f}, +{steps} steps {rows[-1]['recovered']:.2f}")
    return rows


def latency_rows(w: Work, model: torch.nn.Module) -> dict:
    out = {}
    for batch in (1, 8):
        t = w.timings(model, batch, 3)
        out[f"b{batch}_base_ms"], out[f"b{batch}_ms"], out[f"b{batch}_speedup"] = \
            round(t["base_ms"], 3), round(t["ms"], 3), round(t["speedup"], 3)
    return out


def input_mean_stats(w: Work) -> dict:
    """How far from zero the Linear inputs' means are: median over layers of mean_j |mu_j| / sigma_j."""
    from stages.model.calib import collect_input_stats

    stats = collect_input_stats(w.lm.module, calib_inputs(w.data.calib, 4))
    ratios = {}
    for name, s in stats.items():
        sigma = s.var.clamp_min(1e-12).sqrt()
        ratios[name] = float((s.mean.abs() / sigma).mean())
    vals = sorted(ratios.values())
    return {"layers": len(vals), "median_mean_over_std": round(vals[len(vals) // 2], 3) if vals else None,
            "max_mean_over_std": round(vals[-1], 3) if vals else None,
            "by_kind": {k: round(sum(v for n, v in ratios.items() if n.endswith(k)) /
                                 max(1, sum(1 for n in ratios if n.endswith(k))), 3)
                        for k in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}}


def bench_llama(w: Work) -> list[dict]:
    base_ppl = perplexity_of(100.0, w.data.test)
    rows = []
    groups = w.graph().groups()
    for c in LLAMA_CRITERIA:
        t0 = time.time()
        res = w.score(c)
        secs = time.time() - t0
        for r in LLAMA_RATIOS:
            model = w.build(uniform_ratios(groups, r), res.scores, c)
            score = w.quality(model)
            rows.append({"model": "tiny-llama", "setting": f"heads+FFN {int(100 * r)}%", "criterion": c,
                         "perplexity": round(perplexity_of(score, w.data.test), 3), "dense_perplexity":
                         round(base_ppl, 3), "score_s": round(secs, 1), **latency_rows(w, model)})
            w.log(f"{c} {r}: ppl {rows[-1]['perplexity']:.2f}")
    inputs = list(calib_inputs(w.data.calib, 4))
    head = output_layer(w.lm.module, inputs[0][:1])
    for c in LLAMA_CRITERIA:
        crit = "magnitude" if c == "magnitude-l2" else c
        for pattern in LLAMA_PATTERNS:
            masked, _, rep = sparsify(copy.deepcopy(w.lm.module), inputs, crit, pattern, ignore=(head,))
            score = w.quality(masked)
            rows.append({"model": "tiny-llama", "setting": "unstructured 50%" if pattern == "0.5" else pattern,
                         "criterion": crit, "perplexity": round(perplexity_of(score, w.data.test), 3),
                         "dense_perplexity": round(base_ppl, 3), "sparsity": round(rep["sparsity"], 4)})
            w.log(f"{crit} {pattern}: ppl {rows[-1]['perplexity']:.2f}")
    return rows


def machine() -> dict:
    import onnxruntime

    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    import os

    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "date": time.strftime("%Y-%m-%d")}


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Transformers: MiniLM at equal measured speedup, tiny-llama perplexity", "",
             f"Machine: {m['cpu']}, {m['cores']} vCPU; torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
             f"{m['date']}. Generated by `bench/transformer_models.py`; quality in PyTorch on the test split, latency "
             "through ONNX Runtime (cpu target), each pruned model interleaved with the unpruned one in one process.",
             ""]
    mini = [r for r in res["rows"] if r["model"] == "minilm"]
    if mini:
        lines += ["## MiniLM (all-MiniLM-L6-v2): heads + FFN, cosine x 100 to the unpruned embeddings", "",
                  "| budget | criterion | prune ratio | measured speedup (b1) | one-shot | + recovery | b1 ms | "
                  "b8 ms (speedup) | score s |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mini:
            lines.append(f"| {r['budget']} | {r['criterion']} | {r['prune_ratio']:.3f} | {r['measured_speedup']:.2f}x"
                         f" | {r['oneshot']:.2f} | {r['recovered']:.2f} ({r['recovery_steps']} steps) | "
                         f"{r['b1_base_ms']:.2f} → {r['b1_ms']:.2f} | {r['b8_base_ms']:.2f} → {r['b8_ms']:.2f} "
                         f"({r['b8_speedup']:.2f}x) | {r['score_s']:.0f} |")
    llama = [r for r in res["rows"] if r["model"] == "tiny-llama"]
    if llama:
        dense = llama[0]["dense_perplexity"]
        lines += ["", f"## tiny-llama: one-shot perplexity (dense {dense:.2f}, held-out docstrings)", "",
                  "| setting | criterion | perplexity | b1 ms (speedup) | b8 ms (speedup) |", "|---|---|---:|---:|---:|"]
        for r in llama:
            lat = (f"{r['b1_ms']:.2f} ({r['b1_speedup']:.2f}x) | {r['b8_ms']:.2f} ({r['b8_speedup']:.2f}x)"
                   if "b1_ms" in r else "dense runtime: no speedup | -")
            lines.append(f"| {r['setting']} | {r['criterion']} | {r['perplexity']:.2f} | {lat} |")
        st = res.get("tiny_llama_inputs")
        if st:
            lines += ["", f"Linear inputs of tiny-llama on the calibration windows: mean over features of |μ|/σ, "
                          f"median over {st['layers']} layers {st['median_mean_over_std']}, max "
                          f"{st['max_mean_over_std']}; by projection: "
                          + ", ".join(f"{k} {v}" for k, v in st["by_kind"].items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="minilm,tiny-llama")
    ap.add_argument("--recovery-steps", type=int, default=60)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    res = {"machine": machine(), "rows": []}
    log = lambda s: print(s, flush=True)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        target = get_target("cpu", {})
        for name in args.models.split(","):
            lm, data = load_inputs(ModelRequest(f"example:{name}"), None, 0)
            w = Work(name, lm, data, Path(tmp), target, args.quick, log)
            if name == "minilm":
                res["rows"] += bench_minilm(w, 4 if args.quick else args.recovery_steps)
            else:
                res["tiny_llama_inputs"] = input_mean_stats(w)
                res["rows"] += bench_llama(w)
    suffix = ".quick" if args.quick else ""
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"transformer_models{suffix}.json").write_text(json.dumps(res, indent=1) + "\n")
    (args.out / f"transformer_models{suffix}.md").write_text(markdown(res))
    print(markdown(res))
    return 0 if all(math.isfinite(r.get("oneshot", r.get("perplexity", 0.0))) for r in res["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
