"""Terminal output: stage lines as they finish, progress bars, and the final tables (rich)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console as RichConsole
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

log = logging.getLogger("pipeline")

ICON = {"ok": "✅", "skipped": "⏭️ ", "failed": "❌", "reused": "♻️ ", "interrupted": "⏹️ ", "running": "▶"}


class Console:
    """What ``pipeline run`` prints. ``quiet`` keeps only the final tables."""

    def __init__(self, quiet: bool = False) -> None:
        self.out = RichConsole(highlight=False)
        self.quiet = quiet

    def stage_start(self, name: str) -> None:
        log.info("stage %s: start", name)
        if not self.quiet:
            self.out.print(f"[dim]▶ {name} …[/dim]")

    def stage_done(self, name: str, status: str, seconds: float, summary: str = "") -> None:
        log.info("stage %s: %s in %.2fs %s", name, status, seconds, summary)
        if not self.quiet:
            self.out.print(f"{ICON.get(status, '?')} {name:<9} {seconds:7.2f}s  {summary}")

    def note(self, text: str) -> None:
        log.info("%s", text)
        if not self.quiet:
            self.out.print(f"   [dim]{text}[/dim]")

    def warn(self, text: str) -> None:
        """A warning: printed even with ``quiet`` (a CI log must show it)."""
        log.warning("%s", text)
        self.out.print(f"[bold yellow]⚠ {text}[/bold yellow]")

    @contextmanager
    def progress(self, what: str, total: int) -> Iterator[Callable[[int, float], None]]:
        with Progress(TextColumn(f"   {what}"), BarColumn(), MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"),
                      TimeElapsedColumn(), console=self.out, transient=True, disable=self.quiet) as p:
            task = p.add_task(what, total=total, loss="-")

            def tick(step: int, loss: float) -> None:
                p.update(task, completed=step, loss=f"{loss:.4f}")

            yield tick

    @contextmanager
    def search_progress(self, what: str) -> Iterator[Callable[[int, int, str], None]]:
        """A bar for a search or a LUT build: ``tick(done, total, text)``, where ``text`` is the current best.

        The searches take it as their ``progress=`` callback and never print themselves; their
        ``log=`` lines still go through :meth:`note`, above the bar.
        """
        with Progress(TextColumn(f"   {what}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[best]}"),
                      TimeElapsedColumn(), console=self.out, transient=True, disable=self.quiet) as p:
            task = p.add_task(what, total=None, best="")

            def tick(done: int, total: int, text: str) -> None:
                p.update(task, completed=min(done, total), total=total, best=text)
                log.debug("%s %d/%d %s", what, done, total, text)

            yield tick

    def summary(self, report: dict, records: list) -> None:
        st = Table(title="Stages", show_edge=False)
        st.add_column("stage")
        st.add_column("status")
        st.add_column("seconds", justify="right")
        for r in records:
            st.add_row(r.name, f"{ICON.get(r.status, '?')} {r.status}", f"{r.seconds:.2f}")
        self.out.print(st)
        b, f = report["baseline"], report["final"]
        t = Table(title=f"Baseline vs final on {report['target']}", show_edge=False)
        t.add_column("metric")
        t.add_column("baseline", justify="right")
        t.add_column("final", justify="right")

        from stages.evaluate import format_score

        def acc(m: dict) -> str:
            return format_score(m.get("accuracy_metric") or "", m.get("accuracy"))

        t.add_row("latency median (ms)", f"{b['latency_ms']['median']:.3f}", f"{f['latency_ms']['median']:.3f}")
        t.add_row("latency p99 (ms)", f"{b['latency_ms']['p99']:.3f}", f"{f['latency_ms']['p99']:.3f}")
        t.add_row("throughput (/s)", f"{b['throughput']:.0f}", f"{f['throughput']:.0f}")
        t.add_row("memory (MB)", f"{b['memory_mb']:.1f}", f"{f['memory_mb']:.1f}")
        t.add_row(f"{f['accuracy_metric']} (test, engine)", acc(b), acc(f))
        pc = report.get("per_class")
        if pc:
            t.add_row("worst class (gap to best)", *(f"{x['worst']:.1f}% ({x['gap']:.1f})"
                                                     for x in (pc["baseline"], pc["final"])))
            if pc["baseline"].get("groups") and pc["final"].get("groups"):
                t.add_row("worst group (gap to best)", *(f"{x['groups']['worst']:.1f}% ({x['groups']['gap']:.1f})"
                                                         for x in (pc["baseline"], pc["final"])))
        t.add_row("MACs (M)", f"{b['macs'] / 1e6:.1f}", f"{f['macs'] / 1e6:.1f}")
        t.add_row("params (M)", f"{b['params'] / 1e6:.3f}", f"{f['params'] / 1e6:.3f}")
        self.out.print(t)
        c = report["constraints"]
        iv = (c.get("intervals") or {}).get("speedup")
        band = f" ({100 * iv['level']:.0f}% interval {iv['low']:.2f}-{iv['high']:.2f}x, {iv['n']} processes)" if iv else ""
        self.out.print(f"speedup [bold]{report['speedup']:.2f}x[/bold]{band}  ·  {f['measured_on']}")
        for w in c.get("warnings") or []:
            self.warn(w)
        status = c.get("verdict") or ("met" if c["met"] else "not_met")
        if status == "met":
            self.out.print("[bold green]✅ constraints met[/bold green]")
        elif status == "not_met":
            self.out.print("[bold red]❌ constraints not met:[/bold red]")
        else:
            self.out.print("[bold yellow]❔ inconclusive (exit 3):[/bold yellow]")
            for u in c.get("undecided") or []:
                self.out.print(f"   - {u}")
            self.out.print(f"   {c.get('advice') or ''}")
        for v in c["violations"]:
            self.out.print(f"   - {v}")
        if status == "not_met" and c.get("advice"):
            self.out.print(f"   next: {c['advice']}")

    def error(self, message: str, hint: str = "") -> None:
        err = RichConsole(stderr=True, highlight=False)
        err.print(f"[bold red]error:[/bold red] {message}", soft_wrap=True)
        if hint:
            err.print(f"[yellow]hint:[/yellow] {hint}", soft_wrap=True)
