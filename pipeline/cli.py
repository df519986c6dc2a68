"""``pipeline``: the command line. A thin shell over the library; each subcommand's docstring is its help.

Exit codes (:data:`EXIT_CODES`): 0 = done, constraints met; 1 = done, constraints not met; 2 = bad
input or failure (one line and a hint, never a traceback on the terminal); 3 = inconclusive (the
latency interval still straddled the budget when the measurement cap was reached); 130 = interrupted
(Ctrl-C); 143 = terminated (SIGTERM, as CI runners send on cancel). After 130 or 143 the run folder
is consistent and ``--resume`` continues it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from core.errors import ConfigError, PipelineError

app = typer.Typer(add_completion=True, rich_markup_mode=None, no_args_is_help=True, pretty_exceptions_enable=False,
                  context_settings={"help_option_names": ["-h", "--help"]},
                  help="Prune a PyTorch model until a latency / memory / accuracy budget holds on the target device.")

EXIT_MET, EXIT_UNMET, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_INTERRUPTED, EXIT_TERMINATED = 0, 1, 2, 3, 130, 143
EXIT_CODES = {EXIT_MET: "constraints met", EXIT_UNMET: "constraints not met (the report says which)",
              EXIT_ERROR: "bad input or failure (one line and a hint)",
              EXIT_INCONCLUSIVE: "inconclusive: the latency interval still straddled the budget at the measurement "
                                 "cap (the report gives the interval and what to do)",
              EXIT_INTERRUPTED: "interrupted (Ctrl-C)", EXIT_TERMINATED: "terminated (SIGTERM)"}
VERDICT_EXIT = {"met": EXIT_MET, "not_met": EXIT_UNMET, "inconclusive": EXIT_INCONCLUSIVE}


def verdict_exit(constraints: dict) -> int:
    """The exit code of a report's verdict (a report written before verdicts had three states: by ``met``)."""
    status = constraints.get("verdict") or ("met" if constraints.get("met") else "not_met")
    return VERDICT_EXIT[status]


def _version(value: bool) -> None:
    if value:
        from pipeline.versions import versions

        v = versions()
        typer.echo(f"edge-pipeline {v.get('edge-pipeline', '?')} (torch {v.get('torch', '?')}, "
                   f"onnxruntime {v.get('onnxruntime', '?')})")
        raise typer.Exit(EXIT_MET)


@app.callback()
def _root(version: Annotated[bool, typer.Option("--version", "-V", is_eager=True, callback=_version,
                                                help="print the version and exit")] = False) -> None:
    """Prune a PyTorch model until a latency / memory / accuracy budget holds on the target device."""


