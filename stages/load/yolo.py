"""``ultralytics:NAME`` — Ultralytics YOLO models (the optional ``yolo`` extra: ``pip install 'edge-pipeline[yolo]'``).

``NAME`` is one of the model YAMLs that ship inside the ``ultralytics`` package (``yolov8n``, ``yolo11s.yaml``,
``yolov8n-cls``; random weights, nothing downloaded) or a path to a trained ``.pt`` (an Ultralytics checkpoint is a
pickle: it loads only with ``--trust-checkpoint``). Tasks: ``detect`` and ``classify``; segmentation, pose and OBB
heads have two outputs or a task-specific layout and are refused in one line (docs/models.md).

What the adapter does to the pipeline's copy (the user's file is never touched):

- the head is put in Ultralytics' export mode (``export=True``, ``format="onnx"``), so the model returns exactly
  what ``yolo export format=onnx dynamic=True`` produces: input ``images`` ``[batch, 3, height, width]``, output
  ``output0`` ``[batch, 4 + classes, anchors]`` (boxes xywh in input pixels, class scores after the sigmoid) for a
  detector, softmax probabilities ``[batch, classes]`` for a classifier; the pipeline works at one size
  (``--input-shape``, default Ultralytics' 640 / 224), the file takes any multiple of the stride;
- every block that *chunks* or *splits* the output of one conv into halves (``C2f``, ``C3k2``, ``C2fPSA``,
  ``C2PSA``) gets that conv split into two convs with the same weights, so each half is its own prunable group:
  Torch-Pruning 1.6.1 maps the channels of a chunked conv wrongly (an out-of-range index when scoring). The
  function is unchanged (checked on load to 1e-5);
- the position-sensitive attention inside ``C2PSA`` (YOLO11) reshapes its ``qkv`` by head: its stream width,
  ``qkv`` and positional conv are held (its FFN's inner width stays prunable);
- the detection head's output convs and DFL are held by the graph's own output-layer rule
  (:func:`stages.model.graph.output_layers`).

The exported ONNX carries Ultralytics' metadata (stride, task, names, imgsz, ...) so ``YOLO("model.onnx")`` loads
and predicts with it like with its own export.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelLoadError, SpecError, did_you_mean

TASKS = ("detect", "classify")
IMGSZ = {"detect": 640, "classify": 224}  # Ultralytics' own export defaults


def ultralytics_root() -> Path:
    """The installed ``ultralytics`` package (one line and an install hint when it is missing)."""
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no update or hub checks from inside a pipeline run
    try:
        import ultralytics
    except ImportError:
        raise SpecError("ultralytics: models need the 'ultralytics' package",
                        hint="pip install 'edge-pipeline[yolo]' (or pip install ultralytics)") from None
    return Path(ultralytics.__file__).parent


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Ultralytics' logger held at ERROR (its INFO / WARNING lines about building a model are not the user's)."""
    from ultralytics.utils import LOGGER

    level = LOGGER.level
    LOGGER.setLevel(logging.ERROR)
    try:
        yield
    finally:
        LOGGER.setLevel(level)


def shipped_yamls() -> list[str]:
    """The model names whose YAML ships inside ``ultralytics`` with a scale (``yolov8n``, ``yolo11s-cls``, ...)."""
    import yaml

    names = []
    for p in sorted((ultralytics_root() / "cfg" / "models").rglob("*.yaml")):
        scales = (yaml.safe_load(p.read_text()) or {}).get("scales") or {}
        stem, _, rest = p.stem.partition("-")
        names += [f"{stem}{s}{'-' + rest if rest else ''}" for s in scales]
    return names


def load_yolo(arg: str, trust: bool, weights: Path | None = None, names: tuple[str, ...] | None = None
              ) -> tuple[nn.Module, str, dict]:
    """(the prepared Ultralytics model, its task, its ONNX metadata) for ``arg`` (a shipped YAML or a ``.pt``);
    ``weights`` (a plain ``state_dict``, read weights-only) and ``names`` (its classes) for a YAML model trained
    here (``example:shapes-yolo``)."""
    ultralytics_root()
    if arg.endswith(".pt") or Path(arg).is_file():
        model, task, source = _from_checkpoint(arg, trust)
    else:
        model, task, source = _from_yaml(arg, weights, names)
    model = model.float().eval()  # built or unpickled here: the pipeline's own object
    prepared = prepare(copy.deepcopy(model))
    _check_same(model, prepared, task)
    return prepared, task, metadata(prepared, task, source)


def _check_task(task: str, arg: str) -> None:
    if task not in TASKS:
        raise SpecError(f"ultralytics: '{arg}' is a {task} model; its head has several outputs or a task-specific "
                        "layout the pipeline cannot evaluate yet", hint="use the detect or classify variant")


