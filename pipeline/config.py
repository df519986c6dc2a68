"""Run configuration: frozen pydantic models, YAML loading with line numbers, flag overrides.

The config is resolved once (defaults <- YAML file <- CLI flags) and never mutated afterwards.
A ``None`` option means "use the default of the stage or target".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import ConfigError, did_you_mean

DEFAULT_MODEL = "example:digits-resnet"
MAX_SAMPLE_ELEMENTS = 1 << 28  # one sample of 256 M floats (1 GiB) is no edge model's input: a typo
# examples/default.yaml, shipped inside the package as pipeline/default.yaml (a symlink in the
# repository; a regular file in a built wheel), so an installed `pipeline run` finds it too
DEFAULT_CONFIG = Path(__file__).resolve().parent / "default.yaml"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)  # inf would make a budget vacuous


class Constraints(_Frozen):
    """The user's budget. Latency is either absolute (``latency_ms``) or relative (``speedup``)."""

    latency_ms: float | None = Field(None, gt=0)
    speedup: float | None = Field(None, gt=0)
    memory_mb: float | None = Field(None, gt=0)
    max_accuracy_drop: float | None = Field(1.0, ge=0)
    # random inputs (--data random, tokens:random) judge agreement with noise: the floor is off on them unless
    # this is true; giving max_accuracy_drop on the command line or in your own config file sets it
    floor_on_random_data: bool = False

    @model_validator(mode="after")
    def _one_latency_form(self) -> Constraints:
        if self.latency_ms is not None and self.speedup is not None:
            raise ValueError("give either latency_ms or speedup, not both")
        if self.speedup is not None and self.speedup < 1.0:
            raise ValueError("speedup must be >= 1.0 (a slowdown is not a budget)")
        return self


class PruneConfig(_Frozen):
    round_to: int | None = Field(8, ge=1)
    ignore: tuple[str, ...] = ()
    max_ratio: float = Field(0.9, gt=0, lt=1)
    recalibrate_bn: bool = True
    recalibrate_batches: int = Field(8, ge=1)
    # depth pruning: remove this many residual blocks (lowest LD-Pruner block score first) before
    # the channel search; 0 = none
    depth_blocks: int = Field(0, ge=0)
    # weight sparsity on top of the channel plan: "0.5" (unstructured, per output row), "2:4", "4:8";
    # zeros in place, kept through recovery and export. Dense runtimes get no speedup from it.
    sparsity: str | None = None
    # a criterion with a weight-level form (declared in the criteria registry: weight_criteria())
    sparsity_criterion: str = "wanda"

    @field_validator("sparsity")
    @classmethod
    def _sparsity_spec(cls, v: str | None) -> str | None:
        if v is None:
            return v
        from stages.model.masks import MaskSpec

        MaskSpec.parse(str(v))  # raises ValueError with the accepted forms
        return str(v)

    @field_validator("sparsity_criterion")
    @classmethod
    def _weight_criterion(cls, v: str) -> str:
        from core.errors import ConfigError
        from stages.score import weight_mask_builder

        try:
            weight_mask_builder(v)
        except ConfigError as e:
            raise ValueError(str(e)) from None
        return v


