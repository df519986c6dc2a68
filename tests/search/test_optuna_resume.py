"""A resumed study fails and requeues the trials a dead process of this machine left RUNNING (SQLite)."""

from __future__ import annotations

import socket

import optuna
from optuna.trial import TrialState

from search.base import SearchLimits
from search.budget import Budgets
from search.families import families
from search.optuna import SearchSpec, Space, open_storage, prepare_study
from tests.search.optuna_fake_worker import FakeEvaluator


def test_orphaned_running_trials_are_failed_and_queued_again(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    ev = FakeEvaluator()
    spec = SearchSpec("latency", Budgets(0.6, None, 1.0, 99.0), Space.make(families(ev.groups), 0.9), "nsga2", 10,
                      SearchLimits().latency_margin)
    study = prepare_study(url, "s", spec)
    orphan = study.ask()  # taken by a process that was then killed -9
    orphan.set_user_attr("worker", f"{socket.gethostname()}:999999999")
    alive = study.ask()  # taken by a process that still runs (this one)
    import os

    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    lines: list[str] = []
    prepare_study(url, "s", spec, log=lines.append)
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    by_number = {t.number: t for t in trials}
    assert by_number[orphan.number].state == TrialState.FAIL and by_number[alive.number].state == TrialState.RUNNING
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    assert any(t.params == by_number[orphan.number].params for t in waiting)
    assert any("its process" in ln and "is gone" in ln for ln in lines)
