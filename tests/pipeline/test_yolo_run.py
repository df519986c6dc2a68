"""`pipeline run` on Ultralytics YOLO models: the run folder's model.onnx has Ultralytics' layout and loads in its own
`YOLO()`; the shipped shapes detector is scored by mAP on its labelled data; refusals are one line."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest

from tests.conftest import FAST_YAML

ultralytics = pytest.importorskip("ultralytics")

YOLO_YAML = FAST_YAML.replace("model: example:digits-resnet\n", "model: ultralytics:yolov8n\n") \
    .replace("data: digits\n", "data: random\n").replace("max_candidates: 6", "max_candidates: 3") \
    .replace("steps: 60,", "steps: 5,")


@pytest.mark.slow  # 35 s; its parts (layout, parity, YOLO() on the pruned file) are in tests/stages/test_yolo.py
def test_yolo_runs_end_to_end_and_the_onnx_loads_in_ultralytics(cli, tmp_path):
    from ultralytics import YOLO

    cfg = tmp_path / "yolo.yaml"
    cfg.write_text(YOLO_YAML)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", cfg, "--input-shape", "3,96,96", "--out", out, "-q")
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "output-error"  # random images: a detector finds nothing to agree on
    assert rep["final"]["macs"] < rep["baseline"]["macs"]
    g = onnx.load(str(out / "model.onnx")).graph
    assert [(i.name, [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]) for i in g.input] == \
        [("images", ["batch", 3, "height", "width"])]
    assert [o.name for o in g.output] == ["output0"]
    assets = Path(ultralytics.__file__).parent / "assets"
    res = YOLO(str(out / "model.onnx"), task="detect").predict(str(assets / "zidane.jpg"), imgsz=96, verbose=False)
    assert res[0].boxes is not None


def test_det_agreement_on_a_model_that_sees_nothing_is_one_line(cli, tmp_path):
    rc, _, err = cli("run", "--model", "ultralytics:yolov8n", "--data", "random", "--input-shape", "3,64,64",
                     "--metric", "det-agreement", "--speedup", "1.2", "--out", tmp_path / "r")
    assert rc == 2 and "detects nothing" in err and "Traceback" not in err


def test_detection_metric_on_a_classifier_is_one_line(cli, tmp_path):
    rc, _, err = cli("run", "--model", "example:digits-resnet", "--metric", "map50", "--speedup", "1.2",
                     "--out", tmp_path / "r")
    assert rc == 2 and "YOLO-layout detections" in err and "Traceback" not in err


def test_shapes_detector_scores_map_on_its_own_data():
    """The shipped YOLOv8n (trained here) finds the shapes: mAP@0.5:0.95 on the generated test split, in PyTorch."""
    from stages.evaluate import TorchRunner, evaluate
    from stages.load.inputs import load_inputs
    from stages.load.models import ModelRequest

    lm, data = load_inputs(ModelRequest("example:shapes-yolo"), None, 0)
    assert data.metric == "map50-95" and lm.input_shape == (3, 256, 256) and len(data.test) == 150
    assert evaluate("map50-95", TorchRunner(lm.module), data.test) > 60.0


def test_gradient_criterion_with_a_detection_metric_is_one_line(cli, tmp_path):
    rc, _, err = cli("run", "--model", "example:shapes-yolo", "--criterion", "taylor", "--speedup", "1.2",
                     "--out", tmp_path / "r")
    assert rc == 2 and "differentiates a task loss" in err and "Traceback" not in err


@pytest.mark.slow
def test_shapes_detector_default_run(cli, tmp_path):
    """`pipeline run --model example:shapes-yolo --speedup 1.3` from the defaults: exit 0 or 1, mAP reported."""
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", "example:shapes-yolo", "--speedup", "1.3", "--out", out, "-q")
    assert rc in (0, 1), err
    rep = json.loads((out / "report.json").read_text())
    assert rep["metric"]["name"] == "map50-95" and rep["final"]["macs"] < rep["baseline"]["macs"]