class RecoveryConfig(_Frozen):
    # a registered recovery method (`pipeline recoveries`): distill | dpm | maskprune | none; unset: distill,
    # or none with search: cswap (C-SWAP prunes without fine-tuning; RunConfig._default_recovery)
    method: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)  # the method's own parameters (`pipeline recoveries`)
    steps: int = Field(150, ge=0)
    tune_steps: int = Field(30, ge=0)
    batch_size: int = Field(64, ge=1)
    # auto: AdamW for transformers (recognised self-attention or token inputs), SGD otherwise (stages/recover/distill.py)
    optimizer: Literal["auto", "sgd", "adamw"] = "auto"
    lr: float | None = Field(None, gt=0)  # None: the optimiser's default (sgd 0.01, adamw 1e-4)
    temperature: float = Field(4.0, gt=0)
    alpha: float = Field(0.5, ge=0, le=1)
    # auto: KD (kl on logits, a relative feature error on embeddings); pw: the performance-weighted loss of
    # Meyer & Wong (class logits with labels; stages/recover/distill.py)
    loss: Literal["auto", "pw"] = "auto"
    pw_min_weight: float = Field(0.75, ge=0, le=1)
    pw_gamma: float = Field(5.0, ge=0)
    # gradient-flow soft pruning: over this many steps the pruned channels' masks decay to 0 while
    # the model trains, before the hard removal; 0 = hard prune first (the default)
    soft_steps: int = Field(0, ge=0)
    # [RECON] the soft phase (stages/recover/soft.py): removed masks move by m <- clip(m - eta * dE/dm, 0, 1 - k/K),
    # E = KD loss + beta * sum(S~ * m), S~ the gradient-flow saliency over its mean |S|; S recomputed every
    # soft_rescore steps (0 = once, at the start)
    soft_beta: float = Field(0.01, ge=0)
    soft_eta: float = Field(1.0, gt=0)
    soft_rescore: int = Field(0, ge=0)

    @field_validator("method")
    @classmethod
    def _registered_method(cls, v: str | None) -> str | None:
        from core.errors import PipelineError
        from stages.recover import RECOVERIES

        if v is None:
            return v
        try:
            return RECOVERIES.get(v).name
        except PipelineError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None

    @model_validator(mode="after")
    def _known_options(self) -> RecoveryConfig:
        from core.errors import PipelineError
        from stages.recover import RECOVERIES

        try:
            RECOVERIES.get(self.method or "distill").resolve_options(self.options)
        except PipelineError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return self


class ExportConfig(_Frozen):
    opset: int = Field(18, ge=13, le=23)
    exporter: Literal["legacy", "dynamo"] = "legacy"
    atol: float = Field(1e-4, gt=0)
    rtol: float = Field(1e-3, gt=0)
    parity_samples: int = Field(16, ge=1)


class MeasureConfig(_Frozen):
    threads: int | None = Field(None, ge=1)
    batch: int = Field(1, ge=1)
    warmup_s: float = Field(0.3, ge=0)
    min_duration_s: float = Field(1.0, gt=0)
    min_iters: int = Field(50, ge=1)
    final_rounds: int = Field(3, ge=1)  # per call of the final measurement (more calls until the verdict decides)
    verdict_cap_s: float = Field(120.0, ge=0)  # the final measurement's time cap; undecided then: inconclusive (exit 3)
    verdict_level: float = Field(0.95, gt=0.5, lt=1.0)  # coverage of the speedup / latency interval
    cv_warn: float = Field(0.25, gt=0)  # warn when the final latency's CV (or the per-round ratios') is above this
    candidate_rounds: int = Field(3, ge=1)
    candidate_duration_s: float = Field(0.3, gt=0)


class TuneConfig(_Frozen):
    step: float = Field(0.2, gt=0, lt=1)
    min_step: float = Field(0.02, gt=0, lt=1)
    max_candidates: int = Field(16, ge=1)
    time_limit_s: float = Field(600.0, gt=0)
    latency_margin: float = Field(0.05, ge=0, lt=0.5)
    initial_reduction: float = Field(0.1, gt=0, lt=1)
    decay: float = Field(0.96, gt=0, le=1)
    lut_points: int = Field(6, ge=2, le=64)
    # search: optuna
    storage: str | None = None  # Optuna storage URL; None = sqlite:///<run folder>/study.db
    study: str | None = None  # study name; None = "edge-<run folder name>"
    sampler: Literal["nsga2", "tpe"] = "nsga2"
    families: Literal["stage", "block", "group"] = "stage"  # one keep ratio per stage / block / group
    keep_step: float = Field(0.05, gt=0, lt=1)  # grid step of the per-family keep ratios
    recover_top: int = Field(3, ge=1)  # feasible trials recovered before the final choice
    uniform: bool = False  # MaskPrune: one kept width per family (all blocks of a stage, ...)


