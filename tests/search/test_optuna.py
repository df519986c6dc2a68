"""The optuna search and its workers, against a deterministic fake evaluator (no model, no runtime).

SQLite in a temp folder for the default suite; the multi-process test also runs on a real
PostgreSQL server (marked ``postgres``; see ``conftest.py``).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from core.errors import ConfigError, StageError
from pipeline.worker import run_worker
from search.base import SearchLimits
from search.budget import Budgets
from search.families import expand, families
from search.optuna import (
    CLOSED_KEY,
    SearchSpec,
    Space,
    front_from_storage,
    open_storage,
    pareto_front,
    prepare_study,
    search_optuna,
)
from tests.search.optuna_fake_worker import FakeEvaluator

ROOT = Path(__file__).resolve().parents[2]
BASE_ACC = 99.0


def sqlite(tmp_path: Path, name: str = "study.db") -> str:
    return f"sqlite:///{tmp_path / name}"


def run(tmp_path, ev=None, *, budgets=None, objective="latency", cap=12, seed=0, storage=None, study="s",
        time_limit=600.0, clock=None, sampler="nsga2", mode="stage"):
    ev = ev or FakeEvaluator()
    kw = {"clock": clock} if clock else {}
    res = search_optuna(ev, objective, budgets or Budgets(0.6, None, 1.0, BASE_ACC),
                        SearchLimits(max_ratio=0.9, max_candidates=cap, time_limit_s=time_limit, latency_margin=0.05),
                        families=families(ev.groups, mode), storage=storage or sqlite(tmp_path), study_name=study,
                        sampler=sampler, seed=seed, **kw)
    return ev, res


def load(storage: str, study: str = "s") -> optuna.Study:
    return optuna.load_study(study_name=study, storage=open_storage(storage))


# ------------------------------------------------------------------ pure parts

def test_pareto_front_keeps_only_non_dominated_points():
    pts = [(1.0, 90.0), (2.0, 95.0), (1.5, 89.0), (2.0, 94.0), (3.0, 95.0), (0.5, 50.0), (1.0, 90.0)]
    front = pareto_front(pts)
    # (1.5, 89) is dominated by (1.0, 90); (2.0, 94) by (2.0, 95); (3.0, 95) by (2.0, 95); equal points both stay
    assert front == [5, 0, 6, 1]


def test_space_grid_and_anchors():
    s = Space.make({"a": ["a.0"], "b": ["b.0", "b.1"]}, max_ratio=0.9, step=0.05)
    assert s.low == pytest.approx(0.1)
    assert s.anchors() == [{"keep:a": 1.0, "keep:b": 1.0}, {"keep:a": 0.1, "keep:b": 0.1}]
    # a 3x budget: uniform keep 1/sqrt(3) = 0.577 -> 0.6 on the grid, then 0.5 and 0.4
    assert [a["keep:a"] for a in s.anchors(3.0)] == [1.0, 0.1, 0.6, 0.5, 0.4]
    assert all(a["keep:a"] == a["keep:b"] for a in s.anchors(3.0))
    assert [a["keep:a"] for a in s.anchors(100.0)] == [1.0, 0.1]  # clipped to the grid, no duplicates
    assert s.anchors(1.0) == s.anchors()
    assert Space.make({"a": ["x"]}, max_ratio=0.33, step=0.1).low == pytest.approx(0.7)
    with pytest.raises(ConfigError, match="below one step"):
        Space.make({"a": ["x"]}, max_ratio=0.03, step=0.05)
    with pytest.raises(ConfigError, match="no family"):
        Space.make({}, max_ratio=0.5)


def test_unknown_sampler_is_a_config_error_with_suggestion(tmp_path):
    with pytest.raises(ConfigError, match="did you mean 'nsga2'|Did you mean 'nsga2'"):
        run(tmp_path, sampler="nsga")


# ------------------------------------------------------------------ the search

def test_front_constraints_and_choice(tmp_path):
    url = sqlite(tmp_path)
    _, res = run(tmp_path, cap=20, storage=url)
    study = load(url)
    trials = study.get_trials()
    assert len(trials) == 20 and all(t.state == TrialState.COMPLETE for t in trials)
    # every trial carries its numbers and its latency constraint (relative violation)
    for t in trials:
        a = t.user_attrs["candidate"]
        assert t.values[0] == pytest.approx(a["latency_ms"]) and t.values[1] == pytest.approx(a["accuracy_oneshot"])
        assert t.constraints["latency"] == pytest.approx(a["latency_ms"] / (0.6 * 0.95) - 1)
        assert t.params == {f"keep:{f}": pytest.approx(v) for f, v in a["policy"]["families"].items()}
    # the two anchors ran: the unpruned model (too slow here) and the most pruned one
    keeps = [sorted({round(v, 6) for v in t.params.values()}) for t in trials[:2]]
    assert keeps == [[1.0], [0.1]]
    ch = res.chosen
    assert ch is not None and ch.accepted and ch.recovered and ch.feasible
    assert ch.latency_ms <= 0.6 * 0.95
    assert "within budget" in res.stop_reason
    # the chosen one is the most accurate after recovery among the recovered feasible ones
    rec = [c for c in res.candidates if c.recovered]
    assert all(c.latency_ms <= 0.6 * 0.95 for c in rec)
    assert ch.accuracy == max(c.accuracy for c in rec)
    # the Pareto front rebuilt from the storage alone equals the one from the result's candidates
    pts = [(c.latency_ms, c.accuracy_oneshot) for c in res.candidates]
    mine = {res.candidates[i].key for i in pareto_front(pts)}
    stored = front_from_storage(url, "s")
    assert {tuple(tuple(k) for k in r["key"]) for r in stored} == mine
    assert [r["latency_ms"] for r in stored] == sorted(r["latency_ms"] for r in stored)
    # ... and its feasible part is Optuna's own constrained Pareto front
    feas = {(round(r["latency_ms"], 9), round(r["accuracy_oneshot"], 9))
            for r in front_from_storage(url, "s", feasible_only=True)}
    opt = {(round(t.values[0], 9), round(t.values[1], 9)) for t in study.best_trials}
    assert feas == opt and feas
    assert study.user_attrs[CLOSED_KEY] is True


def test_infeasible_trials_are_never_chosen_when_a_feasible_one_exists(tmp_path):
    _, res = run(tmp_path, cap=16, budgets=Budgets(0.45, None, 1.0, BASE_ACC))
    infeasible = [c for c in res.candidates if not c.feasible]
    assert infeasible and res.chosen.feasible
    # the budget mattered: slower trials were more accurate, and still lost
    assert max(c.accuracy_oneshot for c in infeasible) > res.chosen.accuracy_oneshot
    assert all(c.latency_ms > 0.45 for c in infeasible)
    assert sum(c.accepted for c in res.candidates) == 1


def test_memory_objective_uses_memory_as_cost(tmp_path):
    url = sqlite(tmp_path)
    _, res = run(tmp_path, objective="memory", budgets=Budgets(None, 15.0, 1.0, BASE_ACC), storage=url, cap=12)
    assert res.chosen.memory_mb <= 15.0 and res.chosen.feasible
    for t in load(url).get_trials():
        assert t.values[0] == pytest.approx(t.user_attrs["candidate"]["memory_mb"])
        assert set(t.constraints) == {"memory"}


def test_accuracy_objective_recovers_every_trial_and_picks_the_fastest_that_keeps_the_floor(tmp_path):
    url = sqlite(tmp_path)
    ev, res = run(tmp_path, objective="accuracy", budgets=Budgets(None, None, 3.0, BASE_ACC), storage=url, cap=12)
    study = load(url)
    for t in study.get_trials():
        a = t.user_attrs["candidate"]
        assert a["recovered"] and t.values[1] == pytest.approx(a["accuracy"])
        assert "accuracy_floor" in t.constraints
    keep = [c for c in res.candidates if BASE_ACC - c.accuracy <= 3.0]
    assert res.chosen in keep
    assert res.chosen.latency_ms == min(c.latency_ms for c in keep)
    assert len(set(ev.recovered)) == len(ev.measured)  # each architecture recovered once


def test_trial_cap(tmp_path):
    url = sqlite(tmp_path)
    ev, res = run(tmp_path, cap=5, storage=url)
    assert len(load(url).get_trials()) == 5
    assert len(ev.measured) <= 5
    assert "candidate cap (5) reached" in res.stop_reason


def test_time_cap(tmp_path):
    ticks = itertools.count(step=50.0)
    url = sqlite(tmp_path)
    _, res = run(tmp_path, cap=1000, time_limit=120.0, clock=lambda: next(ticks), storage=url)
    n = len(load(url).get_trials())
    assert "time cap" in res.stop_reason
    assert 1 <= n <= 3 and res.chosen is not None


def test_same_seed_same_search_on_sqlite(tmp_path):
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    for d in (a, b, c):
        d.mkdir()
    _, ra = run(a, cap=10, seed=7)
    _, rb = run(b, cap=10, seed=7)
    run(c, cap=10, seed=8)
    pa, pb, pc = ([t.params for t in load(sqlite(d)).get_trials()] for d in (a, b, c))
    assert pa == pb and ra.chosen.key == rb.chosen.key and ra.stop_reason == rb.stop_reason
    assert pa != pc  # the seed is what makes it repeat
    assert pa[:2] == pc[:2]  # the two anchors do not depend on it


def test_tpe_sampler_runs_with_constraints(tmp_path):
    url = sqlite(tmp_path)
    _, res = run(tmp_path, cap=10, sampler="tpe", storage=url)
    assert res.chosen is not None and res.chosen.feasible
    assert len(load(url).get_trials(states=(TrialState.COMPLETE,))) == 10


def test_resume_continues_the_study(tmp_path):
    url = sqlite(tmp_path)
    _, r1 = run(tmp_path, cap=6, storage=url)
    first = [(t.number, t.params) for t in load(url).get_trials()]
    _, r2 = run(tmp_path, cap=10, storage=url)
    trials = load(url).get_trials()
    assert [t.number for t in trials] == list(range(10))
    assert [(t.number, t.params) for t in trials[:6]] == first  # the old trials are kept as they were
    evaluated = [int(line.split()[1].rstrip(":")) for line in r2.log if ": keep " in line]
    assert evaluated == [6, 7, 8, 9]  # the second session evaluated only the new trials ...
    assert len(r2.candidates) >= len(r1.candidates)  # ... and chose among all of them
    assert any("resuming study 's': 6 trials" in line for line in r2.log)
    # a third session with the cap reached evaluates nothing new
    _, r3 = run(tmp_path, cap=10, storage=url)
    assert len(load(url).get_trials()) == 10 and "candidate cap (10)" in r3.stop_reason
    assert r3.chosen.key == r2.chosen.key


def test_trials_measured_elsewhere_are_measured_again_before_they_are_chosen(tmp_path):
    url = sqlite(tmp_path)
    run(tmp_path, FakeEvaluator(latency_scale=0.5), cap=10, storage=url)  # a machine (or a fluke) twice as fast
    ev, res = run(tmp_path, FakeEvaluator(), cap=10, storage=url)  # this run's target: nothing new to evaluate
    assert not [line for line in res.log if ": keep " in line]
    assert any("over the budget as measured here; skipped" in line for line in res.log)
    assert res.chosen.latency_ms <= 0.6 * 0.95 and res.chosen.feasible  # as this run's target measures it
    assert res.chosen.payload is not None  # the run's own candidate: its plan is what the prune stage applies
    assert set(ev.measured) <= {c.key for c in res.candidates}


def test_resume_with_another_search_space_is_refused(tmp_path):
    url = sqlite(tmp_path)
    run(tmp_path, cap=3, storage=url)
    with pytest.raises(ConfigError, match="another search space"):
        run(tmp_path, cap=3, storage=url, mode="block")


def _uniform_run(tmp_path, mode="group", uniform=True, study="s", storage=None, **kw):
    ev = FakeEvaluator()
    return ev, search_optuna(ev, "latency", Budgets(0.6, None, 1.0, BASE_ACC),
                             SearchLimits(max_ratio=0.9, max_candidates=12, latency_margin=0.05),
                             families=families(ev.groups, mode), storage=storage or sqlite(tmp_path),
                             study_name=study, seed=0, uniform=uniform, **kw)


def test_uniform_keeps_one_width_per_family_and_workers_learn_it_from_the_study(tmp_path):
    from search.families import is_uniform

    url = sqlite(tmp_path)
    ev, res = _uniform_run(tmp_path, mode="stage", storage=url)
    fams = families(ev.groups, "stage")
    assert len(res.candidates) >= 6
    for c in res.candidates:
        assert is_uniform(ev.groups, fams, dict(c.key)), c.key
        assert c.policy["uniform"] is True
    spec = SearchSpec.from_json(load(url).user_attrs["edge_pipeline.search"])
    assert spec.uniform  # stored with the study, so a worker prunes alike
    with pytest.raises(ConfigError, match="uniform setting"):  # a resume must not mix the two
        _uniform_run(tmp_path, mode="stage", uniform=False, storage=url)


def test_non_uniform_family_search_can_differ_within_a_stage(tmp_path):
    from search.families import is_uniform

    ev, res = _uniform_run(tmp_path, mode="group", uniform=False)
    fams = families(ev.groups, "stage")
    assert any(not is_uniform(ev.groups, fams, dict(c.key)) for c in res.candidates)


def test_optuna_progress_reports_every_trial_with_the_best_so_far(tmp_path):
    ticks = []
    _uniform_run(tmp_path, mode="stage", progress=lambda d, t, s: ticks.append((d, t, s)))
    assert [d for d, _, _ in ticks] == list(range(1, 13)) and all(t == 12 for _, t, _ in ticks)
    assert ticks[0][2].startswith("closest")  # the unpruned anchor is over the budget
    assert ticks[-1][2].startswith("best trial")


def test_impossible_budget_keeps_the_fastest_candidate_and_says_so(tmp_path):
    url = sqlite(tmp_path)
    _, res = run(tmp_path, cap=8, budgets=Budgets(0.001, None, 1.0, BASE_ACC), storage=url)
    assert "not reachable" in res.stop_reason
    assert res.chosen is not None and not res.chosen.feasible and res.chosen.recovered
    assert res.chosen.latency_ms == min(c.latency_ms for c in res.candidates)
    assert len(load(url).get_trials()) == 8  # ended at the cap, no endless loop


def test_duplicate_architectures_are_measured_once_and_counted(tmp_path):
    url = sqlite(tmp_path)
    ev, res = run(tmp_path, FakeEvaluator(round_to=64), cap=16, storage=url)  # coarse widths: many repeats
    trials = load(url).get_trials()
    keys = [json.dumps(t.user_attrs["candidate"]["key"]) for t in trials]
    dups = len(keys) - len(set(keys))
    assert dups > 0
    assert len(ev.measured) == len(set(ev.measured)) == len(set(keys))
    assert f"{len(set(keys))} architectures, {dups} duplicates" in res.stop_reason
    assert len(res.candidates) == len(set(keys))
    assert sum("duplicate_of" in t.user_attrs for t in trials) == dups


def test_failed_evaluation_is_told_fail_with_the_error_and_the_search_goes_on(tmp_path):
    url = sqlite(tmp_path)
    ev = FakeEvaluator(fail_if=lambda keep: keep["layer3.0.conv1"] < 0.3 and keep["layer1.0.conv1"] < 0.3)
    _, res = run(tmp_path, ev, cap=10, storage=url)
    failed = load(url).get_trials(states=(TrialState.FAIL,))
    assert failed  # the most-pruned anchor at least
    assert all(t.user_attrs["error"] == "RuntimeError: fake export failure" and "traceback" in t.user_attrs
               for t in failed)
    assert res.chosen is not None and f"{len(failed)} failed" in res.stop_reason


def test_a_broken_evaluator_stops_the_search_fast(tmp_path):
    url = sqlite(tmp_path)
    with pytest.raises(StageError, match="3 trials in a row failed"):
        run(tmp_path, FakeEvaluator(fail_if=lambda keep: True), cap=50, storage=url)
    assert len(load(url).get_trials(states=(TrialState.FAIL,))) == 3


def test_study_of_another_search_is_refused(tmp_path):
    url = sqlite(tmp_path)
    st = optuna.create_study(study_name="s", storage=open_storage(url), directions=["minimize", "maximize"])
    st.enqueue_trial({"x": 1.0})
    with pytest.raises(ConfigError, match="holds trials of another search"):
        run(tmp_path, storage=url)


# ------------------------------------------------------------------ workers

def _spec(cap: int = 40) -> SearchSpec:
    fams = families(FakeEvaluator().groups)
    return SearchSpec("latency", Budgets(0.6, None, 1.0, BASE_ACC), Space.make(fams, 0.9), "nsga2", cap, 0.05)


def fake_factory(attrs, workdir, device=None, log=None):
    return FakeEvaluator()


def test_worker_joins_an_open_study_and_respects_its_cap(tmp_path):
    url = sqlite(tmp_path)
    prepare_study(url, "w", _spec(cap=5))
    n1, why1 = run_worker("w", url, n_trials=3, evaluator_factory=fake_factory)
    n2, why2 = run_worker("w", url, evaluator_factory=fake_factory)
    assert (n1, n2) == (3, 2)
    assert why1 == "3 trials evaluated by this process" and why2 == "candidate cap (5) reached"
    trials = optuna.load_study(study_name="w", storage=open_storage(url)).get_trials()
    assert [t.number for t in trials] == list(range(5)) and all(t.state == TrialState.COMPLETE for t in trials)


def test_worker_stops_when_the_run_closed_the_study(tmp_path):
    url = sqlite(tmp_path)
    run(tmp_path, cap=3, storage=url, study="s")
    assert run_worker("s", url, evaluator_factory=fake_factory) == (0, "the run closed the study")


def test_worker_cli_unknown_study_is_one_clear_error(tmp_path, cli):
    code, out, err = cli("worker", "--study", "nope", "--storage", sqlite(tmp_path))
    assert code == 2
    assert "no study 'nope'" in out + err and "pipeline run --search optuna" in out + err


def test_worker_cli_bad_storage_url(tmp_path, cli):
    code, out, err = cli("worker", "--study", "s", "--storage", "nosuchdb://x")
    assert code == 2 and "cannot open Optuna storage" in out + err


def test_password_is_not_printed(tmp_path):
    from search.optuna import redact_url

    assert redact_url("postgresql://me:secret@db:5432/o") == "postgresql://me:***@db:5432/o"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"


def _spawn_worker(url: str, study: str, tmp: Path, *args: str) -> subprocess.Popen:
    """A fake worker process; its temp files go to ``tmp`` (a killed one cannot clean up after itself)."""
    return subprocess.Popen([sys.executable, "-m", "tests.search.optuna_fake_worker", "--study", study,
                             "--storage", url, *args], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp)})


def _assert_two_workers_share_one_study(url: str, barrier: Path, per_worker: int = 6) -> None:
    prepare_study(url, "dist", _spec(cap=100))
    barrier.mkdir()
    procs = [_spawn_worker(url, "dist", barrier.parent, "--n-trials", str(per_worker), "--delay", "0.1",
                           "--barrier", str(barrier)) for _ in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
        outs.append(json.loads(out.strip().splitlines()[-1]))
    study = optuna.load_study(study_name="dist", storage=open_storage(url))
    trials = study.get_trials()
    # no trial lost or run twice: numbers 0..N-1 exactly once, every one COMPLETE, each told by one worker
    assert sorted(t.number for t in trials) == list(range(2 * per_worker))
    assert len({t._trial_id for t in trials}) == len(trials)
    assert all(t.state == TrialState.COMPLETE for t in trials)
    names = [o["worker"] for o in outs]
    assert len(set(names)) == 2
    by_worker = {n: [t.number for t in trials if t.user_attrs["worker"] == n] for n in names}
    assert all(o["trials"] == per_worker == len(by_worker[o["worker"]]) for o in outs)  # both did some
    # the two queued anchors were each run once
    assert sum("fixed_params" in t.system_attrs for t in trials) == 2
    # both workers were at it at the same time (the point of the exercise)
    spans = {n: (min(t.datetime_start for t in trials if t.user_attrs["worker"] == n),
                 max(t.datetime_complete for t in trials if t.user_attrs["worker"] == n)) for n in names}
    (s1, e1), (s2, e2) = spans.values()
    assert s1 < e2 and s2 < e1


def test_two_worker_processes_on_sqlite(tmp_path):
    _assert_two_workers_share_one_study(sqlite(tmp_path), tmp_path / "barrier")


@pytest.mark.postgres
def test_two_worker_processes_on_postgres(postgres_url, tmp_path):
    _assert_two_workers_share_one_study(postgres_url, tmp_path / "barrier")


@pytest.mark.postgres
def test_study_cap_stops_concurrent_workers_on_postgres(postgres_url, tmp_path):
    prepare_study(postgres_url, "cap", _spec(cap=10))
    procs = [_spawn_worker(postgres_url, "cap", tmp_path, "--delay", "0.05") for _ in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="cap", storage=open_storage(postgres_url)).get_trials()
    # each worker checks the cap before it asks: the study may overshoot by one trial per extra worker
    assert 10 <= len(trials) <= 11
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    assert all(t.state == TrialState.COMPLETE for t in trials)


@pytest.mark.postgres
def test_killed_worker_trial_is_failed_and_rerun_on_postgres(postgres_url, tmp_path):
    prepare_study(postgres_url, "kill", _spec(cap=100))
    victim = _spawn_worker(postgres_url, "kill", tmp_path, "--n-trials", "1", "--delay", "60", "--heartbeat", "1")
    study = optuna.load_study(study_name="kill", storage=open_storage(postgres_url))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not study.get_trials(states=(TrialState.RUNNING,)):
        time.sleep(0.2)
    time.sleep(1.5)  # a heartbeat or two recorded
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    lost = study.get_trials(states=(TrialState.RUNNING,))
    assert [t.number for t in lost] == [0]
    time.sleep(4.5)  # past the grace period (4 heartbeats)
    rescuer = _spawn_worker(postgres_url, "kill", tmp_path, "--n-trials", "2", "--delay", "0.01", "--heartbeat", "1")
    _out, err = rescuer.communicate(timeout=120)
    assert rescuer.returncode == 0, err[-2000:]
    trials = optuna.load_study(study_name="kill", storage=open_storage(postgres_url)).get_trials()
    assert trials[0].state == TrialState.FAIL
    retry = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == trials[0].params
    assert not [t for t in trials if t.state == TrialState.RUNNING]


# ------------------------------------------------------------------ the real evaluator, rebuilt by a worker

@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The fast end-to-end config and what the run has when its tune stage starts (model, data, groups, scores)."""
    from pipeline.config import resolve_config
    from tests.conftest import FAST_YAML

    path = tmp_path_factory.mktemp("real") / "fast.yaml"
    path.write_text(FAST_YAML)
    cfg = resolve_config(path, {})
    return (cfg, *_real_pieces(cfg))


