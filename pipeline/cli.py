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


def _shape(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        dims = tuple(int(x) for x in text.replace("x", ",").split(",") if x.strip())
    except ValueError:
        raise ConfigError(f"bad --input-shape '{text}'", hint="give C,H,W, e.g. 3,224,224") from None
    if not dims or any(d <= 0 for d in dims):
        raise ConfigError(f"bad --input-shape '{text}'", hint="give positive C,H,W, e.g. 3,224,224")
    return dims


def _options(items: list[str] | None, flag: str = "--target-option",
             example: str = "device_profile=orin-nano-8gb") -> dict | None:
    if not items:
        return None
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"bad {flag} '{item}'", hint=f"use KEY=VALUE, e.g. {example}")
        import yaml

        out[key.strip()] = yaml.safe_load(value)  # numbers and booleans as YAML reads them
    return out


@app.command()
def run(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config (default: examples/default.yaml)")] = None,
    model: Annotated[Optional[str], typer.Option(help="example:NAME | torchvision:NAME | timm:NAME | file:PATH | python:mod:fn")] = None,
    arch: Annotated[Optional[str], typer.Option(help="architecture spec for a file: state_dict")] = None,
    data: Annotated[Optional[str], typer.Option(help="digits | imagefolder:PATH | random | python:mod:fn")] = None,
    input_shape: Annotated[Optional[str], typer.Option(help="sample shape C,H,W")] = None,
    target: Annotated[Optional[str], typer.Option(help="target name (see `pipeline targets`)")] = None,
    device: Annotated[Optional[str], typer.Option(help="user@host[:port] of a remote device")] = None,
    target_option: Annotated[Optional[list[str]], typer.Option(help="KEY=VALUE target option (repeatable)")] = None,
    objective: Annotated[Optional[str], typer.Option(help="latency | memory | accuracy")] = None,
    latency_ms: Annotated[Optional[float], typer.Option(help="latency budget in ms (median, batch from config)")] = None,
    speedup: Annotated[Optional[float], typer.Option(help="latency budget as speedup over the unpruned model")] = None,
    memory_mb: Annotated[Optional[float], typer.Option(help="memory budget in MB")] = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="accuracy floor: max drop in points")] = None,
    criterion: Annotated[Optional[str], typer.Option(help="scoring criterion (see `pipeline criteria`)")] = None,
    criterion_option: Annotated[Optional[list[str]], typer.Option(
        help="KEY=VALUE criterion parameter (repeatable; see `pipeline criteria`)")] = None,
    search: Annotated[Optional[str], typer.Option(help="search strategy (see `pipeline searches`)")] = None,
    policy: Annotated[Optional[Path], typer.Option(help="replay a policy.json instead of searching")] = None,
    recovery_steps: Annotated[Optional[int], typer.Option(help="distillation steps after pruning (0 = none)")] = None,
    threads: Annotated[Optional[int], typer.Option(help="runtime threads (default: physical cores)")] = None,
    out: Annotated[Optional[Path], typer.Option(help="run folder (default runs/<UTC>-<model>)")] = None,
    resume: Annotated[bool, typer.Option(help="continue the run in --out, rerunning only stale stages")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the resolved config and stage plan; run nothing")] = False,
    seed: Annotated[Optional[int], typer.Option(help="random seed")] = None,
    trust_checkpoint: Annotated[bool, typer.Option(help="allow loading pickled modules from file: checkpoints")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the final tables")] = False,
    uniform: Annotated[bool, typer.Option(
        "--uniform", help="one kept width per family (all blocks of a stage) in greedy / optuna (tune.uniform)")] = False,
) -> None:
    """Prune, recover, export, build and measure; exit 0 if the constraints hold, 1 if not."""
    from pipeline.config import config_to_yaml, resolve_config
    from pipeline.console import Console
    from pipeline.orchestrate import plan_text, run_pipeline

    overrides = {
        "model": model, "arch": arch, "data": data, "input_shape": _shape(input_shape), "target": target,
        "device": device, "target_options": _options(target_option), "objective": objective, "criterion": criterion,
        "criterion_options": _options(criterion_option, "--criterion-option", "alpha=0.01"), "search": search,
        "policy": str(policy) if policy else None, "seed": seed, "trust_checkpoint": trust_checkpoint or None,
        "constraints": {"latency_ms": latency_ms, "speedup": speedup, "memory_mb": memory_mb,
                        "max_accuracy_drop": max_accuracy_drop},
        "recovery": {"steps": recovery_steps}, "measure": {"threads": threads},
        "tune": {"uniform": True if uniform else None},
    }
    if resume and out is None:
        raise ConfigError("--resume needs --out RUN_DIR", hint="pass the folder of the run to continue")
    base = None
    if resume and config is None:
        from pipeline.orchestrate import saved_config

        base = saved_config(out)
    cfg = resolve_config(config, overrides, base=base)
    if dry_run:
        typer.echo(config_to_yaml(cfg))
        typer.echo(plan_text(cfg, out))
        raise typer.Exit(EXIT_MET)
    ui = Console(quiet=quiet)
    met = run_pipeline(cfg, out, resume=resume, ui=ui)
    raise typer.Exit(EXIT_MET if met else EXIT_UNMET)


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