class RunConfig(_Frozen):
    """Everything ``pipeline run`` needs. Field names are the YAML keys."""

    model: str = DEFAULT_MODEL
    arch: str | None = None
    task: str | None = None  # hf: models: the Auto class and contract (stages/load/hf.py)
    output: str | None = None  # hf: models: the output key read (default: the task's)
    data: str | None = None  # None: the model's own data (example models), else digits
    metric: str | None = None  # a registered evaluator; None: top1 with labels, else the model's label-free one
    input_shape: tuple[int, ...] | None = None
    target: str = "cpu"
    target_options: dict[str, Any] = Field(default_factory=dict)
    device: str | None = None
    objective: Literal["latency", "memory", "accuracy"] = "latency"
    constraints: Constraints = Constraints()
    criterion: str = "magnitude-l2"
    criterion_options: dict[str, Any] = Field(default_factory=dict)  # the criterion's free parameters
    search: str = "global"  # a registered search (`pipeline searches`); checked before any work
    policy: str | None = None
    seed: int = 0
    trust_checkpoint: bool = False  # command line only (--trust-checkpoint): a config file may not set it
    load_timeout_s: float = Field(600.0, gt=0)  # user code (python: factories, data functions) may hang
    prune: PruneConfig = PruneConfig()
    recovery: RecoveryConfig = RecoveryConfig()
    export: ExportConfig = ExportConfig()
    measure: MeasureConfig = MeasureConfig()
    tune: TuneConfig = TuneConfig()

    @model_validator(mode="before")
    @classmethod
    def _default_recovery(cls, data: Any) -> Any:
        """An unset ``recovery.method``: ``none`` with ``search: cswap``, else ``distill``."""
        if not isinstance(data, dict):
            return data
        rec = data.get("recovery")
        rec = rec.model_dump(exclude_unset=True) if isinstance(rec, BaseModel) else dict(rec or {})
        if rec.get("method") is None:
            rec["method"] = "none" if data.get("search") == "cswap" else "distill"
            return {**data, "recovery": rec}
        return data

    @field_validator("input_shape")
    @classmethod
    def _bounded_shape(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is None:
            return v
        if not v or any(d < 1 for d in v):
            raise ValueError(f"every dimension must be >= 1, got {v}")
        n = 1
        for d in v:
            n *= d
        if n > MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"{'x'.join(map(str, v))} is {n:,} values per sample, more than {MAX_SAMPLE_ELEMENTS:,}: "
                             "a typo? (give C,H,W of one sample)")
        return v

    @field_validator("metric")
    @classmethod
    def _registered_metric(cls, v: str | None) -> str | None:
        from core.errors import PipelineError
        from stages.evaluate import EVALUATORS

        if v is None:
            return v
        try:
            return EVALUATORS.get(v).name
        except PipelineError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None

    @field_validator("task")
    @classmethod
    def _known_task(cls, v: str | None) -> str | None:
        from stages.load.hf import TASKS

        if v is not None and v not in TASKS:
            raise ValueError(f"unknown task '{v}' (tasks: {', '.join(TASKS)})")
        return v

    @field_validator("search")
    @classmethod
    def _registered_search(cls, v: str) -> str:
        from core.errors import PipelineError
        from search import SEARCHES

        try:
            SEARCHES.get(v)
        except PipelineError as e:
            raise ValueError(f"{e.message} ({e.hint})") from None
        return v

    @model_validator(mode="after")
    def _objective_has_budget(self) -> RunConfig:
        from search import SEARCHES
        from stages.recover import RECOVERIES

        c = self.constraints
        if SEARCHES.get(self.search).needs_budget or self.policy:
            if self.objective == "latency" and c.latency_ms is None and c.speedup is None:
                raise ValueError("objective 'latency' needs constraints.latency_ms or constraints.speedup")
            if self.objective == "memory" and c.memory_mb is None:
                raise ValueError("objective 'memory' needs constraints.memory_mb")
            if self.objective == "accuracy" and c.max_accuracy_drop is None:
                raise ValueError("objective 'accuracy' needs constraints.max_accuracy_drop")
        r = self.recovery
        if r.soft_steps and r.soft_steps > r.steps:
            raise ValueError(f"recovery.soft_steps ({r.soft_steps}) exceeds recovery.steps ({r.steps}): "
                             "the soft steps are part of recovery.steps")
        if (r.method or "distill") == "distill" and not r.soft_steps and \
                RECOVERIES.get("distill").resolve_options(r.options).get("select"):
            raise ValueError("recovery option select=true chooses channels during the gradient-flow soft phase, and "
                             "recovery.soft_steps is 0: add --phase-steps K (K > 0), or drop select")
        if (r.soft_steps or r.method in ("dpm", "maskprune")) and self.prune.sparsity:
            what = f"recovery.method {r.method}" if r.method in ("dpm", "maskprune") else "recovery.soft_steps"
            raise ValueError(f"{what} is not combined with prune.sparsity yet: drop one of them")
        return self