def _real_pieces(cfg):
    import copy

    import torch

    from stages.evaluate import TorchRunner, evaluate_top1
    from stages.load.data import load_data
    from stages.load.models import ModelRequest, load_model
    from stages.model.graph import PruneGraph
    from stages.score import CRITERIA, ScoreContext

    torch.manual_seed(cfg.seed)
    lm = load_model(ModelRequest(cfg.model, cfg.arch, cfg.input_shape, cfg.trust_checkpoint))
    data = load_data(cfg.data, lm.input_shape)
    model = copy.deepcopy(lm.module).eval()
    graph = PruneGraph(model, torch.zeros((2, *lm.input_shape)), cfg.prune.ignore)
    scores = CRITERIA.get(cfg.criterion)(ScoreContext(model=model, graph=graph, calib=data.calib, seed=cfg.seed))
    return lm, data, graph.groups(), scores, evaluate_top1(TorchRunner(lm.module), data.calib)


def test_worker_refuses_a_different_model(tmp_path, real_run):
    from pipeline.worker import evaluator_from_study, make_run_spec
    from search.optuna import RUN_KEY, SEARCH_KEY

    cfg, lm, _data, groups, scores, acc = real_run
    spec = SearchSpec("latency", Budgets(1.0, None, 3.0, acc), Space.make(families(groups), 0.9), "nsga2", 4, 0.05)
    run_spec = make_run_spec(cfg, model=lm.module, groups=groups, scores=scores, baseline_latency_ms=1.0)
    bad = {**run_spec, "model_sha256": "0" * 64}
    with pytest.raises(ConfigError, match="not the run's model"):
        evaluator_from_study({SEARCH_KEY: spec.to_json(), RUN_KEY: bad}, tmp_path)
    bad = {**run_spec, "groups": run_spec["groups"][1:]}
    with pytest.raises(ConfigError, match="other prunable groups"):
        evaluator_from_study({SEARCH_KEY: spec.to_json(), RUN_KEY: bad}, tmp_path)
    with pytest.raises(ConfigError, match="no run description"):
        evaluator_from_study({SEARCH_KEY: spec.to_json()}, tmp_path)


