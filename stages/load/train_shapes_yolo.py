"""Train ``example:shapes-yolo``: Ultralytics' YOLOv8n (its shipped ``yolov8n.yaml``, 3 classes) from scratch on the
generated shapes dataset (:mod:`stages.load.shapes`) with Ultralytics' own trainer, deterministically (seed 0,
``deterministic=True``, CPU, no dataloader workers). The weights ship in ``stages/load/weights/``; this script is
how they were made and how to reproduce them::

    python -m stages.load.train_shapes_yolo --out stages/load/weights/shapes_yolov8n.pt

What ships: the best checkpoint's model (Ultralytics' EMA weights, by its validation fitness) as a float16
``state_dict`` (loaded with ``weights_only=True``, no pickle), and a JSON record beside it: the settings, wall time
and Ultralytics' validator's mAP@0.5 and mAP@0.5:0.95 on the val and test splits.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from stages.load.shapes import SIZE, write_shapes

SETTINGS = {"model": "yolov8n.yaml", "epochs": 40, "imgsz": SIZE, "batch": 32, "seed": 0, "optimizer": "auto",
            "close_mosaic": 10}


def train(work: Path, settings: dict = SETTINGS) -> tuple[dict, dict]:
    """(the trained model's float16 state_dict, the record)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    from ultralytics import YOLO

    data = write_shapes(work / "shapes")
    t0 = time.time()
    model = YOLO(settings["model"])
    model.train(data=str(data), epochs=settings["epochs"], imgsz=settings["imgsz"], batch=settings["batch"],
                device="cpu", workers=0, seed=settings["seed"], deterministic=True, plots=False, amp=False,
                optimizer=settings["optimizer"], close_mosaic=settings["close_mosaic"], pretrained=False,
                project=str(work / "runs"), name="shapes", exist_ok=True, verbose=False)
    wall = time.time() - t0
    best = YOLO(str(work / "runs" / "shapes" / "weights" / "best.pt"))
    scores = {}
    for split in ("val", "test"):
        m = best.val(data=str(data), split=split, imgsz=settings["imgsz"], batch=32, device="cpu", plots=False,
                     verbose=False, project=str(work / "runs"), name=f"val-{split}", exist_ok=True)
        scores[split] = {"map50": round(float(m.box.map50), 4), "map50_95": round(float(m.box.map), 4)}
    net = best.model.float().eval()
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    record = {"settings": settings, "wall_s": round(wall, 1), "ultralytics_validator": scores,
              "classes": list(net.names.values()), "params": sum(p.numel() for p in net.parameters()),
              "torch": torch.__version__}
    return state, record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "weights" / "shapes_yolov8n.pt")
    ap.add_argument("--work", type=Path, default=None, help="where the dataset and Ultralytics' run go (default: tmp)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        state, record = train(a.work or Path(tmp))
    torch.save(state, a.out)
    a.out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
