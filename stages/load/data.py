"""Data specs: ``digits``, ``imagefolder:PATH``, ``random``, ``python:module:fn``.

Every source yields a :class:`DataBundle` with three fixed splits:

- ``train``: used only by recovery (distillation);
- ``calib``: BN re-estimation, scoring, the parity gate and the tuner's accuracy decisions;
- ``test``: the final, reported accuracy (evaluated through the built engine).

Samples are ``(x, y)`` pairs. ``y`` is a class index; for unlabeled data (``random``) the
labels are filled with the unpruned model's predictions, so "accuracy" becomes *fidelity*
(top-1 agreement with the unpruned model).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from core.errors import SpecError
from core.registry import Registry

DIGITS_SIZE = 32
DIGITS_SPLIT = (1000, 347, 450)  # train / calib / test of the 1797 digits, fixed permutation (seed 0)


@dataclass(frozen=True)
class DataBundle:
    """Three splits plus what the evaluator needs to know about them."""

    name: str
    train: Dataset
    calib: Dataset
    test: Dataset
    input_shape: tuple[int, ...]  # one sample, without batch
    metric: str = "top1"  # "top1" with real labels, "fidelity" with the unpruned model's labels
    labeled: bool = True


DataFactory = Callable[[str, tuple[int, ...] | None], DataBundle]
DATA_SOURCES: Registry[DataFactory] = Registry("data source")


def load_data(spec: str, input_shape: tuple[int, ...] | None) -> DataBundle:
    """Resolve a data spec.

    Args:
        spec: ``digits``, ``imagefolder:PATH``, ``random`` or ``python:module:fn``.
        input_shape: The model's expected sample shape (C, H, W), when known.
    """
    kind, _, arg = spec.partition(":")
    return DATA_SOURCES.get(kind)(arg, input_shape)


@DATA_SOURCES.register("digits")
def _digits(arg: str, input_shape: tuple[int, ...] | None) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 images), upsampled to 32x32, one channel."""
    from sklearn.datasets import load_digits

    if input_shape is not None and tuple(input_shape) != (1, DIGITS_SIZE, DIGITS_SIZE):
        raise SpecError(
            f"data 'digits' gives 1x{DIGITS_SIZE}x{DIGITS_SIZE} images but the model expects {_fmt(input_shape)}",
            hint="use --data random (fidelity) or --data imagefolder:PATH for this model",
        )
    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(ds.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b, _ = DIGITS_SPLIT
    tr, ca, te = perm[:a], perm[a:a + b], perm[a + b:]
    return DataBundle(
        name="digits",
        train=TensorDataset(x[tr], y[tr]),
        calib=TensorDataset(x[ca], y[ca]),
        test=TensorDataset(x[te], y[te]),
        input_shape=(1, DIGITS_SIZE, DIGITS_SIZE),
    )


@DATA_SOURCES.register("random")
def _random(arg: str, input_shape: tuple[int, ...] | None) -> DataBundle:
    """Gaussian inputs for latency-only runs; labels come from the unpruned model later."""
    if input_shape is None:
        raise SpecError("data 'random' needs the model's input shape",
                        hint="pass --input-shape 3,224,224 (C,H,W)")
    g = torch.Generator().manual_seed(1234)
    shape = tuple(input_shape)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn((n, *shape), generator=g), torch.full((n,), -1, dtype=torch.long))

    return DataBundle("random", split(256), split(128), split(256), shape, metric="fidelity", labeled=False)


@DATA_SOURCES.register("imagefolder")
def _imagefolder(arg: str, input_shape: tuple[int, ...] | None) -> DataBundle:
    """A torchvision ImageFolder (one sub-folder per class), split 60/20/20 by a fixed permutation."""
    from torchvision import datasets, transforms

    root = Path(arg).expanduser()
    if not root.is_dir():
        raise SpecError(f"imagefolder path not found: {root}", hint="give a folder with one sub-folder per class")
    c, h, w = input_shape if input_shape is not None else (3, 224, 224)
    tf = transforms.Compose([
        transforms.Resize(int(max(h, w) * 256 / 224)),
        transforms.CenterCrop((h, w)),
        transforms.Grayscale(1) if c == 1 else transforms.Lambda(lambda im: im.convert("RGB")),
        transforms.ToTensor(),
        transforms.Normalize([0.485, 0.456, 0.406][:c], [0.229, 0.224, 0.225][:c]),
    ])
    try:
        full = datasets.ImageFolder(str(root), transform=tf)
    except (FileNotFoundError, RuntimeError) as e:
        raise SpecError(f"imagefolder {root}: {e}", hint="expected ROOT/CLASS_NAME/image.jpg") from None
    n = len(full)
    if n < 10:
        raise SpecError(f"imagefolder {root} has only {n} images", hint="give at least 10 images")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0)).tolist()
    a, b = int(0.6 * n), int(0.8 * n)
    sub = torch.utils.data.Subset
    return DataBundle(f"imagefolder:{root.name}", sub(full, perm[:a]), sub(full, perm[a:b]), sub(full, perm[b:]), (c, h, w))


@DATA_SOURCES.register("python")
def _python(arg: str, input_shape: tuple[int, ...] | None) -> DataBundle:
    """``python:module:fn``; fn(input_shape) returns a DataBundle or a dict with train/calib/test datasets."""
    fn = import_callable(arg, "data")
    out = fn(input_shape) if _takes_arg(fn) else fn()
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, dict) and {"train", "calib", "test"} <= out.keys():
        x0 = out["calib"][0][0]
        return DataBundle(f"python:{arg}", out["train"], out["calib"], out["test"], tuple(x0.shape),
                          metric=out.get("metric", "top1"), labeled=out.get("labeled", True))
    raise SpecError(f"python:{arg} returned {type(out).__name__}",
                    hint="return a DataBundle or a dict with 'train', 'calib' and 'test' datasets of (x, y)")


def with_model_labels(bundle: DataBundle, model: torch.nn.Module) -> DataBundle:
    """Replace labels by the unpruned model's top-1 predictions (fidelity metric)."""
    def relabel(ds: Dataset) -> TensorDataset:
        xs = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            ys = torch.cat([model(xs[i:i + 64]).argmax(1) for i in range(0, len(xs), 64)])
        return TensorDataset(xs, ys)

    return replace(bundle, train=relabel(bundle.train), calib=relabel(bundle.calib), test=relabel(bundle.test),
                   metric="fidelity", labeled=False)


def import_callable(arg: str, what: str) -> Callable:
    """Import ``module:attr`` or raise a SpecError with a hint."""
    mod_name, _, attr = arg.partition(":")
    if not mod_name or not attr:
        raise SpecError(f"bad python {what} spec 'python:{arg}'", hint="use python:package.module:function")
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as e:
        raise SpecError(f"cannot import module '{mod_name}': {e}", hint="check PYTHONPATH or install the package") from None
    if not hasattr(mod, attr):
        names = [n for n in dir(mod) if not n.startswith("_")]
        from core.errors import did_you_mean
        raise SpecError(f"module '{mod_name}' has no attribute '{attr}'.{did_you_mean(attr, names)}",
                        hint="use python:package.module:function")
    return getattr(mod, attr)


def _takes_arg(fn: Callable) -> bool:
    import inspect
    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return False


def _fmt(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)