def _interruptible(fn):
    """Ctrl-C and SIGTERM inside a command become :class:`core.errors.Interrupted` (exit 130 / 143): the CLI
    framework would otherwise turn every KeyboardInterrupt into a bare exit 130."""
    import functools

    @functools.wraps(fn)
    def inner(*args, **kwargs):
        from core.errors import Interrupted, Terminated

        try:
            return fn(*args, **kwargs)
        except Terminated:
            raise Interrupted("terminated (SIGTERM)", EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            raise Interrupted("interrupted", EXIT_INTERRUPTED) from None

    return inner


def run(**opts) -> None:
    """Prune, recover, export, build and measure; exit 0 if the constraints hold, 1 if not, 3 if too noisy to tell."""
    from pipeline.config import config_to_yaml, resolve_config
    from pipeline.console import Console
    from pipeline.orchestrate import plan_text, run_pipeline
    from pipeline.run_options import overlay

    config, out, resume = opts["config"], opts["out"], opts["resume"]
    overrides = overlay(opts)
    if resume and out is None:
        raise ConfigError("--resume needs --out RUN_DIR", hint="pass the folder of the run to continue")
    base = None
    if resume and config is None:
        from pipeline.orchestrate import saved_config

        # trust comes from this command line only, never from the folder being resumed
        base = {**saved_config(out), "trust_checkpoint": bool(opts["trust_checkpoint"])}
    cfg = resolve_config(config, overrides, base=base)
    if opts["dry_run"]:
        from pipeline.preflight import check_names

        check_names(cfg)  # every check a run makes before its first stage that needs no model
        typer.echo(config_to_yaml(cfg))
        typer.echo(plan_text(cfg, out))
        raise typer.Exit(EXIT_MET)
    ui = Console(quiet=opts["quiet"])
    constraints = run_pipeline(cfg, out, resume=resume, ui=ui, overwrite=opts["overwrite"])
    raise typer.Exit(verdict_exit(constraints))


def _register_run() -> None:
    from pipeline.run_options import signature

    run.__signature__ = signature()  # the options are declared once, in pipeline.run_options.RUN_OPTIONS
    app.command("run")(_interruptible(run))


_register_run()


@app.command()
def measure(
    model: Annotated[Optional[Path], typer.Argument(help="ONNX file to measure")] = None,
    target: Annotated[str, typer.Option(help="target name (see `pipeline targets`)")] = "cpu",
    device: Annotated[Optional[str], typer.Option(help="user@host[:port] of a remote device (jetson)")] = None,
    target_option: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE target option (repeatable)")] = None,
    batch: Annotated[int, typer.Option(min=1, max=65536, help="batch size")] = 1,
    threads: Annotated[Optional[int], typer.Option(min=1, max=1024, help="runtime threads (default: physical cores)")] = None,
    duration: Annotated[float, typer.Option(min=0.01, max=3600, help="minimum timed seconds")] = 2.0,
    from_trtexec_log: Annotated[Optional[Path], typer.Option(help="turn a trtexec log into a measurement record")] = None,
    tegrastats: Annotated[Optional[Path], typer.Option(help="tegrastats log recorded during the trtexec run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the measurement record as JSON")] = False,
) -> None:
    """Measure one ONNX file on a target (latency stats, memory), or import a trtexec log."""
    from pipeline.orchestrate import measure_file, measure_trtexec_log

    if from_trtexec_log is not None:
        rec = measure_trtexec_log(from_trtexec_log, tegrastats)
    elif model is not None:
        from pipeline.run_options import key_values

        options = {**(key_values(target_option) or {}), **({"device": device} if device else {})}
        rec = measure_file(model, target, batch, threads, duration, options)
    else:
        raise ConfigError("give an ONNX file or --from-trtexec-log FILE", hint="pipeline measure model.onnx --json")
    if as_json:
        typer.echo(json.dumps(rec, indent=2))
        return
    lat = rec["latency_ms"]
    typer.echo(f"{rec['measured_on']}")
    typer.echo(f"latency ms: median {lat['median']:.4f}  p90 {lat['p90']:.4f}  p99 {lat['p99']:.4f}  "
               f"cv {100 * (lat.get('cv') or 0):.1f}%")
    if rec.get("throughput") is not None:
        typer.echo(f"throughput: {rec['throughput']:.1f} /s")
    if rec.get("memory_mb") is not None:
        typer.echo(f"memory: {rec['memory_mb']:.1f} MB")
    if rec.get("params") is not None:
        macs = f"  MACs {rec['macs'] / 1e6:.1f} M" if rec.get("macs") is not None else ""
        typer.echo(f"params: {rec['params'] / 1e6:.3f} M{macs}")


@app.command()
def targets() -> None:
    """List the targets, whether each is available here, and why not."""
    from targets import TARGETS

    rows = []
    for name, spec in TARGETS.items():
        why = spec.unavailable_reason()
        rows.append((name, "yes" if why is None else "no", spec.runtime, why or "", ",".join(spec.precisions),
                     "yes" if spec.needs_gpu else "no", "yes" if spec.remote else "no", ", ".join(sorted(spec.options))))
    _print_table(("target", "available here", "runtime", "why not", "precisions", "GPU", "remote", "options"), rows)


@app.command()
def criteria(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the scoring criteria: what each needs, its granularity and its source paper."""
    from stages.score import CRITERIA

    rows = []
    for name in CRITERIA.names(pattern):
        c = CRITERIA.get(name)
        needs = ", ".join(k for k, v in (("forward", c.needs.forward), ("labels", c.needs.labels),
                                          ("gradients", c.needs.gradients), ("class logits", c.needs.classes))
                          if v) or "weights only"
        rows.append((name, needs, c.granularity, c.source, c.summary, ", ".join(f"{k}={v}" for k, v in c.params.items())))
    _print_table(("criterion", "needs", "granularity", "source", "what", "options"), rows)


@app.command()
def recoveries(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the recovery methods (--recovery-method): what each does, its options and its source paper."""
    from stages.recover import RECOVERIES

    rows = []
    for name in RECOVERIES.names(pattern):
        m = RECOVERIES.get(name)
        rows.append((name, m.summary, m.source or "-", ", ".join(f"{k}={v}" for k, v in m.params.items()) or "-"))
    _print_table(("method", "what", "source", "options"), rows)
    import textwrap

    typer.echo(textwrap.fill("losses (--recovery-loss, any method): auto (KD: KL on logits, relative L2 on "
                             "embeddings), pw (performance-weighted, Meyer & Wong, arXiv 2211.10285; class labels)",
                             width=80))


@app.command()
def searches(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the search strategies: the objectives each serves and the tune.* keys it reads."""
    from search import SEARCHES

    rows = []
    for name in SEARCHES.names(pattern):
        s = SEARCHES.get(name)
        needs = ", ".join(k for k, v in (("latency budget", s.needs_latency), ("criterion allocation (optional)",
                                                                                s.uses_allocation),
                                         (f"--criterion {s.needs_criterion}", s.needs_criterion)) if v)
        rows.append((name, ", ".join(s.objectives), needs, s.summary, ", ".join(s.options)))
    _print_table(("search", "objectives", "needs", "what", "tune options"), rows)


@app.command()
def metrics(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the evaluators (--metric): what each needs, its unit (the unit of --max-accuracy-drop) and direction."""
    from stages.evaluate import EVALUATORS
    from stages.evaluate.generative import GENERATIVE

    def needs(ev) -> str:
        if ev.name in GENERATIVE:
            return "a diffusion model and a denoising split (data digits-ddpm)"
        return "labels" if ev.needs_labels else "the unpruned model (label-free)"

    rows = [(ev.name, needs(ev), ev.unit,
             "higher" if ev.higher_is_better else "lower", ev.summary)
            for ev in map(EVALUATORS.get, EVALUATORS.names(pattern))]
    _print_table(("metric", "needs", "unit", "better", "what"), rows)


def _print_table(columns: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """A table where it fits the terminal (80 columns when not a terminal); else one block per row: the first
    column as its title, then ``column: value`` lines wrapped to the width."""
    from rich.console import Console as RC
    from rich.markup import escape
    from rich.padding import Padding
    from rich.table import Table
    from rich.text import Text

    con = RC(highlight=False)
    t = Table(show_edge=False)
    for col in columns:
        t.add_column(col)
    for row in rows:
        t.add_row(*(escape(x) for x in row))
    natural = sum(max(len(x) for x in col) + 3 for col in zip(columns, *rows))  # unwrapped, with separators
    if natural <= con.width:
        con.print(t)
        return
    for row in rows:
        con.print(Text(row[0], style="bold"))
        for col, val in zip(columns[1:], row[1:]):
            if val:
                con.print(Padding(Text(f"{col}: {val}"), (0, 0, 0, 2)))


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """Print the summary of a finished run and exit by its verdict (0 met, 1 not met, 3 inconclusive)."""
    from pipeline.console import Console
    from pipeline.manifest import Manifest, StageRecord

    p = run_dir / "report.json"
    if not p.is_file():
        raise ConfigError(f"no report.json in {run_dir}", hint="give the folder of a finished `pipeline run`")
    rep = json.loads(p.read_text())
    man = Manifest.load(run_dir)
    records = list(man.stages.values()) if man else [StageRecord(s["name"], s["status"], s["seconds"])
                                                      for s in rep["stages"]]
    Console().summary(rep, records)
    raise typer.Exit(verdict_exit(rep["constraints"]))


@app.command()
@_interruptible
def worker(
    study: Annotated[str, typer.Option(help="name of the study (printed by the run that created it)")],
    storage: Annotated[str, typer.Option(help="Optuna storage URL, e.g. postgresql://user@host:5432/optuna")],
    n_trials: Annotated[Optional[int], typer.Option(min=1, help="trials this worker evaluates at most")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="seconds this worker runs at most")] = None,
    device: Annotated[Optional[str], typer.Option(help="user@host[:port] of this worker's device (default: the run's)")] = None,
    trust_study: Annotated[bool, typer.Option(
        help="run code the study names (python: specs, pickled checkpoints); trust whoever can write the storage")] = False,
) -> None:
    """Join a `--search optuna` study and evaluate its trials on this machine's target."""
    from pipeline.worker import run_worker

    n, why = run_worker(study, storage, n_trials, timeout, device=device, log=typer.echo, trust=trust_study)
    typer.echo(f"{n} trials evaluated; {why}")


def _usage_error(e: BaseException) -> tuple[str, str] | None:
    """(message, hint) for the CLI framework's own exceptions: click's, or typer's vendored copy of click."""
    names = {c.__name__ for c in type(e).__mro__}
    if "NoArgsIsHelpError" in names:  # `pipeline` alone: the help on stdout, and a usage error
        ctx = getattr(e, "ctx", None)
        if ctx is not None:
            typer.echo(ctx.get_help())
        return "a command is needed", "pipeline --help lists the commands"
    if "ClickException" in names:
        ctx = getattr(e, "ctx", None)
        cmd = ctx.command_path if ctx is not None else "pipeline"
        return e.format_message(), f"see `{cmd} --help`"
    if "Abort" in names:
        return "aborted", "run the command again"
    return None


def _unexpected(e: BaseException) -> None:
    """One line on the terminal; the traceback in the run folder's log, or in a log file named in the hint."""
    import traceback

    from pipeline.console import Console

    log = logging.getLogger("pipeline")
    tb = traceback.format_exc()
    files = [h.baseFilename for h in log.handlers if isinstance(h, logging.FileHandler)]
    if files:
        log.error("unexpected failure\n%s", tb)
        where = files[0]
    else:
        where = str(crash_log(tb))
    first = str(e).splitlines()[0] if str(e) else ""
    Console().error(f"unexpected {type(e).__name__}: {first}", f"the traceback is in {where}; please report it")


def crash_log(text: str) -> Path:
    """Write a traceback that has no run folder to go to: ``$XDG_CACHE_HOME/edge-pipeline/last-error.log``."""
    import os

    from core.io import atomic_write_text

    path = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "edge-pipeline" / "last-error.log"
    try:
        atomic_write_text(path, text)
    except OSError:
        import tempfile

        fd, name = tempfile.mkstemp(prefix="edge-pipeline-error-", suffix=".log")
        with open(fd, "w") as f:
            f.write(text)
        path = Path(name)
    return path


def run_cli() -> int:
    """Run the app; every way it can end becomes an exit code (see :data:`EXIT_CODES`), with one line
    and a hint on the terminal for every failure and no traceback there."""
    from core.errors import Terminated
    from pipeline.console import Console

    try:
        rc = app(standalone_mode=False)  # click returns the exit code instead of raising
        return rc if isinstance(rc, int) else 0
    except typer.Exit as e:
        return int(e.exit_code)
    except PipelineError as e:
        Console().error(e.message, e.hint)
        return int(getattr(e, "exit_code", EXIT_ERROR))
    except Terminated:
        Console().error("terminated (SIGTERM)", "rerun with --resume --out RUN_DIR to continue")
        return EXIT_TERMINATED
    except KeyboardInterrupt:
        Console().error("interrupted", "rerun with --resume --out RUN_DIR to continue")
        return EXIT_INTERRUPTED
    except SystemExit as e:  # sys.exit() outside a stage (inside one, the runner turns it into a StageError)
        if isinstance(e.__context__, BrokenPipeError) or type(sys.stdout).__name__ == "PacifyFlushWrapper":
            return EXIT_ERROR  # the reader of our output went away (`pipeline -h | head`): nothing to say
        Console().error(f"stopped by sys.exit({e.code!r}) before the command finished",
                        "if a python: factory or data function called it: return the result instead")
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - usage errors of the CLI framework, then truly unexpected failures
        usage = _usage_error(e)
        if usage is not None:
            Console().error(*usage)
            return EXIT_ERROR
        _unexpected(e)
        return EXIT_ERROR


def main() -> None:
    """Console entry point: exit with :func:`run_cli`'s code.

    User code left running after a load timeout or an interrupt (a hung factory, threads or pools it
    started) must not keep the process, and with it a CI job, alive: with such threads still there,
    the process flushes and ends at once (``os._exit``)."""
    import os
    import threading

    code = run_cli()
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
