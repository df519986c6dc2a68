"""Pruning the digits DDPM U-Net (``example:digits-ddpm``): LD-Pruner (K-step and single-step), gradient flow and
magnitude at 1.5x and 2x measured speedup of one U-Net call on the ``cpu`` target.

1. **Widths.** For each speedup budget, a uniform channel ratio is bisected on the *measured* speedup of one
   U-Net call (batch 1, the magnitude plan, ORT, interleaved with the unpruned model). Every criterion then
   keeps the same widths, so the rows of one budget have the same architecture and the same latency; what
   differs is *which* channels stay.
2. **Criteria** (scores on the unpruned model): ``magnitude-l2``; ``ld-pruner`` on the final latents of
   K = 10 DDIM steps (16 samples, channels and residual blocks); ``ld-pruner`` single-step (one forward on
   16 calibration ``(x_t, t)`` pairs); ``gradient-flow`` on the denoising loss of the calibration pairs
   (timesteps uniform). The agreement of the two LD-Pruner rankings is reported (Spearman over all channels).
3. **Rows**: each criterion one-shot and after the same recovery budget (distillation from the unpruned U-Net,
   noise-prediction matching, ``--steps`` steps, seed 0); plus the gradient-flow soft phase that chooses which
   channels end at zero (``recovery.soft_steps`` = half the steps, option ``select``; the rest plain
   distillation), starting from the gradient-flow plan.
4. **Metrics** on the test split: ``fid-digits`` (450 samples, DDIM 20 steps, fixed seed; the digits
   classifier's features: a proxy for FID, not FID), the denoising MSE, LD-Pruner's latent statistic of the
   450 final samples against the unpruned model's (same seeds).
5. **Latency**: all recovered models and the unpruned one in one fresh ORT process, interleaved rounds, one
   thread, batch 1 and batch 8; a 20-step sampling run at batch 1 timed on the engines (interleaved).

    python bench/diffusion_pruning.py                 # both budgets, 300 recovery steps
    python bench/diffusion_pruning.py --speedups 1.5 --steps 100

Writes ``bench/results/diffusion_pruning.{json,md}`` and ``diffusion_samples_<budget>x.png``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from pipeline.report_generative import samples_png  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from stages.evaluate import TorchRunner, evaluate  # noqa: E402
from stages.evaluate.generative import SAMPLER_STEPS, generate, sampling_seconds  # noqa: E402
from stages.export import ExportSettings, export_onnx  # noqa: E402
from stages.load.inputs import load_inputs  # noqa: E402
from stages.load.models import ModelRequest  # noqa: E402
from stages.model.diffusion import frechet_distance, latent_statistic, sample_features  # noqa: E402
from stages.model.graph import PruneGraph, count_macs_params  # noqa: E402
from stages.prune.plan import apply_plan, make_plan, uniform_ratios  # noqa: E402
from stages.recover import RECOVERIES, DistillSettings, RecoveryJob  # noqa: E402
from stages.recover.soft import SoftSettings  # noqa: E402
from stages.score import CRITERIA, ScoreContext  # noqa: E402
from targets.base import MeasureSettings  # noqa: E402
from targets.ort.cpu import CpuTarget, cpu_name  # noqa: E402
from targets.ort.runner import OrtRunner  # noqa: E402

RESULTS = ROOT / "bench" / "results"
CRITERIA_RUN = (  # (label, criterion, options)
    ("magnitude", "magnitude-l2", {}),
    ("LD-Pruner K-step", "ld-pruner", {"steps": "10"}),
    ("LD-Pruner single-step", "ld-pruner", {"steps": "0", "blocks": False}),
    ("gradient flow", "gradient-flow", {}),
    ("Taylor (denoising loss)", "taylor", {}),
)
TIMING = MeasureSettings(threads=1, min_duration_s=0.4, warmup_s=0.2, min_iters=30)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--speedups", default="1.5,2")
    ap.add_argument("--steps", type=int, default=300, help="recovery steps (the same for every row)")
    ap.add_argument("--out", type=Path, default=RESULTS / "diffusion_pruning")
    ap.add_argument("--only", default="", help="comma-separated criterion labels to (re)run; the other rows of the "
                                                "existing results are kept (use with --ratios for the same widths)")
    ap.add_argument("--ratios", default="", help="BUDGET=RATIO,... use these uniform ratios instead of bisecting")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    lm, data = load_inputs(ModelRequest("example:digits-ddpm"), None, 0)
    example = torch.zeros((2, *lm.input_shape))
    t0 = time.perf_counter()
    run = [c for c in CRITERIA_RUN if not a.only or c[0] in a.only.split(",")]
    fixed = {float(k): float(v) for k, v in (kv.split("=") for kv in a.ratios.split(",") if kv)}
    old = json.loads(a.out.with_suffix(".json").read_text()) if a.only and a.out.with_suffix(".json").is_file() else {}
    kept = [r for r in old.get("rows", []) if r["criterion"] not in {c[0] for c in run} | {"unpruned"}]
    scores, score_meta = score_all(lm.module, example, data, run if fixed else
                                   [*run, *(c for c in CRITERIA_RUN if c[0] == "magnitude" and c not in run)])
    score_meta = {**old.get("scores", {}), **score_meta}
    test = data.test
    ref_feats = test.reference_features()
    base_samples = generate(TorchRunner(lm.module), test, len(test.images))

    def judged(model) -> dict:
        samples = generate(TorchRunner(model), test, len(test.images))
        return {"fid_digits": frechet_distance(sample_features(test, samples), ref_feats),
                "denoise_mse": -evaluate("denoise-loss", TorchRunner(model), test),
                "latent_statistic": latent_statistic(samples, base_samples), "_samples": samples[:32]}

    rows = [{"budget": None, "criterion": "unpruned", "recovery": "-", **judged(lm.module)}]
    searches = {}
    base_macs = count_macs_params(lm.module, example)[0]
    target = CpuTarget({})
    with tempfile.TemporaryDirectory(prefix="ddpm-bench-") as tmp:
        tmp = Path(tmp)
        for budget in (float(s) for s in a.speedups.split(",")):
            if budget in fixed:
                ratio, searches[budget] = fixed[budget], [{"ratio": fixed[budget], "given": True}]
            else:
                ratio, searches[budget] = ratio_for(lm.module, example, scores["magnitude"], budget, target, tmp)
            print(f"{budget}x: uniform ratio {ratio:.3f}", flush=True)
            models = {}
            groups = PruneGraph(copy.deepcopy(lm.module), example).groups()
            for label, _, _ in run:
                plan = make_plan(groups, scores[label], uniform_ratios(groups, ratio), None)
                oneshot = apply_plan(lm.module, example, plan)
                rows.append({"budget": budget, "criterion": label, "recovery": "one-shot", **judged(oneshot)})
                print(strip(rows[-1]), flush=True)
                for rec_label, soft in (("distill", None),) + ((("soft select", True),) if label == "gradient flow" else ()):
                    done, secs = recover(lm.module, oneshot, plan, example, data, a.steps, soft)
                    rows.append({"budget": budget, "criterion": label, "recovery": rec_label, "steps": a.steps,
                                 "recovery_s": round(secs, 1), "swapped": done.record.get("soft", {}).get("swapped_channels"),
                                 **judged(done.model)})
                    models[(label, rec_label)] = done.model
                    print(strip(rows[-1]), flush=True)
            timing = measure(lm.module, models, tmp / f"{budget}", target, test)
            macs = count_macs_params(next(iter(models.values())), example)[0]
            for r in rows:
                if r["budget"] == budget:
                    r.update(ratio=ratio, mac_reduction=base_macs / macs, **timing.get((r["criterion"], r["recovery"]), {}))
            grids = {"unpruned": rows[0]["_samples"][:16]}
            grids.update({f"{r['criterion']}\n{r['recovery']}": r["_samples"][:16] for r in rows if r["budget"] == budget})
            suffix = "" if len(run) == len(CRITERIA_RUN) else "_" + "_".join(c[1] for c in run)
            (RESULTS / f"diffusion_samples_{budget:g}x{suffix}.png").write_bytes(samples_png(grids, cols=4))
            write(a.out, rows + kept, score_meta, a.steps, time.perf_counter() - t0, searches)
    write(a.out, rows + kept, score_meta, a.steps, time.perf_counter() - t0, searches, echo=True)


def strip(row: dict) -> dict:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def score_all(model, example, data, criteria) -> tuple[dict, dict]:
    """Channel scores of ``criteria``, their cost and (both run) the K-step / single-step LD-Pruner agreement."""
    scores, meta = {}, {}
    for label, name, options in criteria:
        work = copy.deepcopy(model).eval()
        graph = PruneGraph(work, example)
        t0 = time.perf_counter()
        res = CRITERIA.get(name).result(ScoreContext(model=work, graph=graph, calib=data.calib, batch_size=16,
                                                     options=options, loss="features"))
        scores[label] = res.scores
        meta[label] = {"seconds": round(time.perf_counter() - t0, 1), "options": options,
                       "blocks": {k: round(v, 4) for k, v in (res.blocks or {}).items()}}
        print(f"scored {label} in {meta[label]['seconds']} s", flush=True)
    if not {"LD-Pruner K-step", "LD-Pruner single-step"} <= set(scores):
        return scores, meta
    k, one = (torch.cat([scores[lab][g] for g in sorted(scores[lab])]) for lab in ("LD-Pruner K-step", "LD-Pruner single-step"))
    meta["ld_agreement_spearman"] = spearman(k, one)
    meta["ld_agreement_per_group"] = {g: spearman(scores["LD-Pruner K-step"][g], scores["LD-Pruner single-step"][g])
                                      for g in sorted(scores["LD-Pruner K-step"])}
    return scores, meta


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = (t.argsort().argsort().double() for t in (a, b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()).clamp_min(1e-12))


def ratio_for(model, example, scores, budget: float, target, tmp: Path) -> tuple[float, list[dict]]:
    """The smallest uniform ratio whose measured one-call speedup (batch 1) reaches ``budget`` (bisection)."""
    groups = PruneGraph(copy.deepcopy(model), example).groups()
    base = engine(target, model, tmp / "base.onnx")
    lo, hi, seen = 0.0, 0.9, []
    for i in range(7):
        mid = (lo + hi) / 2
        pruned = apply_plan(model, example, make_plan(groups, scores, uniform_ratios(groups, mid), None))
        rec = target.measure([base, engine(target, pruned, tmp / f"probe{i}.onnx")], TIMING, rounds=3)
        seen.append({"ratio": mid, "speedup": rec[1]["ratio_to_first"]})
        lo, hi = (lo, mid) if seen[-1]["speedup"] >= budget else (mid, hi)
    best = min((s for s in seen if s["speedup"] >= budget), key=lambda s: s["ratio"], default=seen[-1])
    seen.append(best)
    return best["ratio"], seen


def engine(target, model, path: Path):
    export_onnx(model, (1025,), path, ExportSettings())
    return target.build(path, (1025,), path.parent)


def recover(teacher, oneshot, plan, example, data, steps: int, select: bool | None):
    settings = DistillSettings(steps=steps, batch_size=64, seed=0, loss="feature", task="features")
    soft = SoftSettings(steps // 2) if select else None
    job = RecoveryJob(teacher=teacher, pruned=oneshot, plan=plan, example_input=example, train=data.train,
                      calib=data.calib, settings=settings, labeled=True, soft=soft,
                      options={"select": True} if select else {})
    t0 = time.perf_counter()
    done = RECOVERIES.get("distill")(job)
    return done, time.perf_counter() - t0


def measure(base, models: dict, folder: Path, target, test) -> dict:
    """One-call latency (batch 1 and 8) of every model against the unpruned one, and a sampling run's time."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = list(models)
    engines = [engine(target, base, folder / "base.onnx")] + [engine(target, m, folder / f"m{i}.onnx")
                                                             for i, m in enumerate(models.values())]
    out = {k: {} for k in keys}
    for batch in (1, 8):
        recs = target.measure(engines, MeasureSettings(**{**TIMING.__dict__, "batch": batch}), rounds=5)
        for k, rec in zip(keys, recs[1:]):
            out[k][f"speedup_b{batch}"] = rec["ratio_to_first"]
            out[k][f"latency_ms_b{batch}"] = rec["latency_ms"]["median"]
        out.setdefault("_base", {})[f"latency_ms_b{batch}"] = recs[0]["latency_ms"]["median"]
    with contextlib.ExitStack() as stack:
        runners = [stack.enter_context(OrtRunner(e.onnx_path, threads=1)) for e in engines]
        secs = sampling_seconds(runners, test, repeats=5)
    for k, s in zip(keys, secs[1:]):
        out[k]["sampling_s"] = s
        out[k]["sampling_speedup"] = secs[0] / s
    for k in keys:  # one-shot rows have the recovered rows' architecture
        out.setdefault((k[0], "one-shot"), {kk: v for kk, v in out[k].items()})
    out[("unpruned", "-")] = {**out["_base"], "sampling_s": secs[0]}
    return out


