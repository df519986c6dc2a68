"""Asking, evaluating and telling trials (the run and every ``pipeline worker``), and the run's study."""

from __future__ import annotations

import os
import socket
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from core.errors import ConfigError, StageError
from search.base import SearchLimits, TuneResult, time_cap_reason
from search.budget import Budgets
from search.optuna.choose import choose_final
from search.optuna.space import (
    CLOSED_KEY,
    DEFAULT_STEP,
    RUN_KEY,
    SEARCH_KEY,
    Log,
    SearchSpec,
    Space,
    best_text,
    candidate_attrs,
    constraint_values,
    cost_of,
    proxy_accuracy,
)
from search.optuna.storage import (
    Heartbeat,
    ask_lock,
    heartbeat_interval,
    make_sampler,
    open_storage,
    redact_url,
    require_optuna,
)

FAIL_FAST = 3  # consecutive failed trials, with no trial ever completed in the study, stop a process


def worker_name() -> str:
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
    optuna = require_optuna()
    from optuna.trial import TrialState

    worker = worker or worker_name()
    interval = heartbeat_interval(study)
    start, done, fails_in_row = clock(), 0, 0
    seen: dict[Any, int] = {}
    while True:
        if n_trials is not None and done >= n_trials:
            return done, f"{n_trials} trials evaluated by this process"
        why = None if timeout_s is None else time_cap_reason(clock() - start, done, timeout_s, "trial")
        if why:
            return done, why
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
        with warnings.catch_warnings(), ask_lock(study):
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
    optuna = require_optuna()
    with Heartbeat(study._storage, trial._trial_id, interval):  # from the first moment the trial is ours
        try:
            return _evaluate_and_tell(study, trial, ev, spec, seen, log, worker)
        except optuna.exceptions.UpdateFinishedTrialError:  # we stalled past the grace period
            log(f"trial {trial.number}: already failed as stale by another process; its queued retry will run")
            return None
        except KeyboardInterrupt:  # Ctrl-C / SIGTERM anywhere in the trial: never leave it RUNNING
            _tell_fail(study, trial, "interrupted (KeyboardInterrupt)", "")
            raise


def _evaluate_and_tell(study, trial, ev, spec: SearchSpec, seen: dict, log: Log, worker: str) -> str | None:
    fams = spec.space.suggest(trial)
    trial.set_user_attr("worker", worker)
    t0 = time.perf_counter()
    try:
        c = ev.measure_policy(spec.keep_ratios(ev, fams), spec.policy(fams))
        if spec.proxy == "recovered" and not c.recovered:
            c.accuracy, c.recovered = ev.recover(c), True
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
    study.tell(trial, [cost_of(c, spec.objective), proxy_accuracy(c, spec)])
    seen.setdefault(c.key, trial.number)
    ok = all(v <= 0 for v in cons.values())
    keep = ", ".join(f"{k}={v:g}" for k, v in fams.items())
    unit = "MB" if spec.objective == "memory" else "ms"
    log(f"trial {trial.number}: keep {keep} -> {cost_of(c, spec.objective):.3f} {unit}, "
        f"acc {proxy_accuracy(c, spec):.2f}{' (recovered)' if spec.proxy == 'recovered' else ''}, "
        f"{'within budget' if ok else 'over budget'}" + (f", same architecture as trial {dup}" if dup is not None
                                                         else ""))
    return None


def _tell_fail(study, trial, message: str, tb: str) -> None:
    try:
        trial.set_user_attr("error", message[:1000])
        if tb:
            trial.set_user_attr("traceback", tb[-4000:])
        study.tell(trial, state=require_optuna().trial.TrialState.FAIL)
    except Exception:  # noqa: BLE001 - the storage is gone too; the heartbeat (if any) fails it later
        pass



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
        families: Family name -> group ids (:func:`search.families.families`).
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
    require_optuna()
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
    speedup = budgets.speedup or (base_ms / budgets.latency_ms if base_ms and budgets.latency_ms else None)
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
    return choose_final(study, ev, spec, reason, recover_top, say, lines)


