"""Detection evaluators (YOLO-layout outputs ``[batch, 4 + classes, anchors]``: boxes xywh, class scores).

``map50`` and ``map50-95`` (labelled, ``yolo:DATA.yaml``): mAP@0.5 and mAP@0.5:0.95 (in %) against the dataset's
boxes, by the same pieces. In every metric the scored detections are kept as Ultralytics' validator keeps them for
its mAP (NMS at confidence 0.001, IoU 0.7, 300 an image), so the AP integrates the whole confidence ranking.

``det-agreement`` (label-free): the unpruned model's detections after NMS at Ultralytics' predict defaults
(confidence 0.25, IoU 0.7) are the ground truth; the score is the
mAP@0.5 (in %) of the engine's detections against them, per class, computed by Ultralytics' own pieces: its NMS (``ultralytics.utils.nms``), its prediction matching
(``BaseValidator.match_predictions``) and its AP (``ultralytics.utils.metrics.ap_per_class``). Identical detections score **99.5**, not 100: Ultralytics' AP
integrates a 101-point interpolated precision curve, whose top is 0.995 (its validator reports the same for a
perfect model); the drop from the unpruned engine's own score is what ``--max-accuracy-drop`` reads. A model that
detects nothing on the data (random weights, or images without its objects) cannot be measured this way: the
evaluation stops with that reason rather than reporting an empty 100%.

The reference stored per sample is the unpruned model's detections, padded to :data:`MAX_DET` rows of
``(x1, y1, x2, y2, conf, class)`` (padding ``conf`` -1), so labels stay one small tensor per image.
"""

from __future__ import annotations

import numpy as np
import torch

from core.errors import StageError
from stages.evaluate import _batches, register

CONF = 0.25  # the reference: what Ultralytics' predict keeps by default
IOU = 0.7
MAX_DET = 100
VAL_CONF, VAL_MAX_DET = 0.001, 300  # the scored detections: as Ultralytics' validator keeps them for its mAP
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)


def detections(out: torch.Tensor, conf: float = CONF, max_det: int = MAX_DET) -> list[torch.Tensor]:
    """Per image ``[n, 6]`` (xyxy, conf, class) after Ultralytics' NMS (default: its predict settings)."""
    from ultralytics.utils.nms import non_max_suppression

    return non_max_suppression(out.float(), conf, IOU, max_det=max_det, max_time_img=60.0)


def _padded(dets: list[torch.Tensor]) -> torch.Tensor:
    ref = torch.full((len(dets), MAX_DET, 6), -1.0)
    for i, d in enumerate(dets):
        ref[i, :len(d)] = d[:MAX_DET].float()
    return ref


def _detection_reference(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return _padded(detections(out))


class _Matcher:
    """Ultralytics' prediction matching needs only an ``iouv`` attribute from its validator."""

    iouv = IOU_THRESHOLDS

    def match(self, pred_cls: torch.Tensor, true_cls: torch.Tensor, iou: torch.Tensor) -> torch.Tensor:
        from ultralytics.engine.validator import BaseValidator

        return BaseValidator.match_predictions(self, pred_cls, true_cls, iou)


def map_against(preds: list[torch.Tensor], truths: list[torch.Tensor]) -> tuple[float, float, int]:
    """(mAP@0.5, mAP@0.5:0.95, number of true boxes) of ``preds`` (per image ``[n, 6]``) against ``truths`` (per
    image ``[m, 6]`` or ``[m, 5]``: xyxy, (conf,) class)."""
    from ultralytics.utils.metrics import ap_per_class, box_iou

    matcher = _Matcher()
    tps, confs, pcls, tcls = [], [], [], []
    for p, t in zip(preds, truths):
        t_cls = t[:, -1]
        tcls.append(t_cls.numpy())
        if not len(p):
            continue
        correct = (matcher.match(p[:, 5], t_cls, box_iou(t[:, :4], p[:, :4])) if len(t)
                   else torch.zeros((len(p), len(IOU_THRESHOLDS)), dtype=torch.bool))
        tps.append(correct.numpy())
        confs.append(p[:, 4].numpy())
        pcls.append(p[:, 5].numpy())
    n_true = int(sum(len(c) for c in tcls))
    if not n_true:
        return float("nan"), float("nan"), 0
    if not tps:
        return 0.0, 0.0, n_true
    ap = ap_per_class(np.concatenate(tps), np.concatenate(confs), np.concatenate(pcls), np.concatenate(tcls))[5]
    return float(ap[:, 0].mean()), float(ap.mean()), n_true


def _det_scores(runner, data, batch_size: int, what: str) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) of the engine's detections against the boxes in the labels (``[MAX_DET, 6]`` a
    sample, padding conf -1): the unpruned model's detections or the dataset's boxes."""
    preds, truths = [], []
    for x, y in _batches(data, batch_size):
        preds += detections(torch.from_numpy(np.asarray(runner.run(x.numpy()))), VAL_CONF, VAL_MAX_DET)
        truths += [ref[ref[:, 4] >= 0][:, [0, 1, 2, 3, 5]] for ref in y]
    m50, m5095, n_true = map_against(preds, truths)
    if not n_true:
        if what == "reference":
            raise StageError(f"det-agreement: the unpruned model detects nothing on these {len(data)} images "
                             f"(confidence >= {CONF}), so agreement with it cannot be measured",
                             hint="use images with the model's objects (--data images:DIR), a trained checkpoint, "
                                  "or --metric output-error for random weights")
        raise StageError(f"the {len(data)} labelled images have no boxes", hint="check the dataset's label files")
    return 100.0 * m50, 100.0 * m5095


@register("det-agreement", needs_labels=False, unit="mAP@0.5 vs unpruned detections, %", higher_is_better=True,
          reference=_detection_reference, loss="detection",
          summary="detectors (YOLO layout): mAP@0.5 of the detections against the unpruned model's, after NMS")
def evaluate_det_agreement(runner, data, batch_size: int = 16) -> float:
    return _det_scores(runner, data, batch_size, "reference")[0]


@register("map50", needs_labels=True, unit="mAP@0.5, %", higher_is_better=True, loss="detection",
          summary="detectors (YOLO layout): mAP@0.5 against the dataset's boxes (yolo: data)")
def evaluate_map50(runner, data, batch_size: int = 16) -> float:
    return _det_scores(runner, data, batch_size, "labels")[0]


@register("map50-95", needs_labels=True, unit="mAP@0.5:0.95, %", higher_is_better=True, loss="detection",
          summary="detectors (YOLO layout): mAP@0.5:0.95 (COCO's) against the dataset's boxes (yolo: data)")
def evaluate_map50_95(runner, data, batch_size: int = 16) -> float:
    return _det_scores(runner, data, batch_size, "labels")[1]