def _from_checkpoint(arg: str, trust: bool) -> tuple[nn.Module, str, str]:
    from ultralytics.nn.tasks import guess_model_task, load_checkpoint

    if not Path(arg).is_file():
        raise SpecError(f"ultralytics: checkpoint '{arg}' does not exist", hint="check the path")
    if not trust:
        raise SpecError(f"ultralytics: '{arg}' is a pickled Ultralytics checkpoint; loading it runs code from it",
                        hint="pass --trust-checkpoint if you trust the file")
    try:
        model, _ = load_checkpoint(arg, device="cpu", fuse=False)
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint is reported the same way
        raise ModelLoadError(f"ultralytics: cannot read '{arg}': {type(e).__name__}: {str(e)[:160]}",
                             hint="pass a checkpoint saved by Ultralytics (best.pt / last.pt)") from None
    task = guess_model_task(model)
    _check_task(task, arg)
    return model, task, Path(arg).name


def _from_yaml(arg: str, weights: Path | None, names: tuple[str, ...] | None) -> tuple[nn.Module, str, str]:
    from ultralytics.nn.tasks import ClassificationModel, DetectionModel, guess_model_task, yaml_model_load

    name = arg if arg.endswith(".yaml") else f"{arg}.yaml"
    try:
        with quiet():
            cfg = yaml_model_load(name)
        if cfg.get("scales") and not cfg.get("scale"):
            raise FileNotFoundError(name)  # a family YAML without its scale letter (yolov8, not yolov8n)
    except (FileNotFoundError, OSError):
        known = shipped_yamls()
        raise SpecError(f"ultralytics: no model YAML '{name}' ships with the installed ultralytics."
                        f"{did_you_mean(Path(name).stem, known)}",
                        hint="e.g. ultralytics:yolov8n, ultralytics:yolo11n, ultralytics:yolov8n-cls; "
                             "or a trained .pt with --trust-checkpoint") from None
    task = guess_model_task(cfg)
    _check_task(task, arg)
    torch.manual_seed(0)
    kwargs = {"nc": len(names)} if names else {}
    with quiet():
        model = (DetectionModel if task == "detect" else ClassificationModel)(name, verbose=False, **kwargs)
    if weights is not None:
        state = torch.load(weights, map_location="cpu", weights_only=True)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        model.names = dict(enumerate(names or ()))
    return model, task, name


