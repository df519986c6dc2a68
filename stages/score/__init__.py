"""Criteria registry: every module in this package registers its criteria on import."""

from __future__ import annotations

import importlib
import pkgutil

from stages.score.base import CRITERIA, Criterion, Needs, ScoreContext, ScoreResult, register

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base":
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CRITERIA", "Criterion", "Needs", "ScoreContext", "ScoreResult", "register"]
