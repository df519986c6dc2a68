"""The search definition of an Optuna study: its space, its objectives and constraints, and how a
trial's candidate is stored (the study's ``edge_pipeline.*`` user attributes).

See :mod:`search.optuna` for the whole search.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from core.errors import ConfigError
from search.base import Candidate
from search.budget import Budgets
from search.families import expand, uniform_keep_ratios

SEARCH_KEY = "edge_pipeline.search"  # study user attr: the search definition (any evaluator needs it)
RUN_KEY = "edge_pipeline.run"  # study user attr: what a real worker needs to rebuild the evaluator
CLOSED_KEY = "edge_pipeline.closed"  # study user attr: the run has chosen; workers stop
FORMAT = "edge-pipeline/optuna-v1"
DEFAULT_STEP = 0.05

Log = Callable[[str], None]


@dataclass(frozen=True)
class Space:
    """One keep ratio per family, on ``[low, 1]`` in steps of ``step``."""

    families: dict[str, list[str]]
    low: float
    step: float

    @classmethod
    def make(cls, families: Mapping[str, Sequence[str]], max_ratio: float, step: float = DEFAULT_STEP) -> Space:
        if not families:
            raise ConfigError("the optuna search has no family to tune (no prunable group)",
                              hint="check prune.ignore; the model needs at least one prunable group")
        if not 0 < step < 1:
            raise ConfigError(f"tune step {step} must be in (0, 1)", hint="use e.g. 0.05")
        n = math.floor(max_ratio / step + 1e-9)
        if n < 1:
            raise ConfigError(f"prune.max_ratio {max_ratio} is below one step ({step}) of the optuna grid",
                              hint="raise prune.max_ratio or lower the step")
        return cls({k: list(v) for k, v in families.items()}, round(1.0 - n * step, 6), step)

    @staticmethod
    def param(family: str) -> str:
        return f"keep:{family}"

    def suggest(self, trial) -> dict[str, float]:
        return {f: round(trial.suggest_float(self.param(f), self.low, 1.0, step=self.step), 6) for f in self.families}

    def anchors(self, speedup: float | None = None) -> list[dict[str, float]]:
        """The unpruned point and the most pruned one: the ends of every Pareto front.

        With a ``speedup`` budget, also three uniform points around it: a conv's MACs scale with
        keep², so keep ≈ 1/sqrt(speedup), and two smaller ones (2 and 4 grid steps down) because a
        runtime realises less speedup than the MAC reduction. Without them a small trial budget
        can leave the sampler with no trial near the budget (measured: 10 NSGA-II trials on the
        default model put one trial under a 3x budget, at 8x).
        """
        ends = [1.0, self.low]
        if speedup is not None and speedup > 1:
            k = self.low + round((1 / math.sqrt(speedup) - self.low) / self.step) * self.step
            ends += [round(min(1.0, max(self.low, k - j * self.step)), 6) for j in (0, 2, 4)]
        keeps = list(dict.fromkeys(ends))
        return [{self.param(f): k for f in self.families} for k in keeps]

    def to_json(self) -> dict:
        return {"families": self.families, "low": self.low, "step": self.step}

    @classmethod
    def from_json(cls, d: Mapping) -> Space:
        return cls({k: list(v) for k, v in d["families"].items()}, float(d["low"]), float(d["step"]))


@dataclass(frozen=True)
class SearchSpec:
    """What any process evaluating trials of a study needs (stored as the study's ``edge_pipeline.search``)."""

    objective: str
    budgets: Budgets
    space: Space
    sampler: str
    max_trials: int
    latency_margin: float
    uniform: bool = False  # MaskPrune: every member of a family keeps the same width (uniform_keep_ratios)

    @property
    def proxy(self) -> str:
        """``recovered`` when the accuracy floor is the objective's constraint, else ``oneshot``."""
        return "recovered" if self.objective == "accuracy" else "oneshot"

    def to_json(self) -> dict:
        return {"format": FORMAT, "objective": self.objective, "budgets": self.budgets.to_json(),
                "space": self.space.to_json(), "sampler": self.sampler, "max_trials": self.max_trials,
                "latency_margin": self.latency_margin, "uniform": self.uniform}

    @classmethod
    def from_json(cls, d: Mapping) -> SearchSpec:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError("this Optuna study was not created by `pipeline run --search optuna`",
                              hint="give the --study name printed by the run that created it")
        return cls(d["objective"], Budgets.from_json(d["budgets"]), Space.from_json(d["space"]), d["sampler"],
                   int(d["max_trials"]), float(d["latency_margin"]), bool(d.get("uniform", False)))

    def keep_ratios(self, ev, family_ratios: Mapping[str, float]) -> dict[str, float]:
        """Per-group keep ratios of a trial: one ratio per family, or with ``uniform`` the ratios whose plans keep
        one width per family and original width (the evaluator's ``groups`` and ``round_to``)."""
        if self.uniform:
            return uniform_keep_ratios(ev.groups, self.space.families, family_ratios, getattr(ev, "round_to", None))
        return expand(self.space.families, family_ratios)

    def policy(self, family_ratios: Mapping[str, float]) -> dict:
        return {"kind": "optuna", "families": dict(family_ratios), **({"uniform": True} if self.uniform else {})}


def best_text(study, spec: SearchSpec) -> str:
    """The study's current best trial in a few words (progress bars): the most accurate feasible one, else
    the cheapest."""
    from optuna.trial import TrialState

    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.values]
    if not done:
        return "-"
    unit = "MB" if spec.objective == "memory" else "ms"
    ok = [t for t in done if all(v <= 0 for v in t.constraints.values())]
    if ok:
        t = max(ok, key=lambda t: (t.values[1], -t.values[0]))
        return f"best trial {t.number}: {t.values[0]:.3f} {unit}, acc {t.values[1]:.2f}"
    t = min(done, key=lambda t: t.values[0])
    return f"closest trial {t.number}: {t.values[0]:.3f} {unit} (over budget)"


