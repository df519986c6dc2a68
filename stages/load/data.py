"""Data specs: ``digits``, ``imagefolder:PATH``, ``random``, ``text:FILE``, ``tokens:random``, ``python:module:fn``.

Every source yields a :class:`DataBundle` with three fixed splits:

- ``train``: used only by recovery (distillation);
- ``calib``: BN re-estimation, scoring, the parity gate and the tuner's accuracy decisions;
- ``test``: the final, reported accuracy (evaluated through the built engine).

Samples are ``(x, y)`` pairs, ``x`` the model's packed sample (:mod:`stages.model.contract`).
``y`` is a class index; for unlabeled data (``random``, ``text:``, ``tokens:random``) the labels
are made from the unpruned model by the run's label-free evaluator
(:func:`with_model_labels`: its argmax for ``agreement``, its output for ``cosine`` /
``output-error``, its per-sample NLL for ``perplexity``).

Token sources (models whose inputs are ``input_ids`` / ``attention_mask``, length ``L``):

- ``text:FILE``: one sample a line (blank lines and ``#`` comments skipped), tokenised by the
  model's tokenizer; the lines are split 60/20/20 by a fixed permutation (seed 0). For a causal LM
  each split's token stream is cut into windows of ``L`` tokens (perplexity on contiguous text);
  for other models every line is one sample, padded or truncated to ``L`` (attention mask 0 on
  the padding).
- ``tokens:random``: uniform random token ids (mask all ones) for latency-only runs.
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
from stages.load.checks import DATA_CHECKS

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
    metric: str = "top1"  # "top1" with real labels, "agreement" with the unpruned model's labels
    labeled: bool = True
    synthetic: bool = False  # random inputs (random, tokens:random): latency-only runs
    # one group label per test sample (a python: source's "test_groups"): per-group accuracy in the report
    test_groups: tuple[object, ...] | None = None


@dataclass(frozen=True)
class DataRequest:
    """What a data source may need to know about the model.

    Attributes:
        input_shape: The model's packed sample shape, when known.
        tokens: The model takes token inputs (``input_ids`` / ``attention_mask``).
        tokenizer: The model's tokenizer (``text:``), when it has one.
        vocab_size: Token ids are drawn below this (``tokens:random``).
        causal: A causal LM (``text:`` cuts windows instead of one line a sample).
    """

    input_shape: tuple[int, ...] | None = None
    tokens: bool = False
    tokenizer: object | None = None
    vocab_size: int | None = None
    causal: bool = False


DataFactory = Callable[[str, DataRequest], DataBundle]
DATA_SOURCES: Registry[DataFactory] = Registry("data source")


def load_data(spec: str, req: DataRequest | tuple[int, ...] | None) -> DataBundle:
    """Resolve a data spec.

    Args:
        spec: ``digits``, ``imagefolder:PATH``, ``images:PATH``, ``yolo:DATA.yaml``, ``shapes``, ``random``, ``text:FILE``, ``tokens:random`` or ``python:module:fn``.
        req: What the model needs (a bare sample shape reads as an image model's).
    """
    if not isinstance(req, DataRequest):
        req = DataRequest(tuple(req) if req is not None else None)
    kind, _, arg = spec.partition(":")
    source = DATA_SOURCES.get(kind)
    if req.tokens and kind in ("digits", "random", "imagefolder", "images", "yolo", "shapes"):
        raise SpecError(f"data '{spec}' gives images, but the model takes token inputs (input_ids, attention_mask)",
                        hint="use --data text:FILE (one sample a line) or --data tokens:random (latency only)")
    if not req.tokens and kind in ("text", "tokens"):
        raise SpecError(f"data '{spec}' gives tokens, but the model takes one float tensor",
                        hint="use token data with a token model (hf:... --task feature-extraction | causal-lm)")
    return source(arg, req)


@DATA_SOURCES.register("digits")
def _digits(arg: str, req: DataRequest) -> DataBundle:
    """scikit-learn's bundled 8x8 digits (1797 images), upsampled to 32x32, one channel."""
    input_shape = req.input_shape
    if input_shape is not None and tuple(input_shape) != (1, DIGITS_SIZE, DIGITS_SIZE):
        raise SpecError(
            f"data 'digits' gives 1x{DIGITS_SIZE}x{DIGITS_SIZE} images but the model expects {_fmt(input_shape)}",
            hint="use --data random (fidelity) or --data imagefolder:PATH for this model",
        )
    (xtr, ytr), (xca, yca), (xte, yte) = digits_splits()
    return DataBundle(
        name="digits",
        train=TensorDataset(xtr, ytr),
        calib=TensorDataset(xca, yca),
        test=TensorDataset(xte, yte),
        input_shape=(1, DIGITS_SIZE, DIGITS_SIZE),
    )


def digits_splits() -> tuple[tuple[torch.Tensor, torch.Tensor], ...]:
    """The digits images (1 x 32 x 32, in [-1, 1]) and labels of the train, calib and test splits
    (:data:`DIGITS_SPLIT` of one fixed permutation, seed 0)."""
    from sklearn.datasets import load_digits

    ds = load_digits()
    x = torch.tensor(ds.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(DIGITS_SIZE, DIGITS_SIZE), mode="bilinear", align_corners=False)
    x = (x - 0.5) / 0.5
    y = torch.tensor(ds.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    a, b, _ = DIGITS_SPLIT
    return tuple((x[idx], y[idx]) for idx in (perm[:a], perm[a:a + b], perm[a + b:]))


@DATA_SOURCES.register("random")
def _random(arg: str, req: DataRequest) -> DataBundle:
    """Gaussian inputs for latency-only runs; labels come from the unpruned model later."""
    input_shape = req.input_shape
    if input_shape is None:
        raise SpecError("data 'random' needs the model's input shape",
                        hint="pass --input-shape 3,224,224 (C,H,W)")
    g = torch.Generator().manual_seed(1234)
    shape = tuple(input_shape)

    def split(n: int) -> TensorDataset:
        return TensorDataset(torch.randn((n, *shape), generator=g), torch.full((n,), -1, dtype=torch.long))

    return DataBundle("random", split(256), split(128), split(256), shape, metric="agreement", labeled=False,
                      synthetic=True)


@DATA_SOURCES.register("imagefolder")
def _imagefolder(arg: str, req: DataRequest) -> DataBundle:
    """A torchvision ImageFolder (one sub-folder per class), split 60/20/20 by a fixed permutation."""
    from torchvision import datasets, transforms

    input_shape = req.input_shape
    DATA_CHECKS.get("imagefolder")(arg)
    root = Path(arg).expanduser()
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


@DATA_CHECKS.register("python")
def _check_python(arg: str) -> None:
    import_callable(arg, "data")


@DATA_SOURCES.register("python")
def _python(arg: str, req: DataRequest) -> DataBundle:
    """``python:module:fn``; fn(input_shape) returns a DataBundle or a dict with train/calib/test datasets (and
    optionally ``test_groups``: one group label per test sample, for per-group accuracy)."""
    input_shape = req.input_shape
    fn = import_callable(arg, "data")
    out = fn(input_shape) if _takes_arg(fn) else fn()
    if isinstance(out, DataBundle):
        return out
    if isinstance(out, dict) and {"train", "calib", "test"} <= out.keys():
        x0 = out["calib"][0][0]
        groups = out.get("test_groups")
        if groups is not None and len(groups) != len(out["test"]):
            raise SpecError(f"python:{arg} returned {len(groups)} test_groups for {len(out['test'])} test samples",
                            hint="give one group label per test sample, in the test split's order")
        return DataBundle(f"python:{arg}", out["train"], out["calib"], out["test"], tuple(x0.shape),
                          metric=out.get("metric", "top1"), labeled=out.get("labeled", True),
                          test_groups=tuple(groups) if groups is not None else None)
    raise SpecError(f"python:{arg} returned {type(out).__name__}",
                    hint="return a DataBundle or a dict with 'train', 'calib' and 'test' datasets of (x, y) "
                         "(optional: 'test_groups', one group label per test sample)")


@DATA_SOURCES.register("text")
def _text(arg: str, req: DataRequest) -> DataBundle:
    """``text:FILE``: one sample a line, tokenised by the model's tokenizer (see the module doc)."""
    DATA_CHECKS.get("text")(arg)
    path = Path(arg).expanduser()
    if req.tokenizer is None:
        raise SpecError(f"data 'text:{arg}' needs the model's tokenizer, and the model has none",
                        hint="put the tokenizer files in the hf: folder (tokenizer.save_pretrained), or use "
                             "--data tokens:random for a latency-only run")
    try:
        lines = [s.strip() for s in path.read_text(encoding="utf-8").splitlines()]
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"text file {path} is not readable UTF-8: {e}", hint="save it as UTF-8 text") from None
    lines = [s for s in lines if s and not s.startswith("#")]
    if len(lines) < 10:
        raise SpecError(f"text file {path} has {len(lines)} samples", hint="give at least 10 non-empty lines")
    seq = int((req.input_shape or (2, 128))[-1])
    perm = torch.randperm(len(lines), generator=torch.Generator().manual_seed(0)).tolist()
    a, b = int(0.6 * len(lines)), int(0.8 * len(lines))
    parts = [[lines[i] for i in perm[:a]], [lines[i] for i in perm[a:b]], [lines[i] for i in perm[b:]]]
    make = _windows if req.causal else _padded
    train, calib, test = (make(req.tokenizer, p, seq) for p in parts)
    return DataBundle(f"text:{path.name}", train, calib, test, (2, seq), metric="agreement", labeled=False)


def _unlabeled(ids: torch.Tensor, mask: torch.Tensor) -> TensorDataset:
    x = torch.stack([ids.long(), mask.long()], dim=1)
    return TensorDataset(x, torch.full((len(x),), -1, dtype=torch.long))


def _padded(tokenizer, lines: list[str], seq: int) -> TensorDataset:
    """One line a sample, padded / truncated to ``seq`` tokens."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    enc = tokenizer(lines, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return _unlabeled(enc["input_ids"], enc["attention_mask"])


def _windows(tokenizer, lines: list[str], seq: int) -> TensorDataset:
    """The lines' token stream (each line then the end-of-sequence token) cut into windows of ``seq``; a
    split shorter than one window is one sample, padded and masked."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    stream: list[int] = []
    for line in lines:
        stream += tokenizer(line, add_special_tokens=False)["input_ids"] + ([eos] if eos is not None else [])
    n = len(stream) // seq
    if n == 0:
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos or 0)
        ids = torch.tensor([stream + [pad] * (seq - len(stream))])
        mask = torch.tensor([[1] * len(stream) + [0] * (seq - len(stream))])
        return _unlabeled(ids, mask)
    ids = torch.tensor(stream[:n * seq]).view(n, seq)
    return _unlabeled(ids, torch.ones_like(ids))


