"""The search registry: every strategy registers here, like criteria do in ``stages.score``.

A search is a function ``run(ctx: SearchContext) -> SearchOutcome``. :class:`SearchContext` is
everything a strategy may use (the evaluator, the groups, the budgets in the user's units, the
limits and its ``tune.*`` knobs, logging and a progress bar); the pipeline builds it once in the
tune stage. Adding a search is one new module in this package that calls :func:`register`
(and its test); ``pipeline run --search NAME`` and ``pipeline searches`` pick it up.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

from core.errors import ConfigError
from core.registry import Registry
from search.base import SearchLimits, TuneResult
from search.budget import Budgets

OBJECTIVES = ("latency", "memory", "accuracy")

ProgressBar = Callable[[str], AbstractContextManager]  # what -> context yielding tick(done, total, best) or None


@dataclass(frozen=True)
class TuneSettings:
    """The ``tune.*`` knobs the strategies read (frozen; resolved from the config once).

    ``storage`` and ``study`` are already resolved (the run folder's SQLite file and name by
    default); ``staircase`` is true when widths come from the measured staircase
    (``prune.round_to: null``).
    """

    initial_reduction: float = 0.1
    decay: float = 0.96
    lut_points: int = 6
    families: str = "stage"
    keep_step: float = 0.05
    sampler: str = "nsga2"
    recover_top: int = 3
    uniform: bool = False
    staircase: bool = False
    storage: str | None = None
    study: str | None = None


@dataclass
class SearchContext:
    """What a search may use. ``evaluator`` measures candidates (``search.evaluator``, or a fake).

    ``lut_key`` names what a cached latency table depends on (target description, input shape,
    the unpruned ONNX's sha256, batch); ``example`` is one input batch (layer MAC terms);
    ``run_spec()`` gives what remote ``pipeline worker`` processes need to rebuild the evaluator
    (a callable: only a search with workers pays for the model fingerprint). ``proposal`` is the
    criterion's own plan, channels to keep per group id, where it makes one
    (``ScoreResult.proposal``: C-SWAP's progressive procedure), else ``None``.
    """

    evaluator: Any
    groups: Sequence[Any]
    objective: str
    budgets: Budgets
    limits: SearchLimits
    tune: TuneSettings
    round_to: int | None
    baseline_ms: float
    seed: int = 0
    lut_key: Mapping[str, Any] = field(default_factory=dict)
    example: Any = None
    run_spec: Callable[[], Mapping[str, Any]] | None = None
    log: Callable[[str], None] = lambda s: None
    progress: ProgressBar = lambda what: nullcontext(None)
    proposal: Mapping[str, int] | None = None  # channels to keep per group, where the criterion decided (C-SWAP)


@dataclass
class SearchOutcome:
    """A search's result and what it adds to ``candidates.json`` / report.json's ``tune``."""

    result: TuneResult
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Search:
    """One registered strategy.

    Attributes:
        name: ``--search NAME``.
        run: The strategy.
        summary: One line for ``pipeline searches``.
        objectives: The objectives it searches.
        needs_latency: It needs a latency or speedup budget.
        uses_allocation: A criterion's per-group allocation (SBPF) shares its ratio out.
        options: The ``tune.*`` keys it reads (listed by ``pipeline searches``).
        needs_criterion: The criterion whose plan it prunes (``ScoreResult.proposal``), if any.
    """

    name: str
    run: Callable[[SearchContext], SearchOutcome]
    summary: str
    objectives: tuple[str, ...] = OBJECTIVES
    needs_latency: bool = False
    uses_allocation: bool = False
    options: tuple[str, ...] = ()
    needs_criterion: str | None = None

    @property
    def needs_budget(self) -> bool:
        """Whether the objective needs its budget (``RunConfig`` checks): not for a search that prunes a
        criterion's plan, since the criterion decides how much; its budgets are only reported."""
        return self.needs_criterion is None

    def check(self, objective: str, has_latency_budget: bool, criterion: str | None = None) -> None:
        """Refuse an objective, budget or criterion (its registered name; ``None``: not checked) this search
        cannot serve, before any work."""
        if objective not in self.objectives or (self.needs_latency and not has_latency_budget):
            what = " with a latency or speedup budget" if self.needs_latency else ""
            others = [n for n, s in SEARCHES.items()
                      if objective in s.objectives and n != self.name and s.needs_criterion is None]
            raise ConfigError(f"search '{self.name}' needs objective {' or '.join(self.objectives)}{what}",
                              hint=f"use --search {' or '.join(others)} for the {objective} objective" if others
                              else "see `pipeline searches`")
        if self.needs_criterion is not None and criterion is not None and criterion != self.needs_criterion:
            others = [n for n, s in SEARCHES.items() if objective in s.objectives and s.needs_criterion is None]
            raise ConfigError(f"search '{self.name}' prunes the plan of criterion '{self.needs_criterion}', "
                              f"not of '{criterion}'",
                              hint=f"use --criterion {self.needs_criterion}, or --search {' or '.join(others)} "
                                   f"with criterion '{criterion}'")


SEARCHES: Registry[Search] = Registry("search", "searches")


def register(name: str, *, summary: str, objectives: tuple[str, ...] = OBJECTIVES, needs_latency: bool = False,
             uses_allocation: bool = False, options: tuple[str, ...] = (), needs_criterion: str | None = None
             ) -> Callable[[Callable[[SearchContext], SearchOutcome]], Callable[[SearchContext], SearchOutcome]]:
    """Decorator: register ``run(ctx) -> SearchOutcome`` as search ``name``."""

    def deco(fn: Callable[[SearchContext], SearchOutcome]) -> Callable[[SearchContext], SearchOutcome]:
        SEARCHES.add(name, Search(name, fn, summary, tuple(objectives), needs_latency, uses_allocation,
                                  tuple(options), needs_criterion))
        return fn

    return deco
