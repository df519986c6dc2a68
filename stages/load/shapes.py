"""A generated detection dataset in the Ultralytics format: shapes drawn on textured backgrounds, with their boxes.

Deterministic (one seed per image): ``write_shapes(root)`` writes ``images/{train,val,test}/*.png``,
``labels/{train,val,test}/*.txt`` (one ``class cx cy w h`` line a box, normalised) and ``data.yaml``
(``path``, ``train``, ``val``, ``test``, ``names``), which is what ``yolo:DATA.yaml`` (the pipeline) and
Ultralytics' own trainer and validator read. Classes: circle, rectangle, triangle; one to four objects an image,
12-45% of the image side, random colours, partly overlapping. It is what ``example:shapes-yolo`` was trained on
(``python -m stages.load.train_shapes_yolo``) and the example's default data (``shapes``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

NAMES = ("circle", "rectangle", "triangle")
SPLITS = {"train": 600, "val": 100, "test": 150}  # images per split; split seeds never overlap
SIZE = 256


def draw(seed: int, size: int = SIZE) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One BGR image and its boxes ``(class, cx, cy, w, h)`` normalised to [0, 1]."""
    import cv2

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, 3)
    noise = rng.normal(0, 18, (size // 8, size // 8, 3))
    im = np.clip(base + cv2.resize(noise, (size, size), interpolation=cv2.INTER_CUBIC), 0, 255).astype(np.uint8)
    boxes = []
    for _ in range(int(rng.integers(1, 5))):
        cls = int(rng.integers(0, len(NAMES)))
        side = int(rng.uniform(0.12, 0.45) * size)
        x0, y0 = (int(v) for v in rng.integers(0, size - side, 2))
        colour = tuple(int(c) for c in (base + rng.integers(80, 176, 3)) % 256)
        if cls == 0:
            cv2.circle(im, (x0 + side // 2, y0 + side // 2), side // 2, colour, -1, cv2.LINE_AA)
            x1, y1, x2, y2 = x0, y0, x0 + 2 * (side // 2), y0 + 2 * (side // 2)
        elif cls == 1:
            h = int(side * rng.uniform(0.5, 1.0))
            cv2.rectangle(im, (x0, y0), (x0 + side, y0 + h), colour, -1)
            x1, y1, x2, y2 = x0, y0, x0 + side, y0 + h
        else:
            pts = np.array([[x0 + side // 2, y0], [x0, y0 + side], [x0 + side, y0 + side]], np.int32)
            cv2.fillPoly(im, [pts], colour, cv2.LINE_AA)
            x1, y1, x2, y2 = x0, y0, x0 + side, y0 + side
        boxes.append((cls, (x1 + x2) / 2 / size, (y1 + y2) / 2 / size, (x2 - x1) / size, (y2 - y1) / size))
    return im, boxes


def write_shapes(root: Path, splits: dict[str, int] | None = None, size: int = SIZE) -> Path:
    """Write the dataset under ``root`` (if its ``data.yaml`` is not there yet); returns the ``data.yaml``."""
    import cv2
    import yaml

    root = Path(root)
    yaml_path = root / "data.yaml"
    if yaml_path.is_file():
        return yaml_path
    splits = splits or SPLITS
    offset = 0
    for split, n in splits.items():
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            im, boxes = draw(1_000_003 * (offset + 1) + i, size)
            cv2.imwrite(str(root / "images" / split / f"{i:05d}.png"), im)
            (root / "labels" / split / f"{i:05d}.txt").write_text(
                "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes))
        offset += 1
    yaml_path.write_text(yaml.safe_dump({"path": str(root.resolve()), "train": "images/train", "val": "images/val",
                                         "test": "images/test", "names": dict(enumerate(NAMES))}))
    return yaml_path
