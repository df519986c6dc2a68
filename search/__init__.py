"""The search room: how much to prune, per group, until the budget holds on the target.

Strategies register in :data:`SEARCHES` (:mod:`search.registry`); the built-in ones are imported
here so that ``SEARCHES`` lists them: ``global`` (:mod:`search.global_ratio`), ``greedy``
(:mod:`search.greedy`, priced by :mod:`search.lut`), ``optuna`` (:mod:`search.optuna`) and
``sensitivity`` (:mod:`search.sensitivity`: one-shot damage curves, a MAC-priced knapsack, landed on
measured latency), ``aap`` (:mod:`search.aap`: AAP's global threshold, landed the same way; both by
:mod:`search.landing`) and
``cswap`` (:mod:`search.cswap`: no search, C-SWAP's own plan).
Shared pieces: :mod:`search.base` (candidate, limits, the search frame), :mod:`search.budget`
(budgets in the user's units, the one verdict), :mod:`search.evaluator` (real candidates on a
real target), :mod:`search.families` (groups that share a keep ratio).
"""

from __future__ import annotations

from search import aap, cswap, global_ratio, greedy, optuna, sensitivity  # noqa: F401 - register the built-in searches
from search.registry import SEARCHES, Search, SearchContext, SearchOutcome, TuneSettings, register

__all__ = ["SEARCHES", "Search", "SearchContext", "SearchOutcome", "TuneSettings", "register"]
