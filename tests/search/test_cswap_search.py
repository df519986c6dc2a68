"""The ``cswap`` search: C-SWAP's progressive plan measured as the one candidate, against a fake evaluator.

Hand case: groups a (16 channels), b (8), c (8); the plan keeps a 11, b 8, c 2, so 5 + 0 + 6 = 11 of 32
channels were accepted. Exact widths (round_to 1) prune all 11; round_to 4 rounds the kept widths *up*
(a 12, c 4), so 4 + 4 = 8 are pruned, every one of them accepted. The fake's latency is 1 ms per kept
channel (baseline 32 ms): exact widths measure 21 ms, a 32/21 speedup; its accuracy is 99 minus 0.5 per
removed channel (93.5: 5.5 points below 99, past a 5-point floor).
"""

from __future__ import annotations

import json

import pytest
import torch

from core.errors import ConfigError, StageError
from pipeline.config import RunConfig
from pipeline.preflight import check_names
from search import SEARCHES, SearchContext, TuneSettings
from search.base import Candidate, SearchLimits
from search.budget import Budgets
from search.cswap import plan_widths, proposal_keep_ratios, search_cswap
from stages.model.graph import GroupInfo
from stages.prune.plan import make_plan

GROUPS = [GroupInfo("a", 16, ("a",), ()), GroupInfo("b", 8, ("b",), ()), GroupInfo("c", 8, ("c",), ())]
PLAN = {"a": 11, "b": 8, "c": 2}
BASE_MS = 32.0


class Fake:
    """1 ms per kept channel, 99 - 0.5 per removed channel; widths as the real evaluator's make_plan makes them."""

    def __init__(self, round_to: int | None = 1) -> None:
        self.round_to = round_to
        self.measured: list[tuple[dict, dict]] = []
        self.recovered = 0

    def measure_policy(self, keep, policy) -> Candidate:
        self.measured.append((dict(keep), dict(policy)))
        scores = {g.id: torch.arange(float(g.width)) for g in GROUPS}
        w = make_plan(GROUPS, scores, keep, self.round_to).widths()
        kept = sum(w.values())
        return Candidate(1 - kept / 32, tuple(sorted(w.items())), float(kept), 5.0, 99 - 0.5 * (32 - kept),
                         macs=100 * kept, params=10 * kept, speedup=BASE_MS / kept, policy=dict(policy))

    def recover(self, c: Candidate) -> float:
        self.recovered += 1
        return float(c.accuracy_oneshot)


def ctx_for(ev, proposal, budgets: Budgets, objective: str = "latency", round_to: int | None = 1) -> SearchContext:
    return SearchContext(ev, GROUPS, objective, budgets, SearchLimits(), TuneSettings(), round_to, BASE_MS,
                         proposal=proposal)


def test_plan_to_keep_ratios():
    assert proposal_keep_ratios(GROUPS, PLAN) == {"a": 11 / 16, "b": 1.0, "c": 0.25}
    assert proposal_keep_ratios(GROUPS, PLAN, 1) == proposal_keep_ratios(GROUPS, PLAN, None)
    assert plan_widths(GROUPS, PLAN, 4) == {"a": 12, "b": 8, "c": 4}  # rounded up: no unaccepted channel goes
    assert plan_widths(GROUPS, PLAN, 8) == {"a": 16, "b": 8, "c": 8}  # a 11 -> 16 (not the nearest, 8)
    assert proposal_keep_ratios(GROUPS, {"a": 2}) == {"a": 0.125, "b": 1.0, "c": 1.0}  # unnamed groups keep all
    for r in (1, 4, 8):  # make_plan at the run's round_to gives the rounded-up widths back exactly
        keep = proposal_keep_ratios(GROUPS, PLAN, r)
        assert make_plan(GROUPS, {g.id: torch.zeros(g.width) for g in GROUPS}, keep, r).widths() == \
            plan_widths(GROUPS, PLAN, r)
    heads = GroupInfo("attn", 12, ("q",), (), 3, 4)  # 3 heads of 4 channels: 5 kept -> 2 whole heads
    assert plan_widths([heads], {"attn": 5}, 8) == {"attn": 8}
    with pytest.raises(StageError, match="groups this model does not have: z"):
        proposal_keep_ratios(GROUPS, {"z": 1})
    with pytest.raises(StageError, match="keeps 0 of 8"):
        proposal_keep_ratios(GROUPS, {"b": 0})


def test_hand_case_measures_the_plan_once_and_reports_it():
    ev = Fake()
    budgets = Budgets(None, None, 5.0, 99.0, speedup=1.5)
    out = SEARCHES.get("cswap").run(ctx_for(ev, PLAN, budgets))
    res, extra = out.result, out.extra["cswap"]
    assert len(ev.measured) == 1 and ev.recovered == 1  # one candidate, then its recovery hook
    keep, policy = ev.measured[0]
    assert keep == {"a": 11 / 16, "b": 1.0, "c": 0.25}
    assert policy == {"kind": "cswap", "accepted": 11, "pruned": 11, "channels": 32, "round_up_to": 1}
    c = res.chosen
    assert c is res.candidates[0] and c.accepted and c.feasible and dict(c.key) == PLAN
    assert res.stop_reason == "C-SWAP procedure's plan (no search): 11 of 32 channels"
    assert extra == {"accepted": 11, "pruned": 11, "channels": 32, "fraction": 0.3438, "round_to": 1,
                     "baseline_ms": BASE_MS, "params": 210, "macs": 2100, "latency_ms": 21.0,
                     "speedup": pytest.approx(32 / 21), "accuracy_oneshot": 93.5, "accuracy": 93.5,
                     "budgets_met": True, "floor_met": False, "inexact": {}}
    json.dumps(out.extra)  # goes to candidates.json / report.json


