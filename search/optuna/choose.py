"""Choosing the final point of a study, and its Pareto front (from the evaluator, or the storage alone)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from core.errors import ConfigError, StageError
from search.base import Candidate, TuneResult
from search.optuna.space import SEARCH_KEY, Log, SearchSpec, Space, candidate_from_attrs, cost_of, proxy_accuracy
from search.optuna.storage import open_storage, redact_url, require_optuna


def choose_final(study, ev, spec: SearchSpec, loop_reason: str, recover_top: int, say: Log,
                 lines: list[str]) -> TuneResult:
    """Pick the run's point from the study's complete trials (see :mod:`search.optuna`, "Choosing")."""
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE and "candidate" in t.user_attrs]
    failed = sum(t.state == TrialState.FAIL for t in all_trials)
    uniq: dict[Any, tuple[Any, Candidate]] = {}
    for t in complete:
        c = candidate_from_attrs(t.user_attrs["candidate"])
        uniq.setdefault(c.key, (t, c))
    head = (f"{loop_reason}; {len(all_trials)} trials ({len(uniq)} architectures, {len(complete) - len(uniq)} "
            f"duplicates, {failed} failed)")
    if not uniq:
        say(f"stop: {head}")
        return TuneResult(None, [], head, lines)
    ch = _Chooser(ev, spec, uniq, say)
    ch.say_front()
    chosen, why = ch.pick_accuracy() if spec.objective == "accuracy" else ch.pick_resources(recover_top)
    cands = list(ch.by_key.values())
    for c in cands:
        c.feasible = spec.budgets.resources_met(c)
        if c.accuracy is None:
            c.accuracy = c.accuracy_oneshot
    chosen = ch.by_key[chosen.key]
    chosen.accepted = True
    say(f"chosen: trial {ch.trial_of[chosen.key].number}, {chosen.latency_ms:.3f} ms, {chosen.memory_mb:.1f} MB, "
        f"acc {_fmt_acc(chosen.accuracy)}")
    reason = f"{head}; {why}"
    say(f"stop: {reason}")
    return TuneResult(chosen, cands, reason, lines)


class _Chooser:
    """The unique architectures of a study, and this process's view of them while the final point is chosen."""

    def __init__(self, ev, spec: SearchSpec, uniq: Mapping[Any, tuple[Any, Candidate]], say: Log) -> None:
        self.ev, self.spec, self.say = ev, spec, say
        self.by_key = {k: c for k, (_, c) in uniq.items()}
        self.trial_of = {k: t for k, (t, _) in uniq.items()}

    def say_front(self) -> None:
        obj, spec = self.spec.objective, self.spec
        unit = "MB" if obj == "memory" else "ms"
        stored = list(self.by_key.values())
        front = pareto_front([(cost_of(c, obj), proxy_accuracy(c, spec)) for c in stored])
        self.say("pareto front: " + "; ".join(
            f"trial {self.trial_of[stored[i].key].number} {cost_of(stored[i], obj):.3f} {unit} "
            f"acc {proxy_accuracy(stored[i], spec):.2f}" for i in front))

    def local(self, c: Candidate) -> Candidate:
        """The evaluator's own candidate, with its plan and model: cached when this process measured the trial,
        else measured here, on the run's target (trials of workers, or of an earlier session)."""
        t, spec = self.trial_of[c.key], self.spec
        fams = {f: round(t.params[Space.param(f)], 6) for f in spec.space.families}
        mine = self.ev.measure_policy(spec.keep_ratios(self.ev, fams), spec.policy(fams))
        if mine.key != c.key:
            raise StageError(f"trial {t.number} rebuilt to another architecture here",
                             hint="the workers' model, scores or prune settings differ from this run's")
        if (mine.latency_ms, mine.memory_mb) != (c.latency_ms, c.memory_mb):
            self.say(f"trial {t.number}: measured here {mine.latency_ms:.3f} ms, {mine.memory_mb:.1f} MB "
                     f"(in the trial {c.latency_ms:.3f} ms, {c.memory_mb:.1f} MB)")
        if c.recovered and not mine.recovered:  # the trial's recovered accuracy (accuracy objective)
            mine.accuracy, mine.recovered = c.accuracy, True
        self.by_key[c.key] = mine
        return mine

    def recover(self, c: Candidate) -> Candidate:
        if not c.recovered:
            c.accuracy, c.recovered = self.ev.recover(c), True
            self.say(f"trial {self.trial_of[c.key].number}: recovered acc {c.accuracy:.2f}")
        return c

    def confirmed(self, ordered: list[Candidate], want: int) -> list[Candidate]:
        """The first ``want`` candidates that still meet the budget as this process sees them.

        A trial measured elsewhere is measured again here; one that a lucky measurement had put
        under the budget drops out (at most ``3 * want`` tries).
        """
        out: list[Candidate] = []
        for c in ordered[:3 * want]:
            if len(out) >= want:
                break
            m = self.local(c)
            if self.spec.budgets.resources_met(m, self.spec.latency_margin):
                out.append(m)
            else:
                self.say(f"trial {self.trial_of[c.key].number}: over the budget as measured here; skipped")
        return out

    def pick_accuracy(self) -> tuple[Candidate, str]:
        """``accuracy``: the fastest trial that keeps the floor within budget."""
        b, margin = self.spec.budgets, self.spec.latency_margin
        cands = list(self.by_key.values())
        pool = [c for c in cands if b.resources_met(c, margin) and b.accuracy_met(c.accuracy)]
        ok = self.confirmed(sorted(pool, key=lambda c: (c.latency_ms, -(c.accuracy or 0.0))), 1)
        if ok:
            return ok[0], f"{len(pool)} trials keep the floor within budget; the fastest is chosen"
        chosen = self.local(max(cands, key=lambda c: (c.accuracy or 0.0, -c.latency_ms)))
        return chosen, "budget not reachable: no trial keeps the accuracy floor within the budget (most accurate kept)"

    def pick_resources(self, recover_top: int) -> tuple[Candidate, str]:
        """``latency`` / ``memory``: the most accurate after recovery of the top ``recover_top`` within budget."""
        obj, b, margin = self.spec.objective, self.spec.budgets, self.spec.latency_margin
        cands = list(self.by_key.values())
        pool = [c for c in cands if b.resources_met(c, margin)]
        top = self.confirmed(sorted(pool, key=lambda c: (-(c.accuracy_oneshot or 0.0), cost_of(c, obj))),
                             max(1, recover_top))
        if top:
            top = [self.recover(c) for c in top]
            keep = [c for c in top if b.accuracy_met(c.accuracy)]
            chosen = max(keep or top, key=lambda c: (c.accuracy or 0.0, -cost_of(c, obj)))
            return chosen, (f"{len(pool)} trials within budget; the most accurate after recovery of the top {len(top)}"
                            + ("" if keep else " (none keeps the accuracy floor)"))
        chosen = self.recover(self.local(min(cands, key=lambda c: (cost_of(c, obj), c.latency_ms, c.memory_mb))))
        lowest = "latency" if obj == "latency" else "memory"
        return chosen, ("budget not reachable: no trial met it within the margin" + (" as measured here" if pool else "")
                        + f" (the lowest-{lowest} candidate is kept)")