_SECTIONS = {
    "constraints": Constraints,
    "prune": PruneConfig,
    "recovery": RecoveryConfig,
    "export": ExportConfig,
    "measure": MeasureConfig,
    "tune": TuneConfig,
}


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    if len(loc) >= 2 and loc[0] in _SECTIONS:
        return list(_SECTIONS[loc[0]].model_fields)
    return list(RunConfig.model_fields)


def _format_validation(err: ValidationError, source: str) -> ConfigError:
    first = err.errors()[0]
    loc = tuple(x for x in first["loc"] if not isinstance(x, int))
    key = ".".join(str(x) for x in loc) or "config"
    if first["type"] == "extra_forbidden":
        name = str(loc[-1])
        return ConfigError(
            f"{source}: unknown config key '{key}'.{did_you_mean(name, _known_keys(loc))}",
            hint="see examples/default.yaml for every key",
        )
    msg = first["msg"].removeprefix("Value error, ")
    return ConfigError(f"{source}: {key}: {msg}", hint="fix the value and run again")


MAX_CONFIG_BYTES = 1 << 20  # a run config is a few kB; a bigger file is not one
MAX_YAML_ALIASES = 64  # anchors are fine; an alias bomb (billions of laughs) is refused before it expands
MAX_YAML_NODES = 100_000  # values after aliases are expanded (what model_dump and every digest will walk)