def test_round_to_rounds_kept_widths_up():
    ev = Fake(round_to=4)
    out = SEARCHES.get("cswap").run(ctx_for(ev, PLAN, Budgets(None, None, None, None), round_to=4))
    assert dict(out.result.chosen.key) == {"a": 12, "b": 8, "c": 4}
    assert out.result.stop_reason == ("C-SWAP procedure's plan (no search): 11 of 32 channels; 8 pruned, widths "
                                      "rounded up to prune.round_to 4")
    cs = out.extra["cswap"]
    assert (cs["accepted"], cs["pruned"], cs["round_to"], cs["inexact"]) == (11, 8, 4, {})


def test_a_budget_the_plan_misses_is_reported_not_chased():
    ev = Fake()
    budgets = Budgets(None, 4.0, 1.0, 99.0, speedup=2.0)  # needs 16 ms and 4 MB; the plan gives 21 ms, 5 MB
    out = SEARCHES.get("cswap").run(ctx_for(ev, PLAN, budgets, objective="memory"))
    assert len(ev.measured) == 1 and out.result.chosen.accepted and not out.result.chosen.feasible
    assert out.extra["cswap"]["budgets_met"] is False and out.extra["cswap"]["floor_met"] is False


def test_refused_without_the_plan():
    for proposal in (None, {}):
        ev = Fake()
        with pytest.raises(ConfigError, match="needs the plan of criterion cswap's progressive procedure") as e:
            SEARCHES.get("cswap").run(ctx_for(ev, proposal, Budgets(None, None, None, None)))
        assert e.value.hint == "use --criterion cswap (with its progressive option on, the default)"
        assert ev.measured == []
    with pytest.raises(ConfigError):
        search_cswap(Fake(), GROUPS, None, Budgets(None, None, None, None), SearchLimits(), BASE_MS)


def test_config_refuses_cswap_search_with_another_criterion(cli, tmp_path):
    with pytest.raises(ConfigError, match="search 'cswap' prunes the plan of criterion 'cswap', not of "
                                          "'magnitude-l2'") as e:
        check_names(RunConfig(search="cswap", criterion="magnitude-l2"))
    assert "--criterion cswap" in e.value.hint
    with pytest.raises(ConfigError, match="progressive is off"):
        check_names(RunConfig(search="cswap", criterion="cswap", criterion_options={"progressive": "false"}))
    check_names(RunConfig(search="cswap", criterion="cswap"))
    SEARCHES.get("cswap").check("memory", has_latency_budget=False, criterion="cswap")  # every objective, no budget
    rc, _, err = cli("run", "--dry-run", "--search", "cswap", "--out", tmp_path / "never")
    assert rc == 2 and "prunes the plan of criterion 'cswap'" in err and not (tmp_path / "never").exists()


@pytest.mark.slow  # ~110 s on 2 shared cores: scoring all 896 channels, then one candidate and the final measurement
def test_pipeline_run_prunes_exactly_the_cswap_plan(cli, tmp_path):
    from tests.conftest import FAST_YAML

    yaml = (FAST_YAML.replace("recovery: {steps: 60, tune_steps: 0, batch_size: 32}",
                              "recovery: {method: none, steps: 0, tune_steps: 0, batch_size: 32}")
            + "criterion_options: {samples: 4}\n")
    assert "method: none" in yaml
    cfg, out = tmp_path / "c.yaml", tmp_path / "r"
    cfg.write_text(yaml)
    code, _, err = cli("run", "--config", cfg, "--search", "cswap", "--criterion", "cswap", "--out", out, "-q")
    assert code in (0, 1, 3), err
    rep = json.loads((out / "report.json").read_text())
    cs = rep["tune"]["cswap"]
    assert rep["search"] == "cswap" and rep["tune"]["evaluations"] == 1
    assert rep["tune"]["stop_reason"].startswith(f"C-SWAP procedure's plan (no search): {cs['accepted']} of 896 "
                                                 "channels")
    assert cs["round_to"] == 8 and cs["inexact"] == {} and cs["budgets_met"] in (True, False)
    plan = torch.load(out / "scores.pt", weights_only=True)["proposal"]
    groups = json.loads((out / "policy.json").read_text())["groups"]
    kept = {g: len(v["keep_idxs"]) for g, v in groups.items()}
    assert sum(plan.values()) == 896 - cs["accepted"] and sum(kept.values()) == 896 - cs["pruned"]
    # kept widths rounded up to 8 (never the nearest multiple): only accepted channels were removed
    assert kept == {g: min(v["width"], -(-plan[g] // 8) * 8) for g, v in groups.items()}