def test_worker_rebuilds_the_real_evaluator_from_the_study(tmp_path, real_run):
    """A worker that knows only the study measures the run's candidates, with the run's plans."""
    from pipeline.settings import build_evaluator
    from pipeline.worker import make_run_spec
    from search.evaluator import Subject
    from stages.export import ExportSettings, export_onnx
    from targets import get_target

    cfg, lm, data, groups, scores, acc = real_run
    fams = families(groups)
    spec = SearchSpec("latency", Budgets(0.5, None, 3.0, acc), Space.make(fams, 0.9), "nsga2", 10, 0.05)
    url = sqlite(tmp_path)
    prepare_study(url, "real", spec, run_spec=make_run_spec(cfg, model=lm.module, groups=groups, scores=scores,
                                                            baseline_latency_ms=1.0))
    lines: list[str] = []
    assert run_worker("real", url, n_trials=2, log=lines.append) == (2, "2 trials evaluated by this process")
    assert any(line.startswith("worker ready: example:digits-resnet") for line in lines)
    t0, t1 = optuna.load_study(study_name="real", storage=open_storage(url)).get_trials()
    a0, a1 = t0.user_attrs["candidate"], t1.user_attrs["candidate"]
    # trial 0 is the unpruned anchor: the run's model and accuracy, measured against itself on this machine
    # (loose bounds: other work on a shared 2-core machine moves single rounds a lot)
    assert a0["ratio"] == 0.0 and a0["accuracy_oneshot"] == pytest.approx(acc) and a0["raw_latency_ms"] > 0
    assert 0.2 < a0["speedup"] < 5 and a0["latency_ms"] == pytest.approx(1.0 / a0["speedup"])
    # trial 1 is the most pruned anchor: a real pruned model, and the run's own evaluator builds the same widths
    assert a1["ratio"] > 0.5 and a1["macs"] < a0["macs"] / 3 and a1["params"] < a0["params"] / 3
    assert t0.user_attrs["worker"] == t1.user_attrs["worker"]
    host_dir = tmp_path / "host"
    host_dir.mkdir()
    e = cfg.export
    export_onnx(lm.module, lm.input_shape, host_dir / "baseline.onnx",
                ExportSettings(opset=e.opset, exporter=e.exporter, atol=e.atol, rtol=e.rtol))
    ev = build_evaluator(cfg, Subject(lm.module, tuple(lm.input_shape), data, groups, scores), get_target("cpu"),
                         workdir=host_dir / "c", baseline_onnx=host_dir / "baseline.onnx", baseline_latency_ms=1.0)
    plan = ev.plan_for(expand(fams, {f: t1.params[Space.param(f)] for f in fams}), {"kind": "optuna"})
    assert [list(x) for x in sorted(plan.widths().items())] == a1["key"]
