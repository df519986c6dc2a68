"""Image data for detectors, prepared as Ultralytics' predictor prepares it: each image letterboxed to the model's
H x W (aspect kept, grey 114 padding, ``ultralytics.data.augment.LetterBox``), RGB in [0, 1].

- ``images:DIR``: every image under a folder (recursively), unlabelled (``det-agreement`` labels them with the
  unpruned model); split 60/20/20 by a fixed permutation.
- ``yolo:DATA.yaml``: an Ultralytics dataset (``path``, ``train``, ``val``, optional ``test``: folders of images or
  ``.txt`` lists; labels where Ultralytics looks for them, ``images/`` -> ``labels/``, one ``class cx cy w h`` line
  a box, normalised). Splits: train -> train, val -> calib, test -> test; without ``test`` the val images are
  split in two halves by a fixed permutation (calib and test never share an image). A sample's label is its boxes
  in the letterboxed image's pixels, ``[MAX_DET, 6]`` rows of ``(x1, y1, x2, y2, 1, class)``, padding -1 (the
  same layout ``det-agreement`` stores for the unpruned model's detections); metric ``map50-95``.
- ``shapes``: the generated shapes dataset of :mod:`stages.load.shapes` (what ``example:shapes-yolo`` was
  trained on), written to a temporary folder and read through ``yolo:``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from core.errors import SpecError
from stages.load.data import DATA_SOURCES, DataBundle, DataRequest

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_DET = 100  # boxes kept a labelled image (stages.evaluate.detection.MAX_DET)


@DATA_SOURCES.register("images")
def _images(arg: str, req: DataRequest) -> DataBundle:
    root = Path(arg).expanduser()
    if not root.is_dir():
        raise SpecError(f"images: folder not found: {root}", hint="give a folder of .jpg / .png images")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 5:
        raise SpecError(f"images:{root} has {len(files)} images", hint="give at least 5 (calib and test need some)")
    h, w = _rgb_size(req, "images:")
    x = torch.stack([letterboxed(p, h, w)[0] for p in files])
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b = max(1, int(0.6 * len(x))), max(2, int(0.8 * len(x)))
    no = torch.full((len(x),), -1, dtype=torch.long)
    parts = [TensorDataset(x[idx], no[idx]) for idx in (perm[:a], perm[a:b], perm[b:])]
    return DataBundle(f"images:{root.name}", *parts, (3, h, w), metric="agreement", labeled=False)


@DATA_SOURCES.register("yolo")
def _yolo(arg: str, req: DataRequest) -> DataBundle:
    import yaml

    path = Path(arg).expanduser()
    if not path.is_file():
        raise SpecError(f"yolo: dataset file not found: {path}", hint="give an Ultralytics data.yaml")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise SpecError(f"yolo:{path} is not YAML: {str(e).splitlines()[0]}", hint="fix the file") from None
    missing = [k for k in ("train", "val", "names") if k not in cfg]
    if missing:
        raise SpecError(f"yolo:{path} has no {', '.join(missing)}",
                        hint="an Ultralytics data.yaml has path, train, val (test optional) and names")
    root = Path(cfg.get("path") or path.parent)
    root = root if root.is_absolute() else (path.parent / root)
    h, w = _rgb_size(req, "yolo:")
    splits = {k: _labelled(_image_files(root, cfg[k], k, path), h, w) for k in ("train", "val", "test") if cfg.get(k)}
    if "test" in splits:
        calib, test = splits["val"], splits["test"]
    else:
        x, y = splits["val"].tensors
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        half = len(x) // 2
        calib, test = TensorDataset(x[perm[:half]], y[perm[:half]]), TensorDataset(x[perm[half:]], y[perm[half:]])
    if not len(calib) or not len(test):
        raise SpecError(f"yolo:{path}: the val split has {len(splits['val'])} images", hint="give at least 2")
    return DataBundle(f"yolo:{path.stem}", splits["train"], calib, test, (3, h, w), metric="map50-95")


@DATA_SOURCES.register("shapes")
def _shapes(arg: str, req: DataRequest) -> DataBundle:
    from stages.load.shapes import write_shapes

    with tempfile.TemporaryDirectory() as tmp:
        bundle = _yolo(str(write_shapes(Path(tmp))), req)
    return DataBundle("shapes", bundle.train, bundle.calib, bundle.test, bundle.input_shape, metric=bundle.metric)


def _rgb_size(req: DataRequest, what: str) -> tuple[int, int]:
    c, h, w = req.input_shape if req.input_shape is not None else (3, 640, 640)
    if c != 3:
        raise SpecError(f"{what} gives RGB images but the model expects {c}x{h}x{w}",
                        hint=f"use {what} with a 3-channel model")
    return h, w


def _image_files(root: Path, entry: str | list, split: str, yaml_path: Path) -> list[Path]:
    files: list[Path] = []
    for item in entry if isinstance(entry, list) else [entry]:
        p = Path(item) if Path(item).is_absolute() else root / item
        if p.is_dir():
            files += sorted(q for q in p.rglob("*") if q.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            files += [(p.parent / line.strip()) if not Path(line.strip()).is_absolute() else Path(line.strip())
                      for line in p.read_text().splitlines() if line.strip()]
        else:
            raise SpecError(f"yolo:{yaml_path}: {split} '{item}' is neither a folder nor a .txt list ({p})",
                            hint="paths are relative to the yaml's 'path'")
    if not files:
        raise SpecError(f"yolo:{yaml_path}: no images in the {split} split", hint="check the split's folder")
    return files


def _label_file(image: Path) -> Path:
    """Ultralytics' rule: the last ``/images/`` in the path becomes ``/labels/``, the suffix ``.txt``."""
    s = str(image)
    i = s.rfind("/images/")
    return Path((s[:i] + "/labels/" + s[i + len("/images/"):]) if i >= 0 else s).with_suffix(".txt")