def _fmt_acc(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates; (cost: lower is better, accuracy: higher is better).

    Sorted by cost, then accuracy (best first), then index.
    """
    out = []
    for i, (c, a) in enumerate(points):
        if not any(c2 <= c and a2 >= a and (c2 < c or a2 > a) for j, (c2, a2) in enumerate(points) if j != i):
            out.append(i)
    return sorted(out, key=lambda i: (points[i][0], -points[i][1], i))


def front_from_storage(storage: str, study_name: str, *, feasible_only: bool = False) -> list[dict]:
    """The Pareto front of a study, rebuilt from the storage alone (no model, no evaluator).

    Returns:
        One row per architecture on the front, sorted by cost: the trial number, whether it met
        the budgets (its constraints), and its ``candidate`` numbers.
    """
    optuna = require_optuna()
    from optuna.trial import TrialState

    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(f"no study '{study_name}' in {redact_url(storage)}", hint="check the study name") from None
    SearchSpec.from_json(study.user_attrs.get(SEARCH_KEY))  # refuses a study this pipeline did not make
    rows, seen = [], set()
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        a = t.user_attrs.get("candidate")
        if a is None or json.dumps(a["key"]) in seen:
            continue
        seen.add(json.dumps(a["key"]))
        feasible = all(v <= 0 for v in t.constraints.values())
        if feasible or not feasible_only:
            rows.append({"trial": t.number, "feasible": feasible, "values": list(t.values), **a})
    idx = pareto_front([(r["values"][0], r["values"][1]) for r in rows])
    return [rows[i] for i in idx]