def _check_same(original: nn.Module, prepared: nn.Module, task: str) -> None:
    """The split blocks compute what the original blocks did (both heads in export mode, one 64x64 batch)."""
    for m in original.modules():
        if hasattr(m, "export"):
            m.export = True
    x = torch.rand((2, 3, 64, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = original(x), prepared(x)
    if not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise ModelLoadError(f"ultralytics: splitting the chunked convs changed the {task} model's output "
                             f"(max diff {float((a - b).abs().max()):.3g})",
                             hint="report it with the model; pass a model without C2f / C2PSA blocks meanwhile")


def prepare(model: nn.Module) -> nn.Module:
    """Export-mode head and split halves, in place (see the module doc)."""
    from ultralytics.nn.modules.head import Detect

    for m in model.modules():
        if isinstance(m, Detect) or type(m).__name__ == "Classify":
            m.export, m.format = True, "onnx"
            if isinstance(m, Detect):
                m.dynamic = True  # anchors from the feature maps' shapes in the graph (any input size)
    seq = model.model
    for i, block in enumerate(list(seq)):
        split = _split_block(block)
        if split is not None:
            for attr in ("f", "i", "type", "np"):  # Ultralytics' routing attributes (parse_model)
                if hasattr(block, attr):
                    setattr(split, attr, getattr(block, attr))
            seq[i] = split
    return model


def held_layers(model: nn.Module) -> list[str]:
    """Module names (relative to ``model``) whose output channels stay: the attention of ``C2PSA`` blocks."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, SplitPSA):
            out.append(f"{name}.cv1.conv")  # the stream through the attention blocks
            for bname, sub in m.m.named_modules():
                if type(sub).__name__ == "Attention":
                    out += [f"{name}.m.{bname}.qkv.conv", f"{name}.m.{bname}.pe.conv"]
    return out


def metadata(model: nn.Module, task: str, source: str) -> dict:
    """What Ultralytics writes into an exported ONNX's ``metadata_props`` (AutoBackend reads it back)."""
    import ultralytics

    names = getattr(model, "names", None) or {i: f"class{i}" for i in range(_classes(model))}
    head = model.model[-1]
    return {"description": f"Ultralytics {source} pruned by edge-pipeline", "author": "edge-pipeline",
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "version": ultralytics.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
            "stride": int(max(getattr(model, "stride", torch.tensor([32])))), "task": task,
            "head": type(head).__name__, "batch": 1, "names": dict(names),
            "channels": (getattr(model, "yaml", None) or {}).get("channels", 3), "end2end": False,
            # as `yolo export format=onnx dynamic=True` writes them: batch, height and width dynamic
            "args": {"batch": 1, "dynamic": True, "half": False, "int8": False, "nms": False}}


def _classes(model: nn.Module) -> int:
    head = model.model[-1]
    return int(getattr(head, "nc", 0) or getattr(getattr(head, "linear", None), "out_features", 0))


def _split_block(block: nn.Module) -> nn.Module | None:
    kind = type(block).__name__
    if kind in ("C2f", "C3k2", "C2fPSA") and _splittable(block):
        return SplitC2f(block)
    if kind == "C2PSA" and _splittable(block):
        return SplitPSA(block)
    return None


def _splittable(block: nn.Module) -> bool:
    cv1 = getattr(block, "cv1", None)
    return (cv1 is not None and isinstance(getattr(cv1, "conv", None), nn.Conv2d) and cv1.conv.groups == 1
            and cv1.conv.out_channels == 2 * block.c)


def _half(conv_block: nn.Module, lo: int, hi: int) -> nn.Module:
    """A copy of an Ultralytics ``Conv`` (conv, bn, act) keeping output channels ``lo:hi``."""
    out = copy.deepcopy(conv_block)
    conv, bn = out.conv, getattr(out, "bn", None)
    conv.weight = nn.Parameter(conv.weight.data[lo:hi].clone())
    if conv.bias is not None:
        conv.bias = nn.Parameter(conv.bias.data[lo:hi].clone())
    conv.out_channels = hi - lo
    if isinstance(bn, nn.BatchNorm2d):
        bn.weight = nn.Parameter(bn.weight.data[lo:hi].clone())
        bn.bias = nn.Parameter(bn.bias.data[lo:hi].clone())
        bn.running_mean = bn.running_mean[lo:hi].clone()
        bn.running_var = bn.running_var[lo:hi].clone()
        bn.num_features = hi - lo
    return out


class _SplitHalves(nn.Module):
    """A block whose ``cv1`` output was chunked in two, with ``cv1`` as two convs: ``cv0`` the first half, ``cv1``
    the second; ``m`` and ``cv2`` are the block's own."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        c = block.c
        self.c = c
        self.cv0, self.cv1 = _half(block.cv1, 0, c), _half(block.cv1, c, 2 * c)
        self.m, self.cv2 = block.m, block.cv2


class SplitC2f(_SplitHalves):
    """``C2f`` / ``C3k2`` / ``C2fPSA``: each bottleneck in ``m`` takes the previous output; all are concatenated."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = [self.cv0(x), self.cv1(x)]
        y.extend(m(y[-1]) for m in self.m)
        return self.cv2(torch.cat(y, 1))


class SplitPSA(_SplitHalves):
    """``C2PSA``: the second half goes through the attention blocks ``m``, the first passes."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv2(torch.cat((self.cv0(x), self.m(self.cv1(x))), 1))


class YoloNet(nn.Module):
    """The prepared Ultralytics model behind the pipeline's contract: ``forward(images)`` -> ``output0``.

    ``onnx_metadata`` is written into the exported ONNX (:func:`stages.export.export_onnx`)."""

    def __init__(self, model: nn.Module, task: str, meta: dict) -> None:
        super().__init__()
        self.net = model
        self.task = task
        self.onnx_metadata = meta
        self.pipeline_held = tuple(f"net.{n}" for n in held_layers(model))  # read by stages.model.graph

    def train(self, mode: bool = True) -> YoloNet:
        """Train mode for every layer but the head's own flag: Ultralytics' heads return their raw training
        outputs when ``training`` is set, and recovery distils the exported output."""
        super().train(mode)
        self.net.model[-1].training = False
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def detection_loss(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(the exported output, Ultralytics' own training loss per image) in one forward pass. ``boxes``: per image
        ``[n, 6]`` rows ``(x1, y1, x2, y2, conf, class)`` in input pixels, ``conf`` < 0 for padding (the layout of
        the ``yolo:`` labels and of ``det-agreement``'s references). The loss is ``v8DetectionLoss`` (box IoU,
        class BCE and DFL with Ultralytics' default gains) on the head's raw training outputs; a detector only."""
        from ultralytics.cfg import get_cfg
        from ultralytics.utils.loss import v8DetectionLoss

        head = self.net.model[-1]
        head.training = True
        try:
            preds = self.net(images)
        finally:
            head.training = False
        out = head._inference(preds)
        keep = boxes[..., 4] >= 0
        idx, rows = keep.nonzero(as_tuple=True)[0], boxes[keep]
        h, w = images.shape[-2:]
        xywh = torch.stack([(rows[:, 0] + rows[:, 2]) / 2 / w, (rows[:, 1] + rows[:, 3]) / 2 / h,
                            (rows[:, 2] - rows[:, 0]) / w, (rows[:, 3] - rows[:, 1]) / h], 1)
        if not isinstance(getattr(self.net, "args", None), type(get_cfg())):
            self.net.args = get_cfg()  # Ultralytics' default hyperparameters (box 7.5, cls 0.5, dfl 1.5)
        loss, _ = v8DetectionLoss(self.net)(preds, {"batch_idx": idx.float(), "cls": rows[:, 5:6], "bboxes": xywh})
        return out, loss.sum() / len(images)
