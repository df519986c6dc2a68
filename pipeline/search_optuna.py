"""The ``optuna`` search: a multi-objective search over one keep ratio per family, on measured cost.

What it searches
    One keep ratio per family (:mod:`pipeline.families`: ResNet stages, MobileNet stages or
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
    violations (``latency / (budget * (1 - margin)) - 1``), so budgets in different units add up.

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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, StageError, did_you_mean
from pipeline.families import expand, uniform_keep_ratios
from pipeline.tuner import Budgets, Candidate, SearchLimits, TuneResult

SEARCH_KEY = "edge_pipeline.search"  # study user attr: the search definition (any evaluator needs it)
RUN_KEY = "edge_pipeline.run"  # study user attr: what a real worker needs to rebuild the evaluator
CLOSED_KEY = "edge_pipeline.closed"  # study user attr: the run has chosen; workers stop
FORMAT = "edge-pipeline/optuna-v1"
SAMPLERS = ("nsga2", "tpe")
DEFAULT_STEP = 0.05
DEFAULT_HEARTBEAT_S = 30
FAIL_FAST = 3  # consecutive failed trials, with no trial ever completed in the study, stop a process

Log = Callable[[str], None]


def _optuna():
    try:
        import optuna
    except ModuleNotFoundError:
        raise ConfigError("search 'optuna' needs the optuna package", hint="pip install 'optuna>=5,<6'") from None
    return optuna


# ------------------------------------------------------------------ the search definition

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
        return {"format": FORMAT, "objective": self.objective, "budgets": vars(self.budgets),
                "space": self.space.to_json(), "sampler": self.sampler, "max_trials": self.max_trials,
                "latency_margin": self.latency_margin, "uniform": self.uniform}

    @classmethod
    def from_json(cls, d: Mapping) -> SearchSpec:
        if not isinstance(d, Mapping) or d.get("format") != FORMAT:
            raise ConfigError("this Optuna study was not created by `pipeline run --search optuna`",
                              hint="give the --study name printed by the run that created it")
        return cls(d["objective"], Budgets(**d["budgets"]), Space.from_json(d["space"]), d["sampler"],
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


def _cost(c: Candidate, objective: str) -> float:
    return c.memory_mb if objective == "memory" else c.latency_ms


def _proxy_accuracy(c: Candidate, spec: SearchSpec) -> float:
    acc = c.accuracy if spec.proxy == "recovered" else c.accuracy_oneshot
    return 0.0 if acc is None else float(acc)  # None: no labels at all; every trial ties on accuracy


def constraint_values(c: Candidate, spec: SearchSpec) -> dict[str, float]:
    """Relative violations (<= 0: met) of every budget that applies to a trial."""
    b, out = spec.budgets, {}
    if b.latency_ms is not None:
        out["latency"] = c.latency_ms / (b.latency_ms * (1 - spec.latency_margin)) - 1.0
    if b.memory_mb is not None:
        out["memory"] = c.memory_mb / b.memory_mb - 1.0
    if spec.proxy == "recovered" and b.max_accuracy_drop is not None and b.baseline_accuracy is not None:
        drop = b.baseline_accuracy - _proxy_accuracy(c, spec)
        out["accuracy_floor"] = (drop - b.max_accuracy_drop) / max(b.max_accuracy_drop, 1.0)
    return out


# ------------------------------------------------------------------ storage, samplers

def open_storage(url: str | None, *, heartbeat_s: int | None = None):
    """An Optuna storage for ``url`` (``None``: in memory, one process).

    Server storages (PostgreSQL, MySQL) get a heartbeat (``heartbeat_s``, default 30 s, grace 4x)
    and a retry callback, so the trial of a worker killed outright is failed and queued again.
    SQLite gets none unless asked: one machine, and its writers already serialise.
    """
    optuna = _optuna()
    if url is None:
        return optuna.storages.InMemoryStorage()
    url = _with_driver(url)
    sqlite = url.startswith("sqlite")
    hb = heartbeat_s if heartbeat_s is not None else (None if sqlite else DEFAULT_HEARTBEAT_S)
    engine_kwargs = {"connect_args": {"timeout": 60}} if sqlite else {"pool_pre_ping": True}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=hb, grace_period=4 * hb if hb else None,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=2)
                if hb else None)
    except ImportError as e:  # optuna re-raises the driver's ModuleNotFoundError as a plain ImportError
        raise ConfigError(f"storage {redact_url(url)} needs a database driver that is not installed ({e})",
                          hint="pip install '.[postgres]' (psycopg2-binary) for postgresql:// URLs") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors: bad URL, server down, wrong password
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot open Optuna storage {redact_url(url)}: {first[:300]}",
                          hint="check the URL (sqlite:///path/study.db or postgresql://user@host:port/db) and "
                               "that the server is reachable") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy 2.1 defaults to psycopg 3, we ship psycopg2."""
    import importlib.util

    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact_url(url: str) -> str:
    """The URL without its password."""
    head, sep, tail = url.partition("://")
    if sep and "@" in tail:
        cred, _, rest = tail.rpartition("@")
        user = cred.split(":", 1)[0]
        return f"{head}://{user}{':***' if ':' in cred else ''}@{rest}"
    return url