def write(out: Path, rows: list[dict], score_meta: dict, steps: int, seconds: float, searches: dict,
          echo: bool = False) -> None:
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": cpu_name(),
              "versions": {k: v for k, v in versions().items() if k in ("torch", "python", "onnxruntime")},
              "settings": {"recovery_steps": steps, "sampler_steps": SAMPLER_STEPS, "timing_threads": 1,
                           "criteria": [list(c[:2]) + [c[2]] for c in CRITERIA_RUN]},
              "scores": score_meta, "wall_s": round(seconds, 1), "ratio_search": {f"{b:g}": v for b, v in searches.items()},
              "rows": [strip(r) for r in rows]}
    write_results(out, report, markdown, echo=echo)


def markdown(rep: dict) -> str:
    s = rep["scores"]
    lines = [
        "# Pruning the digits DDPM U-Net: LD-Pruner vs gradient flow vs magnitude",
        "",
        f"- Machine: {rep['machine']} (2 vCPU VM, shared); {rep['date']}; {rep['versions']}",
        "- Model: `example:digits-ddpm` (0.5 M parameters, 57 M MACs a call). Widths: one uniform ratio per budget, "
        "bisected on the measured speedup of one call (batch 1, ORT, 1 thread); every criterion keeps those widths.",
        f"- Metrics on the test split: `fid-digits` (450 samples, DDIM {rep['settings']['sampler_steps']} steps, "
        "fixed seed; Fréchet distance on the digits classifier's features: a proxy for FID, not FID; lower is "
        "better), denoising MSE, LD-Pruner's latent statistic vs the unpruned samples (same seeds; lower = closer).",
        f"- Recovery: {rep['settings']['recovery_steps']} steps of distillation from the unpruned U-Net "
        "(noise-prediction matching), seed 0, the same for every row; `soft select`: the gradient-flow soft phase "
        "over half of them chooses which channels end at zero, then plain distillation.",
        "- Speedups: interleaved rounds in one fresh process against the unpruned model; the sampling run is 20 "
        "DDIM steps at batch 1 on the engines (interleaved, median of 5).",
        f"- LD-Pruner K-step vs single-step channel rankings: Spearman {s['ld_agreement_spearman']:.3f} over all "
        f"channels; within a group median {statistics.median(s['ld_agreement_per_group'].values()):.2f} (from "
        f"{min(s['ld_agreement_per_group'].values()):.2f} to {max(s['ld_agreement_per_group'].values()):.2f}).",
        "- Scoring cost: " + ", ".join(f"{k} {v['seconds']} s" for k, v in s.items() if isinstance(v, dict)
                                        and "seconds" in v) + f"; whole bench {rep['wall_s']:.0f} s.",
        "",
        "| budget | criterion | recovery | fid-digits | denoise MSE | latent stat | MAC red. | speedup b1 | "
        "speedup b8 | 20-step run (s) | run speedup |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"

    for r in rep["rows"]:
        lines.append(f"| {f(r['budget'], 'g') + 'x' if r['budget'] else '-'} | {r['criterion']} | {r['recovery']} | "
                     f"{r['fid_digits']:.2f} | {r['denoise_mse']:.4f} | {r['latent_statistic']:.3f} | "
                     f"{f(r.get('mac_reduction'), '.2f')} | {f(r.get('speedup_b1'), '.2f')} | "
                     f"{f(r.get('speedup_b8'), '.2f')} | {f(r.get('sampling_s'), '.4f')} | "
                     f"{f(r.get('sampling_speedup'), '.2f')} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
