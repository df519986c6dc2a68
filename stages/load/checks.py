"""Cheap checks of model and data specs: the name resolves, without building the model or reading the data.

``--dry-run`` and a run's first step call :func:`check_model_spec` / :func:`check_data_spec`, so a
typo in ``torchvision:resnet99``, ``example:minlm``, ``hf:./missing`` or ``text:notes.txt`` stops in
a second with the loader's own words instead of after minutes of work. A source with no entry here
is checked by its loader only (``random``, ``digits``, ``tokens``: nothing to check).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from core.errors import ModelLoadError, SpecError, did_you_mean
from core.registry import Registry

SpecCheck = Callable[[str], None]
MODEL_CHECKS: Registry[SpecCheck] = Registry("model spec check")
DATA_CHECKS: Registry[SpecCheck] = Registry("data spec check")


def check_model_spec(spec: str) -> None:
    """Raise the loader's error for a model spec whose name cannot resolve."""
    _check(spec, MODEL_CHECKS, "model")


def check_data_spec(spec: str) -> None:
    """Raise the loader's error for a data spec whose name or path cannot resolve."""
    _check(spec, DATA_CHECKS, "data")


def _check(spec: str, checks: Registry[SpecCheck], what: str) -> None:
    from stages.load.data import DATA_SOURCES
    from stages.load.models import MODEL_SOURCES

    kind, _, arg = str(spec).partition(":")
    (DATA_SOURCES if what == "data" else MODEL_SOURCES).get(kind)  # unknown source prefix
    if kind in checks:
        checks.get(kind)(arg)


@MODEL_CHECKS.register("example")
def _example(arg: str) -> None:
    from stages.load.models import EXAMPLES, example_names

    if arg not in EXAMPLES:
        raise SpecError(f"unknown example model '{arg}'.{did_you_mean(arg, EXAMPLES)}",
                        hint=f"examples: {', '.join(example_names())}")


@MODEL_CHECKS.register("torchvision")
def _torchvision(arg: str) -> None:
    import torchvision

    names = torchvision.models.list_models()
    if arg not in names:
        raise SpecError(f"unknown torchvision model '{arg}'.{did_you_mean(arg, names)}",
                        hint="see torchvision.models.list_models()")


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


@MODEL_CHECKS.register("python")
def _python_model(arg: str) -> None:
    from stages.load.data import import_callable

    import_callable(arg, "model")


@DATA_CHECKS.register("python")
def _python_data(arg: str) -> None:
    from stages.load.data import import_callable

    import_callable(arg, "data")


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
