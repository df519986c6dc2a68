"""Criteria registry: every public module in this package registers its criteria on import.

Modules whose name starts with ``_`` are helpers shared by several criteria, not criteria.
"""

from __future__ import annotations

import importlib
import pkgutil

from stages.score.base import (
    CRITERIA,
    Criterion,
    Needs,
    ScoreContext,
    ScoreResult,
    compensation_layers,
    register,
    weight_criteria,
    weight_mask_builder,
)

for _m in pkgutil.iter_modules(__path__):
    if _m.name != "base" and not _m.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["CRITERIA", "Criterion", "Needs", "ScoreContext", "ScoreResult", "compensation_layers", "register",
           "weight_criteria", "weight_mask_builder"]
