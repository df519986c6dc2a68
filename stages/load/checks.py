"""Cheap checks of model and data specs: the name resolves, without building the model or reading the data.

``--dry-run`` and a run's first step call :func:`check_model_spec` / :func:`check_data_spec`, so a
typo in ``torchvision:resnet99``, ``example:minlm``, ``hf:./missing`` or ``text:notes.txt`` stops in
a second with the loader's own words instead of after minutes of work. A source with no entry here
is checked by its loader only (``random``, ``digits``, ``tokens``: nothing to check).

The checks that need what a source module owns (the example table, ``import_callable``) are
registered by that module (:mod:`stages.load.models`, :mod:`stages.load.data`), so this module
imports neither (the import contract forbids the cycle). Callers import the source modules first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.errors import ModelLoadError, SpecError, did_you_mean
from core.registry import Registry

SpecCheck = Callable[[str], None]
MODEL_CHECKS: Registry[SpecCheck] = Registry("model spec check")
DATA_CHECKS: Registry[SpecCheck] = Registry("data spec check")


def check_spec(spec: str, checks: Registry[SpecCheck]) -> None:
    """Run the cheap check of ``spec``'s source, if it has one (the source prefix itself is the caller's)."""
    kind, _, arg = str(spec).partition(":")
    if kind in checks:
        checks.get(kind)(arg)


@MODEL_CHECKS.register("torchvision")
def _torchvision(arg: str) -> None:
    import torchvision

    names = torchvision.models.list_models()
    if arg not in names:
        raise SpecError(f"unknown torchvision model '{arg}'.{did_you_mean(arg, names)}",
                        hint="see torchvision.models.list_models()")
    if arg in torchvision.models.list_models(module=torchvision.models.detection) or \
            arg in torchvision.models.list_models(module=torchvision.models.optical_flow):
        raise SpecError(f"torchvision model '{arg}' returns a list of per-image results of varying size (boxes, "
                        "masks, flows), which the pipeline's one-output contract cannot carry yet",
                        hint="for detection use an Ultralytics YOLO (ultralytics:yolov8n, ultralytics:yolo11n); or "
                             "wrap the backbone as python:module:factory")


@MODEL_CHECKS.register("timm")
def _timm(arg: str) -> None:
    try:
        import timm
    except ImportError:
        raise SpecError("timm is not installed", hint="pip install '.[timm]'") from None
    if not timm.is_model(arg):
        raise SpecError(f"unknown timm model '{arg}'.{did_you_mean(arg, timm.list_models())}",
                        hint="see timm.list_models('*pattern*')")


@MODEL_CHECKS.register("hf")
def _hf(arg: str) -> None:
    from stages.load.hf import resolve_folder

    resolve_folder(arg)


@MODEL_CHECKS.register("file")
def _file(arg: str) -> None:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"model file not found: {path}", hint="check the path after file:")


@DATA_CHECKS.register("imagefolder")
def _imagefolder(arg: str) -> None:
    path = Path(arg).expanduser()
    if not path.is_dir():
        raise SpecError(f"imagefolder path not found: {path}", hint="give a folder with one sub-folder per class")


@DATA_CHECKS.register("text")
def _text(arg: str) -> None:
    path = Path(arg).expanduser()
    if not path.is_file():
        raise SpecError(f"text file not found: {path}", hint="give a UTF-8 file with one sample a line")
