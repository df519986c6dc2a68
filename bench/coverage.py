"""Coverage of torchvision's classification zoo (and Ultralytics YOLO) by the channel pruner: trace → plan → prune → export → ONNX parity →
measured speedup, one architecture at a time (random weights: structure and latency only, never quality).

For every architecture (the smallest of each family, plus the grouped-convolution ones): Torch-Pruning's
dependency graph through :class:`stages.model.graph.PruneGraph`, a magnitude-L2 plan at a uniform 40% cut
(``round_to`` 8), the pruned copy, an ONNX export and its parity with PyTorch on ONNX Runtime, then the unpruned
and pruned engines timed interleaved in one fresh process on the ``cpu`` target (batch 1, 3 rounds): MAC
reduction beside measured speedup. Each row ends as ``ok``, ``refused`` (the pipeline's one-line error, exit 2 in
a run) or ``crash`` (anything else: a bug to fix). This is the structural half of issue 13's coverage
benchmark; full ``pipeline run`` rows (search, recovery, verdict) are not in it.

    python bench/coverage.py                 # the default list, 64x64 inputs (224 where an arch needs it)
    python bench/coverage.py resnet18 swin_t # some of them

Writes ``bench/results/coverage.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.results_io import write_results  # noqa: E402
from core.errors import PipelineError  # noqa: E402
from pipeline.versions import versions  # noqa: E402
from stages.export import ExportSettings, check_parity, export_onnx  # noqa: E402
from stages.model.cost import macs_params  # noqa: E402
from stages.model.graph import PruneGraph  # noqa: E402
from stages.prune.plan import apply_plan, make_plan, uniform_ratios  # noqa: E402
from targets import get_target  # noqa: E402
from targets.base import MeasureSettings, build_engine  # noqa: E402
from targets.ort.cpu import cpu_name  # noqa: E402

RESULTS = ROOT / "bench" / "results"
ARCHS = {  # name: input side (64 unless the architecture needs more), constructor kwargs
    # alexnet / vgg: their adaptive pools (6x6, 7x7) are not a factor of a 64x64 input's feature map, which the
    # legacy ONNX exporter refuses (a one-line refusal in a run); at their own 224x224 they export
    "alexnet": (224, {}), "vgg11_bn": (224, {}), "squeezenet1_1": (64, {}), "googlenet": (64, {"aux_logits": False,
                                                                                             "init_weights": True}),
    "inception_v3": (96, {"aux_logits": False, "init_weights": True}), "densenet121": (64, {}),
    "resnet18": (64, {}), "resnet50": (64, {}), "wide_resnet50_2": (64, {}),
    "resnext50_32x4d": (64, {}), "resnext101_32x8d": (64, {}),
    "regnet_x_400mf": (64, {}), "regnet_y_400mf": (64, {}), "regnet_y_1_6gf": (64, {}),
    "mobilenet_v2": (64, {}), "mobilenet_v3_small": (64, {}), "mobilenet_v3_large": (64, {}),
    "mnasnet0_5": (64, {}), "efficientnet_b0": (64, {}), "efficientnet_v2_s": (64, {}),
    "shufflenet_v2_x0_5": (64, {}), "convnext_tiny": (64, {}),
    "vit_b_32": (64, {"image_size": 64}), "swin_t": (64, {}), "swin_v2_t": (64, {}),
    # model specs (through the pipeline's loaders): Ultralytics YOLO at 320x320, from the YAMLs it ships
    "ultralytics:yolov8n": (320, {}), "ultralytics:yolo11n": (320, {}), "ultralytics:yolov8n-cls": (224, {}),
    "ultralytics:yolo11n-cls": (224, {}), "ultralytics:yolov8s": (320, {}), "ultralytics:yolo11s": (320, {}),
    "torchvision:lraspp_mobilenet_v3_large": (128, {}), "torchvision:deeplabv3_mobilenet_v3_large": (128, {}),
    "torchvision:fcn_resnet50": (128, {}), "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn": (320, {}),
    # timm picks (random init): transformers at their own 224, CNNs at 128 (MobileViT: 256, a multiple of its patches)
    "timm:vit_tiny_patch16_224": (224, {}), "timm:deit_tiny_patch16_224": (224, {}),
    "timm:swin_tiny_patch4_window7_224": (224, {}), "timm:mobilevit_xxs": (256, {}), "timm:convnext_atto": (128, {}),
    "timm:efficientnet_b0": (128, {}), "timm:ghostnet_100": (128, {}), "timm:mobilenetv3_small_100": (128, {}),
    "timm:regnety_002": (128, {}), "timm:resnet18": (128, {}), "timm:efficientvit_b0": (128, {}),
    "timm:levit_128s": (224, {}), "timm:repvit_m0_9": (128, {}), "timm:fastvit_t8": (128, {}),
}
# maxvit_t (224x224) is not in the default list: Torch-Pruning's group enumeration warned "Maximum recursive depth reached"
# and grew past 14 GB in 8 minutes without finishing (killed); a run now refuses it after 120 s (graph.py)
RATIO = 0.4


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("archs", nargs="*", default=list(ARCHS))
    ap.add_argument("--out", type=Path, default=RESULTS / "coverage")
    ap.add_argument("--merge", action="store_true",
                    help="keep the rows of the existing results for the archs not rerun (each row keeps its date)")
    a = ap.parse_args()
    target = get_target("cpu", {})
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for arch in a.archs:
            rows.append({**one(arch, target, Path(tmp)), "date": now})
            print(rows[-1], flush=True)
    old = a.out.with_suffix(".json")
    if a.merge and old.is_file():
        before = json.loads(old.read_text())
        kept = [{"date": before["date"], **r} for r in before["rows"] if r["arch"] not in a.archs]
        rows = kept + rows
    rep = {"date": now, "machine": cpu_name(),
           "versions": {k: v for k, v in versions().items() if k in ("torch", "torchvision", "torch_pruning",
                                                                      "onnxruntime")},
           "ratio": RATIO, "rows": rows}
    write_results(a.out, rep, markdown)


def one(arch: str, target, tmp: Path) -> dict:
    import torchvision

    side, kwargs = ARCHS.get(arch, (64, {}))
    shape = (3, side, side)
    row: dict = {"arch": arch, "input": f"{side}x{side}"}
    t0 = time.perf_counter()
    stage = "build"
    try:
        torch.manual_seed(0)
        if ":" in arch:
            from stages.load.models import ModelRequest, load_model

            model = load_model(ModelRequest(arch, input_shape=shape)).module.eval()
        else:
            model = getattr(torchvision.models, arch)(**kwargs).eval()
        ex = torch.zeros(2, *shape)
        stage = "trace"
        graph = PruneGraph(model, ex)
        groups = graph.groups()
        row.update(groups=len(groups), grouped=sum(g.channel_groups > 1 for g in groups),
                   head_groups=sum(bool(g.heads) for g in groups))
        stage = "prune"
        plan = make_plan(groups, graph.importance("magnitude", p=2), uniform_ratios(groups, RATIO), 8)
        pruned = apply_plan(model, ex, plan)
        (m0, _), (m1, p1) = macs_params(model, shape), macs_params(pruned, shape)
        row.update(mac_ratio=round(m0 / max(m1, 1), 3), params_m=round(p1 / 1e6, 3))
        stage = "export"
        paths = [tmp / f"{arch}-base.onnx", tmp / f"{arch}-pruned.onnx"]
        for m, p in zip((model, pruned), paths):
            export_onnx(m, shape, p, ExportSettings())
        stage = "parity"
        engines = [build_engine(target, p, shape, tmp) for p in paths]
        with target.runner(engines[1]) as r:
            par = check_parity(pruned, r, torch.randn(2, *shape), 1e-3, 1e-3)
        row["parity_max_abs"] = max(v["max_abs"] for v in par.values())
        stage = "measure"
        recs = target.measure(engines, MeasureSettings(batch=1, warmup_s=0.1, min_duration_s=0.3, min_iters=10),
                              rounds=3)
        row.update(status="ok", speedup=round(recs[1]["ratio_to_first"], 3),
                   base_ms=round(recs[0]["latency_ms"]["median"], 3))
    except PipelineError as e:
        row.update(status="refused", stage=stage, reason=e.message[:200])
    except Exception as e:  # noqa: BLE001 - a crash is what this bench exists to find
        row.update(status="crash", stage=stage, reason=f"{type(e).__name__}: {str(e)[:180]}")
    row["seconds"] = round(time.perf_counter() - t0, 1)
    return row


def markdown(rep: dict) -> str:
    rows = rep["rows"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    n_ref = sum(r["status"] == "refused" for r in rows)
    lines = [
        "# Coverage: torchvision classification zoo and Ultralytics YOLO through trace → plan → prune → export → parity → measure",
        "",
        f"- Machine: {rep['machine']}; date {rep['date']}; {', '.join(f'{k} {v}' for k, v in rep['versions'].items())}",
        f"- Rows measured on: {', '.join(sorted({r.get('date', rep['date'])[:10] for r in rows}))} (same machine)",
        f"- Random weights (structure and latency only); magnitude-L2, uniform {100 * rep['ratio']:.0f}% cut, "
        "round_to 8; speedup: ORT CPU, unpruned and pruned interleaved in one fresh process, 3 rounds, batch 1",
        f"- **{n_ok} of {len(rows)} ok**, {n_ref} refused in one line (exit 2 in a run), "
        f"{len(rows) - n_ok - n_ref} crashed",
        "",
        "| arch | input | groups (grouped conv / heads) | status | MAC reduction | measured speedup | parity max abs "
        "| note |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for r in rows:
        g = f"{r.get('groups', '-')} ({r.get('grouped', 0)} / {r.get('head_groups', 0)})" if "groups" in r else "-"
        mac = f"{r['mac_ratio']:.2f}x" if r.get("mac_ratio") else "-"
        spd = f"{r['speedup']:.2f}x" if r.get("speedup") else "-"
        par = f"{r['parity_max_abs']:.1e}" if r.get("parity_max_abs") is not None else "-"
        note = f"{r.get('stage')}: {r.get('reason')}" if r["status"] != "ok" else ""
        lines.append(f"| {r['arch']} | {r['input']} | {g} | {r['status']} | {mac} | {spd} | {par} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