def cost_of(c: Candidate, objective: str) -> float:
    return c.memory_mb if objective == "memory" else c.latency_ms


def proxy_accuracy(c: Candidate, spec: SearchSpec) -> float:
    acc = c.accuracy if spec.proxy == "recovered" else c.accuracy_oneshot
    return 0.0 if acc is None else float(acc)  # None: no labels at all; every trial ties on accuracy


def constraint_values(c: Candidate, spec: SearchSpec) -> dict[str, float]:
    """Relative violations (<= 0: met) of every budget that applies to a trial (:meth:`Budgets.slack`)."""
    out = spec.budgets.slack(c, spec.latency_margin)
    floor = spec.budgets.accuracy_slack(proxy_accuracy(c, spec)) if spec.proxy == "recovered" else None
    if floor is not None:
        out["accuracy_floor"] = floor
    return out



def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def candidate_attrs(c: Candidate) -> dict:
    """A candidate's numbers as the JSON user attribute ``candidate`` of its trial."""
    raw = c.payload.get("raw_latency_ms") if isinstance(c.payload, Mapping) else None
    return {"ratio": c.ratio, "key": json.loads(json.dumps(c.key)), "latency_ms": c.latency_ms,
            "raw_latency_ms": raw, "speedup": c.speedup, "memory_mb": c.memory_mb,
            "accuracy_oneshot": c.accuracy_oneshot, "accuracy": c.accuracy if c.recovered else None,
            "recovered": c.recovered, "macs": c.macs, "params": c.params, "policy": c.policy}


def candidate_from_attrs(a: Mapping) -> Candidate:
    """The report's view of a trial (no payload: it was measured by whichever process ran it)."""
    return Candidate(a["ratio"], _tuplify(a["key"]), a["latency_ms"], a["memory_mb"], a["accuracy_oneshot"],
                     a["macs"], a["params"], speedup=a.get("speedup"), accuracy=a.get("accuracy"),
                     recovered=bool(a.get("recovered")), policy=a.get("policy"))