def _labelled(files: list[Path], h: int, w: int) -> TensorDataset:
    xs, ys = [], []
    for f in files:
        x, (r, left, top), (h0, w0) = letterboxed(f, h, w)
        rows = torch.full((MAX_DET, 6), -1.0)
        lab = _label_file(f)
        boxes = [ln.split() for ln in lab.read_text().splitlines() if ln.strip()] if lab.is_file() else []
        for k, (c, cx, cy, bw, bh, *_) in enumerate(boxes[:MAX_DET]):
            cx, cy, bw, bh = float(cx) * w0, float(cy) * h0, float(bw) * w0, float(bh) * h0
            rows[k] = torch.tensor([(cx - bw / 2) * r + left, (cy - bh / 2) * r + top, (cx + bw / 2) * r + left,
                                    (cy + bh / 2) * r + top, 1.0, float(c)])
        xs.append(x)
        ys.append(rows)
    return TensorDataset(torch.stack(xs), torch.stack(ys))


def letterboxed(path: Path, h: int, w: int) -> tuple[torch.Tensor, tuple[float, int, int], tuple[int, int]]:
    """The image as the model's input, ``(scale, left pad, top pad)`` as Ultralytics' ``LetterBox`` made it, and
    the original ``(height, width)``."""
    try:
        import cv2
        from ultralytics.data.augment import LetterBox
    except ImportError:
        raise SpecError("images are prepared with Ultralytics' letterbox, and ultralytics is not installed",
                        hint="pip install 'edge-pipeline[yolo]'") from None
    im = cv2.imread(str(path))
    if im is None:
        raise SpecError(f"cannot read image {path}", hint="remove the file or convert it to .jpg / .png")
    box = LetterBox((h, w), auto=False)
    params = box.get_params({"img": im})
    out = box.apply_image({"img": im}, params)["img"]
    x = torch.from_numpy(out[..., ::-1].copy()).permute(2, 0, 1).float() / 255.0
    return x, (float(params["ratio"][0]), int(params["left"]), int(params["top"])), tuple(params["orig_shape"])