@DATA_SOURCES.register("tokens")
def _tokens(arg: str, req: DataRequest) -> DataBundle:
    """``tokens:random``: uniform token ids below the vocabulary size, mask all ones (latency-only runs)."""
    if arg != "random":
        raise SpecError(f"unknown token data 'tokens:{arg}'", hint="use tokens:random, or text:FILE")
    vocab = int(req.vocab_size or 1000)
    seq = int((req.input_shape or (2, 128))[-1])
    g = torch.Generator().manual_seed(1234)

    def split(n: int) -> TensorDataset:
        ids = torch.randint(0, vocab, (n, seq), generator=g)
        return _unlabeled(ids, torch.ones_like(ids))

    return DataBundle("tokens:random", split(128), split(64), split(128), (2, seq), metric="agreement", labeled=False,
                      synthetic=True)


def with_model_labels(bundle: DataBundle, model: torch.nn.Module, metric: str = "agreement") -> DataBundle:
    """Replace labels by the unpruned model's reference for the label-free evaluator ``metric``
    (``stages.evaluate``: its argmax, its output, its per-sample NLL)."""
    from stages.evaluate import EVALUATORS

    ev = EVALUATORS.get(metric)
    if ev.reference is None:
        raise SpecError(f"evaluator '{ev.name}' needs labels, and data '{bundle.name}' has none",
                        hint="use a label-free metric (agreement, cosine, output-error, perplexity) or labelled data")

    def relabel(ds: Dataset) -> TensorDataset:
        xs = torch.stack([ds[i][0] for i in range(len(ds))])
        with torch.no_grad():
            ys = torch.cat([ev.reference(model(xs[i:i + 64]), xs[i:i + 64]) for i in range(0, len(xs), 64)])
        return TensorDataset(xs, ys)

    return replace(bundle, train=relabel(bundle.train), calib=relabel(bundle.calib), test=relabel(bundle.test),
                   metric=ev.name, labeled=False)


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
