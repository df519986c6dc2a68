"""The options of ``pipeline run``, declared once: flag, type, help, and the config key each one sets.

``pipeline run`` is a thin shell: every option is a row of :data:`RUN_OPTIONS`, the command's
signature is generated from the table (:func:`signature`), and :func:`overlay` turns the given
values into the nested overrides :func:`pipeline.config.resolve_config` lays over the YAML file.
Adding a flag that sets a config key is one row here.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from core.errors import ConfigError


def shape(text: str | None) -> tuple[int, ...] | None:
    """``C,H,W`` (or ``CxHxW``) as a tuple of positive ints."""
    if text is None:
        return None
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"bad --input-shape '{text}'", hint="give C,H,W, e.g. 3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"bad --input-shape '{text}'", hint="give positive C,H,W, e.g. 3,224,224")
    return dims


def key_values(items: list[str] | None, flag: str = "--target-option",
               example: str = "device_profile=orin-nano-8gb") -> dict | None:
    """Repeated ``KEY=VALUE`` flags as a dict, values read as YAML (numbers and booleans)."""
    if not items:
        return None
    import yaml

    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad {flag} '{item}'", hint=f"use KEY=VALUE, e.g. {example}")
        out[key.strip()] = yaml.safe_load(value)
    return out


@dataclass(frozen=True)
class Opt:
    """One ``pipeline run`` option.

    Attributes:
        name: The parameter name (``--name-with-dashes`` on the command line).
        type: Its Python type (``Optional[str]``, ``bool``, ...).
        help: The help line.
        key: The config key it sets (dotted: ``constraints.speedup``); ``None`` for options the
            command itself reads (``--config``, ``--out``, ...).
        convert: Turns the raw value into the config value (``--input-shape``, ``KEY=VALUE`` lists).
        flags: Explicit flag spellings (``("--config", "-c")``); default ``--name-with-dashes``.
        default: The value when the option is not given (``None``: "use the config's").
    """

    name: str
    type: Any
    help: str
    key: str | None = None
    convert: Callable[[Any], Any] | None = None
    flags: tuple[str, ...] = ()
    default: Any = None


S, I, F, P = Optional[str], Optional[int], Optional[float], Optional[Path]  # noqa: E741 - short column types

RUN_OPTIONS: tuple[Opt, ...] = (
    Opt("config", P, "YAML config (default: examples/default.yaml)", flags=("--config", "-c")),
    Opt("model", S, "example:NAME | torchvision:NAME | timm:NAME | hf:PATH_OR_ID | file:PATH | python:mod:fn",
        "model"),
    Opt("arch", S, "architecture spec for a file: state_dict", "arch"),
    Opt("task", S, "hf: models: feature-extraction | sequence-classification | image-classification | causal-lm",
        "task"),
    Opt("output", S, "hf: models: the output read (a key of the model's output, or an index)", "output"),
    Opt("data", S, "digits | imagefolder:PATH | random | text:FILE | tokens:random | python:mod:fn "
                   "(default: the model's own, else digits)", "data"),
    Opt("metric", S, "evaluator (see `pipeline metrics`; default: top1 with labels, else the model's)", "metric"),
    Opt("input_shape", S, "sample shape C,H,W (token models: the sequence length L)", "input_shape", shape),
    Opt("target", S, "target name (see `pipeline targets`)", "target"),
    Opt("device", S, "user@host[:port] of a remote device", "device"),
    Opt("target_option", Optional[list[str]], "KEY=VALUE target option (repeatable)", "target_options",
        key_values),
    Opt("objective", S, "latency | memory | accuracy", "objective"),
    Opt("latency_ms", F, "latency budget in ms (median, batch from config)", "constraints.latency_ms"),
    Opt("speedup", F, "latency budget as speedup over the unpruned model", "constraints.speedup"),
    Opt("memory_mb", F, "memory budget in MB", "constraints.memory_mb"),
    Opt("max_accuracy_drop", F, "accuracy floor: max drop in points", "constraints.max_accuracy_drop"),
    Opt("criterion", S, "scoring criterion (see `pipeline criteria`)", "criterion"),
    Opt("criterion_option", Optional[list[str]], "KEY=VALUE criterion parameter (repeatable; see `pipeline criteria`)",
        "criterion_options", lambda v: key_values(v, "--criterion-option", "alpha=0.01")),
    Opt("search", S, "search strategy (see `pipeline searches`)", "search"),
    Opt("policy", P, "replay a policy.json instead of searching", "policy", lambda v: str(v) if v else None),
    Opt("recovery_method", S, "distill | dpm | maskprune | none (see `pipeline recoveries`)", "recovery.method"),
    Opt("recovery_option", Optional[list[str]], "KEY=VALUE recovery-method parameter (repeatable)",
        "recovery.options", lambda v: key_values(v, "--recovery-option", "t_len=2")),
    Opt("recovery_steps", I, "recovery steps after pruning (0 = none)", "recovery.steps"),
    Opt("phase_steps", I, "of those, steps before the hard removal (soft masks, DPM decay, MaskPrune masks)",
        "recovery.soft_steps"),
    Opt("recovery_loss", S, "recovery loss: auto (KD) | pw (performance-weighted, class labels)", "recovery.loss"),
    Opt("threads", I, "runtime threads (default: physical cores)", "measure.threads"),
    Opt("out", P, "run folder (default runs/<UTC>-<model>)"),
    Opt("resume", bool, "continue the run in --out, rerunning only stale stages", default=False),
    Opt("overwrite", bool, "start over in a folder that holds a run, or write into a non-empty one", default=False),
    Opt("dry_run", bool, "print the resolved config and stage plan; run nothing", default=False),
    Opt("seed", I, "random seed", "seed"),
    Opt("trust_checkpoint", bool, "allow loading pickled modules from file: checkpoints", "trust_checkpoint",
        lambda v: True if v else None, default=False),
    Opt("quiet", bool, "print only the final tables", flags=("--quiet", "-q"), default=False),
    Opt("uniform", bool, "one kept width per family (all blocks of a stage) in greedy / optuna (tune.uniform)",
        "tune.uniform", lambda v: True if v else None, flags=("--uniform",), default=False),
)


def signature() -> inspect.Signature:
    """The typer signature of ``pipeline run``: one keyword parameter per row of :data:`RUN_OPTIONS`."""
    params = []
    for o in RUN_OPTIONS:
        option = typer.Option(*o.flags, help=o.help) if o.flags else typer.Option(help=o.help)
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, default=o.default,
                                        annotation=Annotated[o.type, option]))
    return inspect.Signature(params, return_annotation=None)


def overlay(values: Mapping[str, Any]) -> dict[str, Any]:
    """The nested config overrides of the given option values (``None``: not given, the config's value stays)."""
    out: dict[str, Any] = {}
    for o in RUN_OPTIONS:
        if o.key is None:
            continue
        v = values.get(o.name)
        v = o.convert(v) if o.convert is not None else v
        *path, leaf = o.key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = v
    return out
