"""Library entry points behind the CLI: run the pipeline, measure a file, import a trtexec log."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from core.errors import ConfigError
from pipeline.config import RunConfig
from pipeline.runner import RunState, default_run_dir, execute, prepare_run_dir

log = logging.getLogger("pipeline")


def saved_config(run_dir: Path) -> dict:
    """The resolved config stored in a run folder's manifest (for ``--resume``)."""
    p = Path(run_dir) / "manifest.json"
    if not p.is_file():
        raise ConfigError(f"nothing to resume in {run_dir}: no manifest.json",
                          hint="start a new run without --resume")
    try:
        return json.loads(p.read_text())["header"]["config"]
    except (json.JSONDecodeError, KeyError):
        raise ConfigError(f"{p} is unreadable", hint="start a new run in another --out folder") from None


def _model_name(spec: str) -> str:
    tail = spec.split(":", 1)[-1]
    return Path(tail).stem if "/" in tail or tail.endswith((".pt", ".pth")) else tail.rsplit(":", 1)[-1]


def plan_text(cfg: RunConfig, out: Path | None) -> str:
    """What ``--dry-run`` prints after the config: the run folder, target and stage plan."""
    from pipeline.steps import build_stages
    from targets import TARGETS

    spec = TARGETS.get(cfg.target)
    options = {**cfg.target_options, **({"device": cfg.device} if cfg.device else {})}
    spec.check_options(options)
    why = spec.unavailable_reason(options)
    lines = [f"# run folder: {out or default_run_dir(_model_name(cfg.model))}",
             f"# target: {cfg.target} ({spec.runtime}) - {'available' if why is None else 'unavailable: ' + why}",
             "# stages:"]
    for st in build_stages():
        skip = " (skipped: --policy)" if cfg.policy and st.name == "score" else ""
        mode = " (replay " + cfg.policy + ")" if cfg.policy and st.name == "tune" else ""
        lines.append(f"#   {st.name}{skip}{mode} -> {', '.join(st.outputs) or '(in memory)'}")
    return "\n".join(lines)


def check_names(cfg: RunConfig) -> None:
    """Fail before any work (and before a run folder exists) on names that cannot resolve."""
    from search import SEARCHES
    from stages.load.data import DATA_SOURCES
    from stages.load.models import MODEL_SOURCES
    from stages.prune.plan import PruningPlan
    from stages.score import CRITERIA

    MODEL_SOURCES.get(cfg.model.partition(":")[0])
    if cfg.arch:
        MODEL_SOURCES.get(cfg.arch.partition(":")[0])
    DATA_SOURCES.get(cfg.data.partition(":")[0])
    if cfg.policy:
        PruningPlan.from_file(Path(cfg.policy))
    else:
        CRITERIA.get(cfg.criterion).resolve_options(cfg.criterion_options)
        c = cfg.constraints
        SEARCHES.get(cfg.search).check(cfg.objective, c.latency_ms is not None or c.speedup is not None)


def run_pipeline(cfg: RunConfig, out: Path | None, resume: bool, ui) -> bool:
    """Run every stage; return True when the constraints are met."""
    from pipeline.steps import build_stages
    from targets import get_target

    options = {**cfg.target_options, **({"device": cfg.device} if cfg.device else {})}
    target = get_target(cfg.target, options)  # unknown/unavailable targets and options fail before any work
    check_names(cfg)
    run_dir = Path(out) if out else default_run_dir(_model_name(cfg.model))
    prepare_run_dir(run_dir, resume)
    handler = logging.FileHandler(run_dir / "logs" / "pipeline.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        ui.note(f"run folder: {run_dir}")
        state = RunState(cfg=cfg, run_dir=run_dir, ui=ui, target=target)
        records = execute(build_stages(), state, resume)
        ui.summary(state.report, records)
        ui.note(f"report: {run_dir / 'report.md'}")
        return bool(state.report["constraints"]["met"])
    finally:
        log.removeHandler(handler)
        handler.close()


def measure_file(path: Path, target_name: str, batch: int, threads: int | None, duration: float) -> dict:
    """Measure one ONNX file on a target; returns the measurement record."""
    import onnx

    from targets import MeasureSettings, get_target

    if not Path(path).is_file():
        raise ConfigError(f"ONNX file not found: {path}", hint="check the path")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path} is not an ONNX model: {str(e).splitlines()[0][:200]}",
                          hint="give a .onnx file") from None
    dims = m.graph.input[0].type.tensor_type.shape.dim
    sample = tuple(d.dim_value if d.dim_value > 0 else 1 for d in dims[1:])
    target = get_target(target_name)
    engine = target.build(Path(path), sample, Path(path).parent)
    rec = target.measure([engine], MeasureSettings(threads=threads, batch=batch, min_duration_s=duration))[0]
    return rec.with_extra(onnx_bytes=Path(path).stat().st_size).to_json()


def measure_trtexec_log(path: Path, tegrastats: Path | None) -> dict:
    """Turn a user's trtexec log (and optional tegrastats log) into a measurement record."""
    from targets.tegrastats import parse_tegrastats, summarize
    from targets.trtexec.log import parse_trtexec_log, to_measurement

    for p in (path, tegrastats):
        if p is not None and not Path(p).is_file():
            raise ConfigError(f"file not found: {p}", hint="check the path")
    try:
        result = parse_trtexec_log(Path(path).read_text(errors="replace"))
        teg = summarize(parse_tegrastats(Path(tegrastats).read_text(errors="replace"))) if tegrastats else None
    except ValueError as e:
        raise ConfigError(str(e), hint="pass the console output of trtexec (and of tegrastats)") from None
    return to_measurement(result, teg)
