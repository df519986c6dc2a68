"""Ultralytics YOLO models (``ultralytics:NAME``): load, split blocks, prune, export, Ultralytics' own ONNX loader,
and the ``det-agreement`` evaluator. Random weights at 160x160: structure and parity only, never quality."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import PipelineError, SpecError, StageError
from stages.evaluate import EVALUATORS
from stages.evaluate.detection import map_against
from stages.export import ExportSettings, check_parity, export_onnx
from stages.load.models import ModelRequest, load_model
from stages.model.graph import PruneGraph, output_layers
from stages.prune.plan import apply_plan, make_plan, uniform_ratios

ultralytics = pytest.importorskip("ultralytics")
SHAPE = (3, 160, 160)
ASSETS = Path(ultralytics.__file__).parent / "assets"


def _pruned(spec: str):
    lm = load_model(ModelRequest(spec, input_shape=SHAPE))
    ex = torch.zeros(2, *SHAPE)
    graph = PruneGraph(lm.module, ex)
    groups = graph.groups()
    plan = make_plan(groups, graph.importance("magnitude", p=2), uniform_ratios(groups, 0.4), 8)
    return lm, graph, apply_plan(lm.module, ex, plan)


@pytest.mark.parametrize("spec", ["ultralytics:yolov8n", "ultralytics:yolo11n"])
def test_detector_prunes_exports_with_parity_and_loads_in_ultralytics(spec, tmp_path):
    from ultralytics import YOLO

    from targets import get_target
    from targets.base import build_engine

    lm, graph, pruned = _pruned(spec)
    assert lm.metric == "det-agreement" and lm.task == "detect"
    head = "model.net.model.22" if "v8" in spec else "model.net.model.23"
    assert f"{head}.dfl.conv" in graph.ignored_names  # frozen DFL: held, and the walk goes on to the box convs
    assert {f"{head}.cv2.{i}.2" for i in range(3)} <= set(graph.ignored_names)
    assert {f"{head}.cv3.{i}.2" for i in range(3)} <= set(graph.ignored_names)
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        assert pruned(x).shape == lm.module(x).shape == (2, 84, 525)  # 160/8, /16, /32: 400 + 100 + 25 anchors
    n0, n1 = (sum(p.numel() for p in m.parameters()) for m in (lm.module, pruned))
    assert n1 < 0.6 * n0
    path = tmp_path / "pruned.onnx"
    export_onnx(pruned, SHAPE, path, ExportSettings())
    target = get_target("cpu", {})
    with target.runner(build_engine(target, path, SHAPE, tmp_path)) as r:
        check_parity(pruned, r, x, 1e-3, 1e-3)
    import onnx

    m = onnx.load(str(path))
    assert [i.name for i in m.graph.input] == ["images"] and [o.name for o in m.graph.output] == ["output0"]
    dims = [d.dim_param or d.dim_value for d in m.graph.output[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 84, "anchors"]
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["task"] == "detect" and meta["imgsz"] == "[160, 160]" and "'person'" not in meta["names"][:3]
    res = YOLO(str(path), task="detect").predict(str(ASSETS / "bus.jpg"), imgsz=160, verbose=False)
    assert res[0].boxes is not None and len(res[0].names) == 80


def test_yolo11_attention_is_held_and_its_ffn_pruned():
    lm, graph, pruned = _pruned("ultralytics:yolo11n")
    held = set(graph.ignored_names)
    assert {"model.net.model.10.cv1.conv", "model.net.model.10.m.0.attn.qkv.conv",
            "model.net.model.10.m.0.attn.pe.conv"} <= held
    ids = {g.id for g in graph.groups()}
    assert not any(".attn." in i for i in ids)
    assert any(i.startswith("model.net.model.10.m.0.ffn.0") for i in ids)


def test_classifier_variant_gives_probabilities():
    lm = load_model(ModelRequest("ultralytics:yolov8n-cls", input_shape=(3, 64, 64)))
    assert lm.task == "classify" and lm.metric == "agreement"
    with torch.no_grad():
        p = lm.module(torch.rand(3, 3, 64, 64))
    assert p.shape == (3, 1000) and torch.allclose(p.sum(1), torch.ones(3), atol=1e-5)


def test_output_layers_finds_every_head_branch():
    class TwoHeads(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body = torch.nn.Conv2d(3, 8, 3)
            self.a, self.b = torch.nn.Conv2d(8, 4, 1), torch.nn.Conv2d(8, 2, 1)
            self.fixed = torch.nn.Conv2d(4, 4, 1)
            self.fixed.requires_grad_(False)

        def forward(self, x):
            h = self.body(x).relu()
            return torch.cat([self.fixed(self.a(h)), self.b(h)], 1)

    assert output_layers(TwoHeads(), torch.zeros(1, 3, 8, 8)) == ["a", "b", "fixed"]


def test_det_agreement_scores_matching_boxes():
    boxes = torch.tensor([[10, 10, 50, 50, 0.9, 0], [60, 60, 120, 120, 0.8, 2]], dtype=torch.float32)
    truth = [boxes[:, [0, 1, 2, 3, 5]]]
    assert map_against([boxes], truth)[0] == pytest.approx(0.995, abs=1e-4)  # the 101-point AP's top
    moved = boxes.clone()
    moved[1, :4] += 40  # the second box misses (IoU < 0.5)
    assert map_against([moved], truth)[0] == pytest.approx(0.4975, abs=1e-3)
    wrong = boxes.clone()
    wrong[:, 5] = 7  # right places, wrong classes
    assert map_against([wrong], truth)[0] == 0.0


def test_det_agreement_refuses_a_model_that_detects_nothing():
    class Runner:
        def run(self, x):
            return np.zeros((len(x), 84, 525), dtype=np.float32)

    data = torch.utils.data.TensorDataset(torch.zeros(4, *SHAPE), torch.full((4, 100, 6), -1.0))
    with pytest.raises(StageError, match="detects nothing"):
        EVALUATORS.get("det-agreement")(Runner(), data)


@pytest.mark.parametrize("spec, shape, match", [
    ("ultralytics:yolov8n-seg", None, "segment model"),
    ("ultralytics:yolov8q", None, "no model YAML"),
    ("ultralytics:yolov8n", (3, 100, 100), "stride 32"),
])
def test_bad_specs_stop_in_one_line(spec, shape, match):
    with pytest.raises(SpecError, match=match):
        load_model(ModelRequest(spec, input_shape=shape))


def test_a_checkpoint_needs_trust(tmp_path):
    pt = tmp_path / "best.pt"
    pt.write_bytes(b"not really")
    with pytest.raises(SpecError, match="trust-checkpoint"):
        load_model(ModelRequest(f"ultralytics:{pt}"))
    with pytest.raises(PipelineError, match="cannot read"):
        load_model(ModelRequest(f"ultralytics:{pt}", trust_checkpoint=True))


def test_images_source_letterboxes_like_ultralytics(tmp_path):
    import cv2

    from stages.load.data import DataRequest, load_data
    from stages.load.models import load_model  # noqa: F401 - registers the data sources

    src = cv2.imread(str(ASSETS / "bus.jpg"))
    for i in range(6):
        cv2.imwrite(str(tmp_path / f"im{i}.jpg"), src[:, i * 20:])
    data = load_data(f"images:{tmp_path}", DataRequest((3, 96, 128)))
    assert (len(data.train), len(data.calib), len(data.test)) == (3, 1, 2) and not data.labeled
    x = data.test[0][0]
    assert x.shape == (3, 96, 128) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert torch.allclose(x[:, :, 0], torch.full((3, 96), 114 / 255))  # the tall bus image is padded left/right
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match="has 0 images"):
        load_data(f"images:{tmp_path / 'empty'}", DataRequest((3, 96, 128)))


class _PerfectDetector:
    """A runner whose raw YOLO output holds each labelled box at one anchor, class score 0.9: NMS gives the labels."""

    def __init__(self, data, classes: int = 3, anchors: int = 64):
        self.labels = {i: data[i][1] for i in range(len(data))}
        self.classes, self.anchors, self.seen = classes, anchors, 0

    def run(self, x):
        out = np.zeros((len(x), 4 + self.classes, self.anchors), dtype=np.float32)
        for b in range(len(x)):
            ref = self.labels[self.seen + b]
            for k, (x1, y1, x2, y2, _, cls) in enumerate(ref[ref[:, 4] >= 0].tolist()):
                out[b, :4, k] = [(x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1]
                out[b, 4 + int(cls), k] = 0.9
        self.seen += len(x)
        return out


def test_yolo_dataset_boxes_follow_the_letterbox_and_score_full_map(tmp_path):
    from stages.load.data import DataRequest, load_data
    from stages.load.models import load_model  # noqa: F401 - registers the data sources
    from stages.load.shapes import write_shapes

    yaml_path = write_shapes(tmp_path, {"train": 4, "val": 3, "test": 5}, size=128)
    data = load_data(f"yolo:{yaml_path}", DataRequest((3, 160, 224)))
    assert (len(data.train), len(data.calib), len(data.test), data.metric) == (4, 3, 5, "map50-95")
    first = (tmp_path / "labels" / "train" / "00000.txt").read_text().split()
    c, cx, w = int(first[0]), float(first[1]), float(first[3])
    box = data.train[0][1][0]
    scale, left = 160 / 128, (224 - 160) // 2
    assert int(box[5]) == c and float(box[0]) == pytest.approx((cx - w / 2) * 128 * scale + left, abs=0.01)
    assert EVALUATORS.get("map50")(_PerfectDetector(data.test), data.test) == pytest.approx(99.5, abs=0.01)
    assert EVALUATORS.get("map50-95")(_PerfectDetector(data.test), data.test) == pytest.approx(99.5, abs=0.01)


@pytest.mark.parametrize("text, match", [("train: a\n", "has no val, names"), ("{: bad", "is not YAML")])
def test_bad_yolo_dataset_files_stop_in_one_line(tmp_path, text, match):
    from stages.load.data import DataRequest, load_data
    from stages.load.models import load_model  # noqa: F401 - registers the data sources

    (tmp_path / "d.yaml").write_text(text)
    with pytest.raises(SpecError, match=match):
        load_data(f"yolo:{tmp_path / 'd.yaml'}", DataRequest((3, 64, 64)))


def test_detection_distillation_weighs_boxes_by_the_teachers_scores():
    from stages.recover.distill import detection_kd, loss_for

    assert loss_for("det-agreement") == loss_for("map50-95") == "detection"
    teacher = torch.zeros(1, 7, 4)
    teacher[0, :4] = 100.0
    teacher[0, 5, 0] = 0.9  # one confident anchor
    assert float(detection_kd(teacher, teacher)) == 0.0
    background_moved = teacher.clone()
    background_moved[0, :4, 1:] += 50.0  # boxes at anchors the teacher scores 0
    assert float(detection_kd(background_moved, teacher)) == 0.0
    object_moved = teacher.clone()
    object_moved[0, :4, 0] += 50.0
    assert float(detection_kd(object_moved, teacher)) == pytest.approx(0.25)


def test_detection_loss_is_ultralytics_training_loss_beside_the_exported_output():
    lm = load_model(ModelRequest("ultralytics:yolov8n", input_shape=(3, 64, 64)))
    net = lm.module.model
    x = torch.rand(2, 3, 64, 64)
    boxes = torch.full((2, 100, 6), -1.0)
    boxes[0, 0] = torch.tensor([8.0, 8.0, 40.0, 30.0, 1.0, 3.0])
    boxes[1, :2] = torch.tensor([[0.0, 0.0, 20.0, 20.0, 1.0, 0.0], [30.0, 30.0, 60.0, 62.0, 1.0, 5.0]])
    out, loss = net.detection_loss(x, boxes)
    with torch.no_grad():
        assert torch.allclose(out, lm.module(x), atol=1e-5)  # the same output the pipeline exports
    assert loss.ndim == 0 and float(loss) > 0
    loss.backward()
    assert net.net.model[0].conv.weight.grad is not None and not net.net.model[-1].training
