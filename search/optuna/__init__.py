"""The ``optuna`` search: a multi-objective search over one keep ratio per family, on measured cost.

What it searches
    One keep ratio per family (:mod:`search.families`: ResNet stages, MobileNet stages or
    blocks, or single groups), in ``[1 - max_ratio, 1]`` on a grid of ``step``. Every trial is a
    real candidate: pruned with the criterion's scores, BN re-estimated, exported and measured on
    the target interleaved with the unpruned model (``CandidateEvaluator.measure_policy``).
    Trials that land on an architecture measured before come back from the evaluator's cache
    and are counted as duplicates.

Objectives and constraints
    Two objectives: the measured cost (latency in ms; memory in MB for ``objective="memory"``)
    is minimised and the calibration accuracy maximised, so the study's Pareto front is measured
    latency vs accuracy. The budgets go in as Optuna constraints with ``Trial.set_constraint``
    (Optuna 5's replacement of ``constraints_func``: the values are stored in the trial, so
    every worker's sampler sees the same ones). NSGA-II and TPE rank infeasible trials after
    feasible ones; they stay in the study and in the report. Constraint values are relative
    violations (:meth:`search.budget.Budgets.slack`: ``speedup_budget / (speedup * (1 - margin)) - 1``
    for a ``--speedup``, ``latency / (budget * (1 - margin)) - 1`` for a ``--latency-ms``), so
    budgets in different units add up.

    The accuracy proxy is the one-shot accuracy (after BN re-estimation) for the ``latency`` and
    ``memory`` objectives, and the accuracy after the short recovery for ``accuracy``. The
    accuracy floor is a constraint only with the recovered proxy: one-shot accuracy sits far below
    what a short recovery gives back (93% one-shot vs 98% recovered on the default model at 2x),
    so a one-shot floor would reject the very candidates the run is after. For the resource
    objectives the floor is applied when the final point is chosen, on recovered accuracy, as the
    ``global`` search does.

Choosing the final point
    Among trials whose resources meet the budgets with ``latency_margin`` to spare, the top
    ``recover_top`` by proxy accuracy get the short recovery and the most accurate one that keeps
    the floor wins (the most accurate one if none does). For ``accuracy``: the fastest trial that
    keeps the floor. When no trial meets the budget, the candidate with the lowest measured cost
    is kept and the stop reason says the budget was not reachable (the run then exits 1).

Storage and workers
    Trials live in an Optuna RDB storage: SQLite in the run folder by default, PostgreSQL for
    many machines. The study's user attributes carry the search definition
    (``edge_pipeline.search``) and what a worker needs to rebuild the evaluator
    (``edge_pipeline.run``: the resolved config, the criterion's scores, fingerprints of model and
    data). ``pipeline worker --study NAME --storage URL`` joins the study and evaluates trials
    with ask/tell on *its own* target. Each trial's numbers are a user attribute (``candidate``),
    so the whole Pareto front can be rebuilt from the storage alone (:func:`front_from_storage`).

    No trial is lost or run twice: trial numbers are allotted by the storage under a row lock
    (on SQLite, processes take turns asking through a file lock, as SQLite ignores row locks);
    a failed evaluation is told FAIL with the error in its user attributes; a worker stopped by
    Ctrl-C tells its trial FAIL before it exits; on a server storage (not SQLite) a heartbeat lets
    the next worker mark the trial of a worker killed outright FAIL after a grace period and
    queue a copy with the same parameters, which the next worker that asks runs.

Modules: :mod:`~search.optuna.space` (the definition, constraints, trial attributes),
:mod:`~search.optuna.storage` (storages, samplers, heartbeat, ask lock),
:mod:`~search.optuna.loop` (ask / evaluate / tell, the run's study, the worker loop),
:mod:`~search.optuna.choose` (the final point, the Pareto front). ``pipeline.worker`` rebuilds the
run's evaluator for ``pipeline worker``.
"""
from __future__ import annotations

from search.families import families
from search.optuna.choose import front_from_storage, pareto_front
from search.optuna.loop import evaluate_trials, prepare_study, run_worker, search_optuna
from search.optuna.space import (
    CLOSED_KEY,
    FORMAT,
    RUN_KEY,
    SEARCH_KEY,
    SearchSpec,
    Space,
    candidate_attrs,
    candidate_from_attrs,
    constraint_values,
)
from search.optuna.storage import make_sampler, open_storage, redact_url
from search.registry import SearchContext, SearchOutcome, register

__all__ = ["CLOSED_KEY", "FORMAT", "RUN_KEY", "SEARCH_KEY", "SearchSpec", "Space", "candidate_attrs",
           "candidate_from_attrs", "constraint_values", "evaluate_trials", "front_from_storage", "make_sampler",
           "open_storage", "pareto_front", "prepare_study", "redact_url", "run_optuna", "run_worker", "search_optuna"]


@register("optuna", summary="multi-objective NSGA-II / TPE over one keep ratio per family, on measured cost; "
                            "PostgreSQL storage lets `pipeline worker` processes evaluate trials in parallel",
          options=("families", "keep_step", "sampler", "recover_top", "uniform", "storage", "study",
                   "max_candidates", "time_limit_s", "latency_margin"))
def run_optuna(ctx: SearchContext) -> SearchOutcome:
    """The registered ``optuna`` search: the study in ``tune.storage`` (the run folder's SQLite by default)."""
    from core.errors import ConfigError

    t = ctx.tune
    if t.uniform and t.families == "group":
        raise ConfigError("--uniform needs families of several groups, not tune.families 'group'",
                          hint="set tune.families to stage or block, or drop --uniform")
    ctx.log(f"more machines: pipeline worker --study {t.study} --storage {redact_url(t.storage or 'memory')}")
    with ctx.progress("optuna") as tick:
        res = search_optuna(ctx.evaluator, ctx.objective, ctx.budgets, ctx.limits,
                            families=families(ctx.groups, t.families), storage=t.storage, study_name=t.study,
                            sampler=t.sampler, seed=ctx.seed, log=ctx.log, step=t.keep_step,
                            recover_top=t.recover_top, run_spec=ctx.run_spec() if ctx.run_spec else None,
                            uniform=t.uniform, progress=tick)
    return SearchOutcome(res, {"optuna": {"storage": redact_url(t.storage or "memory"), "study": t.study,
                                          "sampler": t.sampler, "families": t.families}, "uniform": t.uniform})