class _BoundedLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses documents with more than :data:`MAX_YAML_ALIASES` aliases."""

    def compose_node(self, parent, index):  # noqa: ANN001 - PyYAML's signature
        if self.check_event(yaml.AliasEvent):
            self._aliases = getattr(self, "_aliases", 0) + 1
            if self._aliases > MAX_YAML_ALIASES:
                raise yaml.YAMLError(f"more than {MAX_YAML_ALIASES} aliases (*name): refused")
        return super().compose_node(parent, index)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping; syntax errors name the line. Bounded: size and alias count."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}", hint="check the path given to --config")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path} is {path.stat().st_size} bytes: not a run config (at most {MAX_CONFIG_BYTES})",
                          hint="give the YAML run config (see examples/default.yaml)")
    try:
        data = yaml.load(path.read_text(errors="replace"), Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: YAML syntax error{where}: {problem}", hint="fix the YAML syntax") from None
    if data is None:
        return {}
    if _expanded_nodes(data, MAX_YAML_NODES) > MAX_YAML_NODES:
        raise ConfigError(f"{path}: more than {MAX_YAML_NODES:,} values once its aliases are expanded",
                          hint="a run config is a few dozen keys: remove the aliases (*name) that repeat large parts")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}",
                          hint="see examples/default.yaml")
    return data


def _expanded_nodes(obj: Any, limit: int) -> int:
    """Values in ``obj`` counting every reference again (as serialising it would), stopping past ``limit``."""
    n, todo = 0, [obj]
    while todo and n <= limit:
        x = todo.pop()
        n += 1
        if isinstance(x, dict):
            todo.extend(x.values())
        elif isinstance(x, (list, tuple)):
            todo.extend(x)
    return n


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def resolve_config(config_path: Path | None, overrides: dict[str, Any],
                   base: dict[str, Any] | None = None) -> RunConfig:
    """Build the frozen RunConfig from an optional YAML file and flag overrides.

    Args:
        config_path: YAML file; ``None`` means the embedded default (examples/default.yaml).
        overrides: Nested dict of values given on the command line (``None`` values are ignored).
            A latency flag given on the command line replaces the file's latency form.
        base: A saved, already resolved config (``--resume``) used instead of the YAML file.

    Raises:
        ConfigError: on syntax errors, unknown keys, or invalid values.
    """
    path = config_path or DEFAULT_CONFIG
    source = str(path) if config_path else "config"
    if base is not None:
        data = dict(base)
    else:
        data = read_yaml(path) if (config_path or DEFAULT_CONFIG.is_file()) else {}
        _check_file_data(data, source)
    clean = _drop_none(overrides)
    cons = clean.get("constraints", {})
    if ("latency_ms" in cons) != ("speedup" in cons) and isinstance(data.get("constraints"), dict):
        # a latency budget on the command line replaces the file's latency form
        data = _merge(data, {"constraints": {"latency_ms": None, "speedup": None}})
    merged = _merge(data, clean)
    if _floor_asked(config_path, data, clean):
        merged = _merge(merged, {"constraints": {"floor_on_random_data": True}})
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        raise _format_validation(e, _source_of(e, clean, source)) from None


def _floor_asked(config_path: Path | None, data: dict[str, Any], given: dict[str, Any]) -> bool:
    """Whether the user asked for the accuracy floor themselves: ``--max-accuracy-drop``, or the key in their own
    config file (the embedded default's 1.0 does not count; a resumed run keeps what it stored)."""
    if "max_accuracy_drop" in given.get("constraints", {}):
        return True
    cons = data.get("constraints")
    return config_path is not None and isinstance(cons, dict) and cons.get("max_accuracy_drop") is not None


def _check_file_data(data: dict[str, Any], source: str) -> None:
    """A config file may not hand out trust, and its sections must be mappings (a flag must not silently
    replace a wrongly typed section)."""
    if data.get("trust_checkpoint"):
        raise ConfigError(f"{source}: trust_checkpoint can only be given on the command line",
                          hint="pass --trust-checkpoint: a file must not decide to load pickled code")
    data.pop("trust_checkpoint", None)
    for name in _SECTIONS:
        if name in data and data[name] is not None and not isinstance(data[name], dict):
            raise ConfigError(f"{source}: {name} must be a mapping of keys, got {type(data[name]).__name__}",
                              hint=f"write it as '{name}: {{key: value}}' (see examples/default.yaml)")


def _source_of(err: ValidationError, given: dict[str, Any], source: str) -> str:
    """Where the first invalid value came from: the flag that gave it, else the file."""
    loc = tuple(str(x) for x in err.errors()[0]["loc"] if not isinstance(x, int))
    node: Any = given
    for part in loc:
        if not isinstance(node, dict) or part not in node:
            return source
        node = node[part]
    if not loc or isinstance(node, dict):  # a whole-config or whole-section check: not one flag's value
        return source
    from pipeline.run_options import RUN_OPTIONS

    flag = next((o.name for o in RUN_OPTIONS if o.key == ".".join(loc)), None)
    return f"--{flag.replace('_', '-')}" if flag else "command line"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        elif v is not None:
            out[k] = v
    return out


def config_to_yaml(cfg: RunConfig) -> str:
    """The resolved config as YAML (for --dry-run and the run folder)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
