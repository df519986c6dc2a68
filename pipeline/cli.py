"""``pipeline``: the command line. A thin shell over the library; each subcommand's docstring is its help.

Exit codes: 0 = done, constraints met; 1 = done, constraints not met; 2 = bad input or failure.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from core.errors import ConfigError, PipelineError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Prune a PyTorch model until a latency / memory / accuracy budget holds on the target device.")

EXIT_MET, EXIT_UNMET, EXIT_ERROR = 0, 1, 2


def run(**opts) -> None:
    """Prune, recover, export, build and measure; exit 0 if the constraints hold, 1 if not."""
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

        base = saved_config(out)
    cfg = resolve_config(config, overrides, base=base)
    if opts["dry_run"]:
        typer.echo(config_to_yaml(cfg))
        typer.echo(plan_text(cfg, out))
        raise typer.Exit(EXIT_MET)
    ui = Console(quiet=opts["quiet"])
    met = run_pipeline(cfg, out, resume=resume, ui=ui)
    raise typer.Exit(EXIT_MET if met else EXIT_UNMET)


def _register_run() -> None:
    from pipeline.run_options import signature

    run.__signature__ = signature()  # the options are declared once, in pipeline.run_options.RUN_OPTIONS
    app.command("run")(run)


_register_run()


@app.command()
def measure(
    model: Annotated[Optional[Path], typer.Argument(help="ONNX file to measure")] = None,
    target: Annotated[str, typer.Option(help="target name")] = "cpu",
    batch: Annotated[int, typer.Option(help="batch size")] = 1,
    threads: Annotated[Optional[int], typer.Option(help="runtime threads (default: physical cores)")] = None,
    duration: Annotated[float, typer.Option(help="minimum timed seconds")] = 2.0,
    from_trtexec_log: Annotated[Optional[Path], typer.Option(help="turn a trtexec log into a measurement record")] = None,
    tegrastats: Annotated[Optional[Path], typer.Option(help="tegrastats log recorded during the trtexec run")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the measurement record as JSON")] = False,
) -> None:
    """Measure one ONNX file on a target (latency stats, memory), or import a trtexec log."""
    from pipeline.orchestrate import measure_file, measure_trtexec_log

    if from_trtexec_log is not None:
        rec = measure_trtexec_log(from_trtexec_log, tegrastats)
    elif model is not None:
        rec = measure_file(model, target, batch, threads, duration)
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


@app.command()
def targets() -> None:
    """List the targets, whether each is available here, and why not."""
    from rich.console import Console as RC
    from rich.markup import escape
    from rich.table import Table

    from targets import TARGETS

    t = Table(show_edge=False)
    for col in ("target", "runtime", "available here", "why not", "precisions", "GPU", "remote", "options"):
        t.add_column(col)
    for name, spec in TARGETS.items():
        why = spec.unavailable_reason()
        t.add_row(name, escape(spec.runtime), "✅ yes" if why is None else "❌ no", escape(why or ""),
                  ",".join(spec.precisions),
                  "yes" if spec.needs_gpu else "no", "yes" if spec.remote else "no", ",".join(sorted(spec.options)))
    RC(highlight=False, width=200).print(t)


@app.command()
def criteria(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the scoring criteria: what each needs, its granularity and its source paper."""
    from rich.console import Console as RC
    from rich.table import Table

    from stages.score import CRITERIA

    t = Table(show_edge=False)
    for col in ("criterion", "needs", "granularity", "source", "what", "options"):
        t.add_column(col)
    for name in CRITERIA.names(pattern):
        c = CRITERIA.get(name)
        needs = ", ".join(k for k, v in (("forward", c.needs.forward), ("labels", c.needs.labels),
                                          ("gradients", c.needs.gradients)) if v) or "weights only"
        opts = ", ".join(f"{k}={v}" for k, v in c.params.items())
        t.add_row(name, needs, c.granularity, c.source, c.summary, opts)
    RC(highlight=False, width=200).print(t)


@app.command()
def searches(pattern: Annotated[str, typer.Argument(help="glob over names")] = "*") -> None:
    """List the search strategies: the objectives each serves and the tune.* keys it reads."""
    from rich.console import Console as RC
    from rich.table import Table

    from search import SEARCHES

    t = Table(show_edge=False)
    for col in ("search", "objectives", "needs", "what", "tune options"):
        t.add_column(col)
    for name in SEARCHES.names(pattern):
        s = SEARCHES.get(name)
        needs = ", ".join(k for k, v in (("latency budget", s.needs_latency), ("criterion allocation (optional)",
                                                                                s.uses_allocation)) if v)
        t.add_row(name, ", ".join(s.objectives), needs, s.summary, ", ".join(s.options))
    RC(highlight=False, width=200).print(t)


@app.command()
def report(run_dir: Annotated[Path, typer.Argument(help="a run folder")]) -> None:
    """Print the summary of a finished run and exit 0 / 1 by its verdict."""
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
    raise typer.Exit(EXIT_MET if rep["constraints"]["met"] else EXIT_UNMET)


@app.command()
def worker(
    study: Annotated[str, typer.Option(help="name of the study (printed by the run that created it)")],
    storage: Annotated[str, typer.Option(help="Optuna storage URL, e.g. postgresql://user@host:5432/optuna")],
    n_trials: Annotated[Optional[int], typer.Option(min=1, help="trials this worker evaluates at most")] = None,
    timeout: Annotated[Optional[float], typer.Option(min=0, help="seconds this worker runs at most")] = None,
    device: Annotated[Optional[str], typer.Option(help="user@host[:port] of this worker's device (default: the run's)")] = None,
) -> None:
    """Join a `--search optuna` study and evaluate its trials on this machine's target."""
    from pipeline.worker import run_worker

    n, why = run_worker(study, storage, n_trials, timeout, device=device, log=typer.echo)
    typer.echo(f"{n} trials evaluated; {why}")


def main() -> None:
    """Console entry point: map errors to one line + hint and exit code 2."""
    from pipeline.console import Console

    try:
        rc = app(standalone_mode=False)  # click returns the exit code instead of raising
        sys.exit(rc if isinstance(rc, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except PipelineError as e:
        Console().error(e.message, e.hint)
        sys.exit(EXIT_ERROR)
    except KeyboardInterrupt:
        Console().error("interrupted", "rerun with --resume --out RUN_DIR to continue")
        sys.exit(EXIT_ERROR)
    except Exception as e:  # noqa: BLE001 - click usage errors and unexpected failures
        import click

        if isinstance(e, click.exceptions.ClickException):
            Console().error(e.format_message(), "see `pipeline COMMAND --help`")
            sys.exit(EXIT_ERROR)
        if isinstance(e, click.exceptions.Abort):
            sys.exit(EXIT_ERROR)
        logging.getLogger("pipeline").exception("unexpected failure")
        Console().error(f"unexpected {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                        "the traceback is in the run folder's logs/pipeline.log; please report it")
        sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()