def make_sampler(name: str, seed: int | None, max_trials: int):
    """NSGA-II or TPE sized for ``max_trials`` (a small population so a 16-trial budget still evolves)."""
    optuna = _optuna()
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(population_size=min(50, max(4, max_trials // 4)), seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(4, max_trials // 4)))
    raise ConfigError(f"unknown optuna sampler '{name}'.{did_you_mean(name, SAMPLERS)}",
                      hint=f"use one of: {', '.join(SAMPLERS)}")


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


# ------------------------------------------------------------------ evaluating trials (run and workers)

class _Heartbeat:
    """Records the trial's heartbeat every ``interval`` seconds while it is evaluated."""

    def __init__(self, storage, trial_id: int, interval: int | None) -> None:
        self.storage, self.trial_id, self.interval = storage, trial_id, interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _beat(self) -> None:
        while True:
            try:
                self.storage.record_heartbeat(self.trial_id)
            except Exception:  # noqa: BLE001 - a missed beat is retried; the grace period covers a few
                pass
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> _Heartbeat:
        if self.interval:
            self._thread = threading.Thread(target=self._beat, name="optuna-heartbeat", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()


def _heartbeat_interval(study) -> int | None:
    storage = getattr(study._storage, "_backend", study._storage)  # _CachedStorage wraps the RDB storage
    get = getattr(storage, "get_heartbeat_interval", None)
    return get() if get else None


@contextlib.contextmanager
def _ask_lock(study):
    """Serialise ``study.ask()`` between processes on one SQLite file.

    Optuna pops a queued (WAITING) trial by reading its state and then setting it RUNNING; on
    PostgreSQL the read takes a row lock (``FOR UPDATE``), but SQLite ignores it, so two processes
    could both pop the same queued trial and evaluate it twice. A file lock next to the database
    closes that window (SQLite is one machine by definition). New trial numbers are safe either way.
    """
    storage = getattr(study._storage, "_backend", study._storage)
    url = str(getattr(storage, "url", ""))
    path = url[len("sqlite:///"):] if url.startswith("sqlite:///") else ""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other process can share the file safely anyway
        fcntl = None
    if not path or ":memory:" in path or fcntl is None:
        yield
        return
    with open(f"{path}.ask.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def evaluate_trials(study, ev, spec: SearchSpec, *, n_trials: int | None = None, timeout_s: float | None = None,
                    log: Log = lambda s: None, clock: Callable[[], float] = time.monotonic,
                    worker: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> tuple[int, str]:
    """Ask, evaluate and tell trials until a cap; shared by the run and by ``pipeline worker``.

    Stops at ``n_trials`` trials of this process, after ``timeout_s`` seconds, when the study
    holds ``spec.max_trials`` trials (every state counts; queued ones are always run), or when
    the run has closed the study. ``progress`` is called after every trial with (finished trials
    in the study, every process's, the cap, the current best in words).

    Returns:
        (trials evaluated by this process, why it stopped).

    Raises:
        StageError: after ``FAIL_FAST`` failed trials in a row while no trial of the study ever
            completed: the evaluation is broken, not the candidate.
    """
    optuna = _optuna()
    from optuna.trial import TrialState

    worker = worker or _worker_name()
    interval = _heartbeat_interval(study)
    start, done, fails_in_row = clock(), 0, 0
    seen: dict[Any, int] = {}
    while True:
        if n_trials is not None and done >= n_trials:
            return done, f"{n_trials} trials evaluated by this process"
        if timeout_s is not None and clock() - start >= timeout_s:
            return done, f"time cap ({timeout_s:.0f}s) reached"
        if study.user_attrs.get(CLOSED_KEY):
            return done, "the run closed the study"
        trials = study.get_trials(deepcopy=False)
        waiting = sum(t.state == TrialState.WAITING for t in trials)
        if not waiting and len(trials) >= spec.max_trials:
            return done, f"candidate cap ({spec.max_trials}) reached"
        if interval:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
        with warnings.catch_warnings(), _ask_lock(study):
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = study.ask()
        err = _evaluate_one(study, trial, ev, spec, seen, log, worker, interval)
        done += 1
        if progress is not None:
            finished = sum(t.state.is_finished() for t in study.get_trials(deepcopy=False))
            progress(finished, spec.max_trials, best_text(study, spec))
        fails_in_row = 0 if err is None else fails_in_row + 1
        if fails_in_row >= FAIL_FAST and not any(t.state == TrialState.COMPLETE
                                                   for t in study.get_trials(deepcopy=False)):
            raise StageError(f"{fails_in_row} trials in a row failed and none ever completed; last: {err}",
                             hint="the evaluation itself is broken (target, model or data): see the log")


def _evaluate_one(study, trial, ev, spec: SearchSpec, seen: dict, log: Log, worker: str,
                  interval: int | None) -> str | None:
    """Evaluate and tell one trial (RUNNING -> COMPLETE, or FAIL with the error); returns the error or None."""
    optuna = _optuna()
    with _Heartbeat(study._storage, trial._trial_id, interval):  # from the first moment the trial is ours
        try:
            return _evaluate_and_tell(study, trial, ev, spec, seen, log, worker)
        except optuna.exceptions.UpdateFinishedTrialError:  # we stalled past the grace period
            log(f"trial {trial.number}: already failed as stale by another process; its queued retry will run")
            return None


def _evaluate_and_tell(study, trial, ev, spec: SearchSpec, seen: dict, log: Log, worker: str) -> str | None:
    fams = spec.space.suggest(trial)
    trial.set_user_attr("worker", worker)
    t0 = time.perf_counter()
    try:
        c = ev.measure_policy(spec.keep_ratios(ev, fams), spec.policy(fams))
        if spec.proxy == "recovered" and not c.recovered:
            c.accuracy, c.recovered = ev.recover(c), True
    except KeyboardInterrupt:
        _tell_fail(study, trial, "interrupted (KeyboardInterrupt)", "")
        raise
    except Exception as e:  # noqa: BLE001 - one bad candidate must not end the search
        msg = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        _tell_fail(study, trial, msg, traceback.format_exc(limit=8))
        log(f"trial {trial.number}: FAILED {msg}")
        return msg
    attrs = candidate_attrs(c)
    attrs["seconds"] = round(time.perf_counter() - t0, 3)
    trial.set_user_attr("candidate", attrs)
    dup = seen.get(c.key)
    if dup is not None:
        trial.set_user_attr("duplicate_of", dup)
    cons = constraint_values(c, spec)
    for name, v in cons.items():
        trial.set_constraint(name, v)
    study.tell(trial, [_cost(c, spec.objective), _proxy_accuracy(c, spec)])
    seen.setdefault(c.key, trial.number)
    ok = all(v <= 0 for v in cons.values())
    keep = ", ".join(f"{k}={v:g}" for k, v in fams.items())
    unit = "MB" if spec.objective == "memory" else "ms"
    log(f"trial {trial.number}: keep {keep} -> {_cost(c, spec.objective):.3f} {unit}, "
        f"acc {_proxy_accuracy(c, spec):.2f}{' (recovered)' if spec.proxy == 'recovered' else ''}, "
        f"{'within budget' if ok else 'over budget'}" + (f", same architecture as trial {dup}" if dup is not None
                                                         else ""))
    return None


def _tell_fail(study, trial, message: str, tb: str) -> None:
    try:
        trial.set_user_attr("error", message[:1000])
        if tb:
            trial.set_user_attr("traceback", tb[-4000:])
        study.tell(trial, state=_optuna().trial.TrialState.FAIL)
    except Exception:  # noqa: BLE001 - the storage is gone too; the heartbeat (if any) fails it later
        pass


# ------------------------------------------------------------------ the run's search

def search_optuna(ev, objective: str, budgets: Budgets, limits: SearchLimits, *,
                  families: Mapping[str, Sequence[str]], storage: str | None = None, study_name: str | None = None,
                  sampler: str = "nsga2", seed: int = 0, log: Log = lambda s: None,
                  clock: Callable[[], float] = time.monotonic, step: float = DEFAULT_STEP, recover_top: int = 3,
                  run_spec: Mapping | None = None, poll_s: float = 1.0, uniform: bool = False,
                  progress: Callable[[int, int, str], None] | None = None) -> TuneResult:
    """Run (or resume) the Optuna study and choose the final point; see the module docstring.

    Args:
        ev: The evaluator (``measure_policy``, ``recover``).
        objective: ``latency``, ``memory`` or ``accuracy``.
        budgets: Resource budgets and the accuracy floor.
        limits: ``max_ratio`` (grid low end), ``max_candidates`` (trials in the study, every
            worker's included), ``time_limit_s`` and ``latency_margin``.
        families: Family name -> group ids (:func:`pipeline.families.families`).
        storage: Optuna storage URL (``sqlite:///RUN/study.db``, ``postgresql://...``); ``None``
            keeps the study in memory.
        study_name: The study to create or resume (default ``edge-pipeline``).
        sampler: ``nsga2`` or ``tpe``.
        seed: Sampler seed; with SQLite and one process the search is deterministic.
        log: Progress lines.
        clock: Time source for the time cap (tests pass a fake one).
        step: Grid step of the keep ratios.
        recover_top: How many feasible trials get the short recovery before the choice.
        run_spec: What ``pipeline worker`` needs to rebuild the evaluator (:func:`make_run_spec`);
            without it only workers with their own evaluator factory can join.
        poll_s: How often to look for trials still running on workers, after this process stops.
        uniform: MaskPrune: every member of a family keeps the same width (stored in the
            study, so workers prune alike; a resume with another setting is refused).
        progress: Called after every trial of this process with (finished trials, cap, current best).
    """
    _optuna()
    from optuna.trial import TrialState

    if objective not in ("latency", "memory", "accuracy"):
        raise ConfigError(f"unknown objective '{objective}'", hint="use latency, memory or accuracy")
    lines: list[str] = []

    def say(s: str) -> None:
        lines.append(s)
        log(s)

    start = clock()
    space = Space.make(families, limits.max_ratio, step)
    spec = SearchSpec(objective, budgets, space, sampler, limits.max_candidates, limits.latency_margin, uniform)
    name = study_name or "edge-pipeline"
    base_ms = getattr(ev, "baseline_latency_ms", None)
    speedup = base_ms / budgets.latency_ms if base_ms and budgets.latency_ms else None
    study = prepare_study(storage, name, spec, run_spec=run_spec, seed=seed, log=say, speedup=speedup)

    _, reason = evaluate_trials(study, ev, spec, timeout_s=max(0.0, limits.time_limit_s - (clock() - start)),
                                log=say, clock=clock, progress=progress)
    said: list[int] = []
    while clock() - start < limits.time_limit_s:  # trials of workers still in flight belong to this choice
        running = [t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))]
        if not running:
            break
        if running != said:
            say(f"waiting for trials {running} still running on workers")
            said = running
        time.sleep(poll_s)
    study.set_user_attr(CLOSED_KEY, True)
    return _choose(study, ev, spec, reason, recover_top, say, lines)


def prepare_study(storage: str | None, name: str, spec: SearchSpec, *, run_spec: Mapping | None = None,
                  seed: int | None = 0, log: Log = lambda s: None, speedup: float | None = None):
    """Create the study (with the anchor trials queued, :meth:`Space.anchors`) or resume it; returns it open
    for trials.

    A resumed study must have the same objective and search space; its budgets and trial cap are
    replaced by ``spec``'s (constraints of old trials are recomputed from their numbers when the
    final point is chosen). A resumed sampler is seeded with ``seed + trials so far``, so it does
    not replay the proposals of the first session.
    """
    optuna = _optuna()
    make_sampler(spec.sampler, seed, spec.max_trials)  # validates the name before anything is created
    st = open_storage(storage)
    where = redact_url(storage or "memory")
    study = optuna.create_study(study_name=name, storage=st, directions=["minimize", "maximize"],
                                load_if_exists=True)
    prior = study.get_trials(deepcopy=False)
    old = study.user_attrs.get(SEARCH_KEY)
    if old is None:
        if prior:
            raise ConfigError(f"study '{name}' in {where} holds trials of another search",
                              hint="choose another study name (tune.study) or another storage")
        for params in spec.space.anchors(speedup):
            study.enqueue_trial(params)
    else:
        _check_resumable(SearchSpec.from_json(old), spec, name)
        log(f"resuming study '{name}': {len(prior)} trials already there")
    study.set_user_attr(SEARCH_KEY, spec.to_json())
    study.set_user_attr(CLOSED_KEY, False)
    if run_spec is not None:
        study.set_user_attr(RUN_KEY, dict(run_spec))
    study.sampler = make_sampler(spec.sampler, None if seed is None else seed + len(prior), spec.max_trials)
    fams = spec.space.families
    log(f"optuna {spec.sampler}: {len(fams)} families ({', '.join(fams)}), keep ratio {spec.space.low:g}..1 "
        f"step {spec.space.step:g}, cap {spec.max_trials} trials; study '{name}' in {where}")
    return study


def _check_resumable(old: SearchSpec, new: SearchSpec, name: str) -> None:
    if old.space != new.space or old.objective != new.objective or old.uniform != new.uniform:
        what = ("objective" if old.objective != new.objective else
                "search space (families, max_ratio or step)" if old.space != new.space else "uniform setting")
        raise ConfigError(f"study '{name}' was made with another {what}; it cannot be resumed with this config",
                          hint="use another study name (tune.study) or delete the old study.db")


def _choose(study, ev, spec: SearchSpec, loop_reason: str, recover_top: int, say: Log,
            lines: list[str]) -> TuneResult:
    from optuna.trial import TrialState

    all_trials = study.get_trials(deepcopy=False)
    complete = [t for t in all_trials if t.state == TrialState.COMPLETE and "candidate" in t.user_attrs]
    failed = sum(t.state == TrialState.FAIL for t in all_trials)
    uniq: dict[Any, tuple[Any, Candidate]] = {}
    for t in complete:
        c = candidate_from_attrs(t.user_attrs["candidate"])
        uniq.setdefault(c.key, (t, c))
    dups = len(complete) - len(uniq)
    head = (f"{loop_reason}; {len(all_trials)} trials ({len(uniq)} architectures, {dups} duplicates, "
            f"{failed} failed)")
    if not uniq:
        say(f"stop: {head}")
        return TuneResult(None, [], head, lines)
    obj, b, margin = spec.objective, spec.budgets, spec.latency_margin
    by_key = {k: c for k, (_, c) in uniq.items()}
    trial_of = {k: t for k, (t, _) in uniq.items()}

    unit = "MB" if obj == "memory" else "ms"
    stored = list(by_key.values())
    front = pareto_front([(_cost(c, obj), _proxy_accuracy(c, spec)) for c in stored])
    say("pareto front: " + "; ".join(f"trial {trial_of[stored[i].key].number} {_cost(stored[i], obj):.3f} {unit} "
                                     f"acc {_proxy_accuracy(stored[i], spec):.2f}" for i in front))

    def local(c: Candidate) -> Candidate:
        """The evaluator's own candidate, with its plan and model: cached when this process measured the trial,
        else measured here, on the run's target (trials of workers, or of an earlier session)."""
        t = trial_of[c.key]
        fams = {f: round(t.params[Space.param(f)], 6) for f in spec.space.families}
        mine = ev.measure_policy(spec.keep_ratios(ev, fams), spec.policy(fams))
        if mine.key != c.key:
            raise StageError(f"trial {t.number} rebuilt to another architecture here",
                             hint="the workers' model, scores or prune settings differ from this run's")
        if (mine.latency_ms, mine.memory_mb) != (c.latency_ms, c.memory_mb):
            say(f"trial {t.number}: measured here {mine.latency_ms:.3f} ms, {mine.memory_mb:.1f} MB "
                f"(in the trial {c.latency_ms:.3f} ms, {c.memory_mb:.1f} MB)")
        if c.recovered and not mine.recovered:  # the trial's recovered accuracy (accuracy objective)
            mine.accuracy, mine.recovered = c.accuracy, True
        by_key[c.key] = mine
        return mine

    def recover(c: Candidate) -> Candidate:
        if not c.recovered:
            c.accuracy, c.recovered = ev.recover(c), True
            say(f"trial {trial_of[c.key].number}: recovered acc {c.accuracy:.2f}")
        return c

    def confirmed(ordered: list[Candidate], want: int) -> list[Candidate]:
        """The first ``want`` candidates that still meet the budget as this process sees them.

        A trial measured elsewhere is measured again here; one that a lucky measurement had put
        under the budget drops out (at most ``3 * want`` tries).
        """
        out: list[Candidate] = []
        for c in ordered[:3 * want]:
            if len(out) >= want:
                break
            m = local(c)
            if b.resources_met(m, margin):
                out.append(m)
            else:
                say(f"trial {trial_of[c.key].number}: over the budget as measured here; skipped")
        return out

    cands = list(by_key.values())
    chosen, why = None, ""
    if obj == "accuracy":
        pool = [c for c in cands if b.resources_met(c, margin) and b.accuracy_met(c.accuracy)]
        ok = confirmed(sorted(pool, key=lambda c: (c.latency_ms, -(c.accuracy or 0.0))), 1)
        if ok:
            chosen, why = ok[0], f"{len(pool)} trials keep the floor within budget; the fastest is chosen"
        else:
            chosen = local(max(cands, key=lambda c: (c.accuracy or 0.0, -c.latency_ms)))
            why = "budget not reachable: no trial keeps the accuracy floor within the budget (most accurate kept)"
    else:
        pool = [c for c in cands if b.resources_met(c, margin)]
        top = confirmed(sorted(pool, key=lambda c: (-(c.accuracy_oneshot or 0.0), _cost(c, obj))),
                        max(1, recover_top))
        if top:
            top = [recover(c) for c in top]
            keep = [c for c in top if b.accuracy_met(c.accuracy)]
            chosen = max(keep or top, key=lambda c: (c.accuracy or 0.0, -_cost(c, obj)))
            why = (f"{len(pool)} trials within budget; the most accurate after recovery of the top {len(top)}"
                   + ("" if keep else " (none keeps the accuracy floor)"))
        else:
            chosen = recover(local(min(cands, key=lambda c: (_cost(c, obj), c.latency_ms, c.memory_mb))))
            lowest = "latency" if obj == "latency" else "memory"
            why = ("budget not reachable: no trial met it within the margin" + (" as measured here" if pool else "")
                   + f" (the lowest-{lowest} candidate is kept)")
    cands = list(by_key.values())
    for c in cands:
        c.feasible = b.resources_met(c)
        if c.accuracy is None:
            c.accuracy = c.accuracy_oneshot
    chosen = by_key[chosen.key]
    chosen.accepted = True
    say(f"chosen: trial {trial_of[chosen.key].number}, {chosen.latency_ms:.3f} ms, {chosen.memory_mb:.1f} MB, "
        f"acc {_fmt_acc(chosen.accuracy)}")
    reason = f"{head}; {why}"
    say(f"stop: {reason}")
    return TuneResult(chosen, cands, reason, lines)


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
    optuna = _optuna()
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


# ------------------------------------------------------------------ what a worker needs, and the worker

def model_fingerprint(model) -> str:
    """sha256 over the state_dict (names, dtypes, shapes, bytes): the worker's model must be the run's."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        a = t.detach().cpu().contiguous()
        h.update(f"{name}|{a.dtype}|{tuple(a.shape)}|".encode())
        h.update((a.float() if str(a.dtype) == "torch.bfloat16" else a).numpy().tobytes())
    return h.hexdigest()


def _scores_digest(scores: Mapping[str, Sequence[float]]) -> str:
    return hashlib.sha256(json.dumps({k: list(map(float, v)) for k, v in sorted(scores.items())}).encode()).hexdigest()


def make_run_spec(cfg, *, model, groups, scores, baseline_latency_ms: float) -> dict:
    """What ``pipeline worker`` needs to rebuild the run's evaluator on its own machine.

    The criterion's scores travel with the study (so every worker keeps the same channels for
    the same ratios, whatever its floating point), and fingerprints of the model and of the
    group structure let a worker refuse to measure a different model.

    Args:
        cfg: The resolved :class:`pipeline.config.RunConfig` of the run.
        model: The unpruned model (for the fingerprint).
        groups: The prunable groups (``GroupInfo``).
        scores: Group id -> per-channel scores (tensors or lists).
        baseline_latency_ms: The run's baseline median: candidates' latencies are reported as
            this times the measured per-process ratio to the unpruned model, on every worker.
    """
    sc = {k: [float(x) for x in (v.tolist() if hasattr(v, "tolist") else v)] for k, v in scores.items()}
    return {"format": FORMAT, "config": cfg.model_dump(mode="json"), "baseline_latency_ms": float(baseline_latency_ms),
            "groups": [[g.id, g.width] for g in groups], "scores": sc, "scores_sha256": _scores_digest(sc),
            "model_sha256": model_fingerprint(model)}


def make_evaluator(cfg, *, model, input_shape: tuple[int, ...], data, groups, scores, target, workdir: Path,
                   baseline_onnx: Path, baseline_latency_ms: float):
    """The run's :class:`~pipeline.candidates.CandidateEvaluator`, built from the config and the pieces.

    The same construction as the ``tune`` stage: candidate measurement settings, the short
    recovery of ``recovery.tune_steps``, the prune settings and the export settings of ``cfg``.
    """
    import torch

    from pipeline.candidates import CandidateEvaluator
    from stages.export import ExportSettings
    from stages.prune.apply import Pruner, PruneSettings
    from stages.recover import DistillSettings
    from targets.base import MeasureSettings

    m, r, e, p = cfg.measure, cfg.recovery, cfg.export, cfg.prune
    example = torch.zeros((2, *input_shape))
    pruner = Pruner(model, example, data.calib, PruneSettings(cfg.criterion, p.recalibrate_bn, p.recalibrate_batches))
    return CandidateEvaluator(
        model=model, sample_shape=tuple(input_shape), data=data, groups=groups, scores=scores, round_to=p.round_to,
        ignore=p.ignore, pruner=pruner, target=target,
        measure=MeasureSettings(m.threads, m.batch, m.warmup_s, m.candidate_duration_s, m.min_iters),
        export=ExportSettings(opset=e.opset, exporter=e.exporter, atol=e.atol, rtol=e.rtol),
        distill=DistillSettings(steps=r.tune_steps if r.method != "none" else 0, batch_size=r.batch_size, lr=r.lr,
                                temperature=r.temperature, alpha=r.alpha, seed=cfg.seed),
        workdir=Path(workdir), baseline_onnx=Path(baseline_onnx), baseline_latency_ms=baseline_latency_ms,
        rounds=m.candidate_rounds)


def evaluator_from_study(attrs: Mapping, workdir: Path, *, device: str | None = None, log: Log = lambda s: None):
    """Rebuild the run's evaluator on this machine from a study's user attributes.

    Loads the model and data named by the run's config, checks they are the run's (weights
    fingerprint, group structure, unpruned calibration accuracy), exports the unpruned model and
    builds the evaluator on this machine's target (``device`` overrides the config's
    ``--device``, for a worker that drives its own Jetson over SSH).
    """
    import copy

    import torch

    from pipeline.config import RunConfig
    from stages.export import ExportSettings, export_onnx
    from stages.load.data import load_data, with_model_labels
    from stages.load.models import ModelRequest, load_model
    from stages.measure import TorchRunner, evaluate_top1
    from stages.prune.tp_adapter import PruneGraph
    from targets import get_target

    run = attrs.get(RUN_KEY)
    if not isinstance(run, Mapping) or run.get("format") != FORMAT:
        raise ConfigError("the study carries no run description (edge_pipeline.run) for workers",
                          hint="start the search with `pipeline run --search optuna --storage URL`; it writes one")
    spec = SearchSpec.from_json(attrs.get(SEARCH_KEY))
    cfg = RunConfig.model_validate(run["config"])
    if device:
        cfg = cfg.model_copy(update={"device": device})
    options = {**cfg.target_options, **({"device": cfg.device} if cfg.device else {})}
    target = get_target(cfg.target, options)
    torch.manual_seed(cfg.seed)
    lm = load_model(ModelRequest(cfg.model, cfg.arch, cfg.input_shape, cfg.trust_checkpoint))
    if model_fingerprint(lm.module) != run["model_sha256"]:
        raise ConfigError(f"this machine's '{cfg.model}' is not the run's model (weights fingerprint differs)",
                          hint="give workers the same checkpoint (file: spec) and the same torch version")
    data = load_data(cfg.data, lm.input_shape)
    if not data.labeled:
        data = with_model_labels(data, lm.module)
    groups = PruneGraph(copy.deepcopy(lm.module), torch.zeros((2, *lm.input_shape)), cfg.prune.ignore).groups()
    if sorted([g.id, g.width] for g in groups) != sorted(list(x) for x in run["groups"]):
        raise ConfigError("this machine finds other prunable groups than the run",
                          hint="use the same torch / torch-pruning versions and prune.ignore as the run")
    if _scores_digest(run["scores"]) != run["scores_sha256"]:
        raise ConfigError("the study's scores are damaged (digest mismatch)", hint="restart the search")
    base_acc = spec.budgets.baseline_accuracy
    if base_acc is not None:
        acc = evaluate_top1(TorchRunner(lm.module), data.calib)
        if abs(acc - base_acc) > 1e-6:
            raise ConfigError(f"this machine's calibration data differ from the run's (unpruned accuracy {acc:.4f} "
                              f"vs {base_acc:.4f})", hint="give workers the same data (path and files)")
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    e = cfg.export
    export_onnx(lm.module, lm.input_shape, workdir / "baseline.onnx",
                ExportSettings(opset=e.opset, exporter=e.exporter, atol=e.atol, rtol=e.rtol))
    scores = {k: torch.tensor(v, dtype=torch.float32) for k, v in run["scores"].items()}
    log(f"worker ready: {cfg.model} on {target.describe()}, {len(groups)} groups")
    return make_evaluator(cfg, model=lm.module, input_shape=lm.input_shape, data=data, groups=groups, scores=scores,
                          target=target, workdir=workdir / "candidates", baseline_onnx=workdir / "baseline.onnx",
                          baseline_latency_ms=float(run["baseline_latency_ms"]))


EvaluatorFactory = Callable[..., Any]  # (study user attrs, workdir, *, device, log) -> evaluator


def run_worker(study: str, storage: str, n_trials: int | None = None, timeout: float | None = None, *,
               device: str | None = None, log: Log = lambda s: None,
               evaluator_factory: EvaluatorFactory | None = None, heartbeat_s: int | None = None) -> tuple[int, str]:
    """Join study ``study`` in ``storage`` and evaluate its trials on this machine until a cap.

    Args:
        study: The study name the run printed.
        storage: The storage URL (``postgresql://user@host:port/db``; SQLite only on one machine).
        n_trials: Trials this worker evaluates at most (default: until the study's cap).
        timeout: Seconds this worker runs at most (a trial in progress finishes).
        device: This worker's ``--device`` (user@host of its Jetson), instead of the run's.
        log: Progress lines.
        evaluator_factory: Builds the evaluator from the study's user attributes; default
            :func:`evaluator_from_study` (tests pass a fake one).
        heartbeat_s: Heartbeat interval on server storages (default 30 s).

    Returns:
        (trials evaluated, why the worker stopped).
    """
    optuna = _optuna()
    st = open_storage(storage, heartbeat_s=heartbeat_s)
    try:
        s = optuna.load_study(study_name=study, storage=st)
    except KeyError:
        raise ConfigError(f"no study '{study}' in {redact_url(storage)}",
                          hint="start the run first (`pipeline run --search optuna --storage URL`) and pass "
                               "the study name it prints") from None
    spec = SearchSpec.from_json(s.user_attrs.get(SEARCH_KEY))
    s.sampler = make_sampler(spec.sampler, None, spec.max_trials)  # unseeded: workers must not propose alike
    factory = evaluator_factory or evaluator_from_study
    with tempfile.TemporaryDirectory(prefix="edge-worker-") as tmp:
        ev = factory(s.user_attrs, Path(tmp), device=device, log=log)
        n, why = evaluate_trials(s, ev, spec, n_trials=n_trials, timeout_s=timeout, log=log)
    log(f"worker stopped: {why}; {n} trials evaluated here")
    return n, why
