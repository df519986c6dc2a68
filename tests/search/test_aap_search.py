"""The ``aap`` search: AAP's global threshold path, landed on measured latency (deterministic cost model)."""

from __future__ import annotations

import torch

from search.aap import search_aap, shares, threshold_path, unit_scores
from search.base import SearchLimits
from search.budget import Budgets
from search.landing import Window
from stages.model.graph import GroupInfo
from tests.search.test_sensitivity import FULL, GROUPS, TERMS, Model

SCORES = {"a": torch.linspace(0.1, 1.0, 64), "b": torch.linspace(1.0, 2.0, 64), "c": torch.linspace(0.0, 3.0, 32)}


class ScoredModel(Model):
    scores = SCORES


def test_unit_scores_are_per_head_and_per_conv_group_position():
    heads = GroupInfo("attn", 8, ("q",), (), heads=2, head_dim=4)
    assert unit_scores(heads, torch.tensor([1.0, 1, 1, 1, 3, 3, 3, 3])).tolist() == [1.0, 3.0]
    grouped = GroupInfo("g", 6, ("c",), (), channel_groups=2)
    assert unit_scores(grouped, torch.tensor([1.0, 2, 3, 3, 4, 5])).tolist() == [2.0, 3.0, 4.0]


def test_the_threshold_scales_with_the_layer_share():
    share = shares(GROUPS, {"a": 100, "b": 100, "c": 200})
    assert share == {"a": 0.25, "b": 0.25, "c": 0.5}
    path, at = threshold_path(GROUPS, SCORES, share, 0.875, 8)
    assert path[0] == FULL and at == sorted(at)
    assert all(p != q for p, q in zip(path, path[1:]))
    first = path[1]  # a's low scores fall first: at T*0.25 = 0.1 ... b's start at 1.0
    assert first["a"] < 64 and first["b"] == 64
    assert path[-1] == {"a": 8, "b": 8, "c": 8}  # the max_ratio floor


def test_it_lands_on_the_budget():
    m = ScoredModel()
    base = m.latency(FULL)
    res, extra = search_aap(m, TERMS, shares(GROUPS, {"a": 1, "b": 1, "c": 1}), Budgets(None, None, None, None, speedup=2.0),
                            SearchLimits(max_candidates=12), 8, base)
    window = Window.of(base / 2.0, 0.05)
    assert res.chosen is not None and res.chosen.latency_ms <= window.high
    assert extra["aap"]["threshold"] is not None and extra["lut_calibration"]["model"] == "macs"


def test_an_unreachable_budget_says_so():
    m = ScoredModel()
    res, _ = search_aap(m, TERMS, shares(GROUPS, {}), Budgets(None, None, None, None, speedup=50.0),
                        SearchLimits(max_candidates=12), 8, m.latency(FULL))
    assert "not reachable" in res.stop_reason and res.chosen is not None