def prepare_study(storage: str | None, name: str, spec: SearchSpec, *, run_spec: Mapping | None = None,
                  seed: int | None = 0, log: Log = lambda s: None, speedup: float | None = None):
    """Create the study (with the anchor trials queued, :meth:`Space.anchors`) or resume it; returns it open
    for trials.

    A resumed study must have the same objective and search space; its budgets and trial cap are
    replaced by ``spec``'s (constraints of old trials are recomputed from their numbers when the
    final point is chosen). A resumed sampler is seeded with ``seed + trials so far``, so it does
    not replay the proposals of the first session.
    """
    optuna = require_optuna()
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
        _retry_orphans(study, prior, log)
    study.set_user_attr(SEARCH_KEY, spec.to_json())
    study.set_user_attr(CLOSED_KEY, False)
    if run_spec is not None:
        study.set_user_attr(RUN_KEY, dict(run_spec))
    study.sampler = make_sampler(spec.sampler, None if seed is None else seed + len(prior), spec.max_trials)
    fams = spec.space.families
    log(f"optuna {spec.sampler}: {len(fams)} families ({', '.join(fams)}), keep ratio {spec.space.low:g}..1 "
        f"step {spec.space.step:g}, cap {spec.max_trials} trials; study '{name}' in {where}")
    return study


def _retry_orphans(study, prior, log: Log) -> None:
    """Trials left RUNNING by a process of this machine that is gone (a kill -9 on SQLite, which has no
    heartbeat): told FAIL and queued again with the same parameters, so a resumed search does not wait for them."""
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in prior:
        who = str(t.user_attrs.get("worker", ""))
        w_host, _, pid = who.rpartition(":")
        if t.state != TrialState.RUNNING or w_host != host or not pid.isdigit() or _alive(int(pid)):
            continue
        try:
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - finished meanwhile
            continue
        study.enqueue_trial(t.params)
        log(f"trial {t.number}: its process ({who}) is gone; failed and queued again")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _check_resumable(old: SearchSpec, new: SearchSpec, name: str) -> None:
    if old.space != new.space or old.objective != new.objective or old.uniform != new.uniform:
        what = ("objective" if old.objective != new.objective else
                "search space (families, max_ratio or step)" if old.space != new.space else "uniform setting")
        raise ConfigError(f"study '{name}' was made with another {what}; it cannot be resumed with this config",
                          hint="use another study name (tune.study) or delete the old study.db")




EvaluatorFactory = Callable[..., Any]  # (study user attrs, workdir, *, device, log) -> evaluator


def run_worker(study: str, storage: str, n_trials: int | None = None, timeout: float | None = None, *,
               evaluator_factory: EvaluatorFactory, device: str | None = None, log: Log = lambda s: None,
               heartbeat_s: int | None = None) -> tuple[int, str]:
    """Join study ``study`` in ``storage`` and evaluate its trials on this machine until a cap.

    Args:
        study: The study name the run printed.
        storage: The storage URL (``postgresql://user@host:port/db``; SQLite only on one machine).
        n_trials: Trials this worker evaluates at most (default: until the study's cap).
        timeout: Seconds this worker runs at most (a trial in progress finishes).
        device: This worker's ``--device`` (user@host of its Jetson), instead of the run's.
        log: Progress lines.
        evaluator_factory: Builds the evaluator from the study's user attributes
            (``pipeline.worker.evaluator_from_study`` rebuilds the run's; tests pass a fake one).
        heartbeat_s: Heartbeat interval on server storages (default 30 s).

    Returns:
        (trials evaluated, why the worker stopped).
    """
    optuna = require_optuna()
    st = open_storage(storage, heartbeat_s=heartbeat_s)
    try:
        s = optuna.load_study(study_name=study, storage=st)
    except KeyError:
        raise ConfigError(f"no study '{study}' in {redact_url(storage)}",
                          hint="start the run first (`pipeline run --search optuna --storage URL`) and pass "
                               "the study name it prints") from None
    spec = SearchSpec.from_json(s.user_attrs.get(SEARCH_KEY))
    s.sampler = make_sampler(spec.sampler, None, spec.max_trials)  # unseeded: workers must not propose alike
    with tempfile.TemporaryDirectory(prefix="edge-worker-") as tmp:
        ev = evaluator_factory(s.user_attrs, Path(tmp), device=device, log=log)
        n, why = evaluate_trials(s, ev, spec, n_trials=n_trials, timeout_s=timeout, log=log)
    log(f"worker stopped: {why}; {n} trials evaluated here")
    return n, why
