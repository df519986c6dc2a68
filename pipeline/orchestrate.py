"""Library entry points behind the CLI: run the pipeline, measure a file, import a trtexec log."""

from __future__ import annotations

import contextlib
import json
import logging
import signal
from pathlib import Path

from core.errors import ConfigError, PipelineError
from pipeline import settings
from pipeline.config import RunConfig
from pipeline.preflight import check_names
from pipeline.runner import RunState, default_run_dir, execute

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
    options = settings.target_options(cfg)
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


def run_pipeline(cfg: RunConfig, out: Path | None, resume: bool, ui, overwrite: bool = False) -> dict:
    """Run every stage in a run folder this process owns; return report.json's ``constraints`` (its
    ``verdict``: met, not_met or inconclusive).

    SIGTERM (a CI runner cancelling the job) is turned into :class:`core.errors.Terminated` while
    the run lasts: the current stage is recorded ``interrupted``, atomic writes leave no partial
    file, and ``--resume`` continues.
    """
    from pipeline.runfolder import RunFolder
    from pipeline.steps import build_stages
    from targets import get_target

    options = settings.target_options(cfg)
    target = get_target(cfg.target, options)  # unknown/unavailable targets and options fail before any work
    check_names(cfg)
    run_dir = Path(out) if out else default_run_dir(_model_name(cfg.model))
    with RunFolder(run_dir, resume=resume, overwrite=overwrite), _terminated_on_sigterm():
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
            return state.report["constraints"]
        except PipelineError:
            raise
        except Exception as e:  # noqa: BLE001 - unexpected: the traceback into the run's log, one line on the terminal
            log.exception("unexpected failure")
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
            raise PipelineError(f"unexpected {type(e).__name__}: {first}",
                                hint=f"the traceback is in {handler.baseFilename}; please report it") from None
        finally:
            log.removeHandler(handler)
            handler.close()


@contextlib.contextmanager
def _terminated_on_sigterm():
    """While the block runs, SIGTERM raises :class:`core.errors.Terminated` in the main thread."""
    from core.errors import Terminated

    def handler(signum, frame):
        raise Terminated()

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old if old is not None else signal.SIG_DFL)


def measure_file(path: Path, target_name: str, batch: int, threads: int | None, duration: float,
                 options: dict | None = None) -> dict:
    """Measure one ONNX file on a target (``options``: its target options, ``device`` included); returns the
    contract's measurement record (``M`` of report.json: params and MACs counted from the ONNX graph, accuracy
    null: ``measure`` has no data)."""
    import onnx

    from core.records import Measurement
    from targets import MeasureSettings, get_target
    from targets.onnx_facts import onnx_params_macs

    if not Path(path).is_file():
        raise ConfigError(f"ONNX file not found: {path}", hint="check the path")
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path} is not an ONNX model: {str(e).splitlines()[0][:200]}",
                          hint="give a .onnx file") from None
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if not inputs:
        raise ConfigError(f"{path} has no graph input: nothing to feed", hint="export the model with an input")
    sample = _sample_shape(path, inputs)
    target = get_target(target_name, options)
    engine = target.build(Path(path), sample, Path(path).parent)
    rec = target.measure([engine], MeasureSettings(threads=threads, batch=batch, min_duration_s=duration))[0]
    params, macs = onnx_params_macs(m, sample)
    return Measurement.from_timing(rec, onnx_bytes=Path(path).stat().st_size, params=params, macs=macs,
                                   accuracy=None, metric=None).to_json()


INTEGER_TYPES = (6, 7, 9)  # onnx TensorProto INT32, INT64, BOOL
TOKEN_AXIS = 128  # a dynamic axis of an integer (token) input is timed at this length


def _sample_shape(path: Path, inputs: list) -> tuple[int, ...]:
    """One sample's shape for timing: the first input's non-batch dims (dynamic ones: 1, or
    :data:`TOKEN_AXIS` for integer inputs); several inputs of one shape are packed in front, as
    the pipeline's token models are (``stages.model.contract``)."""
    def shape(inp) -> tuple[int, ...]:
        fill = TOKEN_AXIS if inp.type.tensor_type.elem_type in INTEGER_TYPES else 1
        return tuple(d.dim_value if d.dim_value > 0 else fill for d in inp.type.tensor_type.shape.dim[1:])

    shapes = {shape(i) for i in inputs}
    if len(shapes) > 1:
        raise ConfigError(f"{path} has inputs of different shapes ({', '.join(i.name for i in inputs)}): "
                          "this version times inputs that share one shape",
                          hint="measure it through `pipeline run`, or export one input per shape")
    sample = shapes.pop()
    return (len(inputs), *sample) if len(inputs) > 1 else sample


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
