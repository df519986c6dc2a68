"""The latency LUT: interaction model, calibration (leave-one-out), staircase rounding; greedy on top of it.

A deterministic bilinear cost model stands in for the target: a two-stage ResNet-like net whose
conv costs scale with (kept input channels) x (kept output channels), optionally padded to a
channel block of 8 (the staircase of a runtime's kernels).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import pytest

from search.base import Candidate, SearchLimits
from search.budget import Budgets
from search.families import families, is_uniform
from search.greedy import GreedySettings, make_units, search_greedy
from search.lut import (
    Calibration,
    LatencyLUT,
    LayerTerm,
    build_lut,
    leave_one_out,
    noise_sigma,
    stair_grid,
    stair_resolution,
    staircase_bottoms,
)


@dataclass(frozen=True)
class G:  # GroupInfo without torch
    id: str
    width: int
    out_layers: tuple[str, ...]
    in_layers: tuple[str, ...]


GROUPS = [
    G("conv1", 32, ("conv1", "layer1.0.conv2", "layer1.1.conv2"),
      ("layer1.0.conv1", "layer1.1.conv1", "layer2.0.conv1", "layer2.0.down")),
    G("layer1.0.conv1", 32, ("layer1.0.conv1",), ("layer1.0.conv2",)),
    G("layer1.1.conv1", 32, ("layer1.1.conv1",), ("layer1.1.conv2",)),
    G("layer2.0.down", 64, ("layer2.0.down", "layer2.0.conv2", "layer2.1.conv2"), ("layer2.1.conv1", "fc")),
    G("layer2.0.conv1", 64, ("layer2.0.conv1",), ("layer2.0.conv2",)),
    G("layer2.1.conv1", 64, ("layer2.1.conv1",), ("layer2.1.conv2",)),
]
FULL = {g.id: g.width for g in GROUPS}
MACS = {"conv1": 10, "layer1.0.conv1": 30, "layer1.0.conv2": 30, "layer1.1.conv1": 30, "layer1.1.conv2": 30,
        "layer2.0.conv1": 20, "layer2.0.conv2": 40, "layer2.0.down": 5, "layer2.1.conv1": 40, "layer2.1.conv2": 40,
        "fc": 1}
SENS = {"conv1": 6.0, "layer1.0.conv1": 3.0, "layer1.1.conv1": 3.0, "layer2.0.down": 2.0, "layer2.0.conv1": 0.5,
        "layer2.1.conv1": 0.5}  # accuracy points lost per (removed fraction)^2 x 10


def terms() -> list[LayerTerm]:
    """What ``layer_terms`` returns for this net (without a torch model)."""
    out = {n: g.id for g in GROUPS for n in g.out_layers}
    inn = {n: g.id for g in GROUPS for n in g.in_layers}
    return [LayerTerm(n, float(m), ((out[n], 1.0),) if n in out else (), ((inn[n], 1.0),) if n in inn else ())
            for n, m in sorted(MACS.items())]


class Net:
    """latency = overhead + k * sum_L macs_L * f_out * f_in (f: kept fraction, padded to ``block`` channels)."""

    groups = GROUPS

    def __init__(self, block: int = 1, overhead: float = 0.1, k: float = 0.004, distort=lambda t, i: t) -> None:
        self.block, self.overhead, self.k = block, overhead, k
        self.distort = distort  # what the target "measures" for the i-th full measurement of true latency t
        self.layers = terms()
        self.measured: list[dict[str, int]] = []
        self.round_to: int | None = None

    def widths(self, keep) -> dict[str, int]:
        return {g: max(1, math.floor(FULL[g] * keep.get(g, 1.0) + 0.5)) for g in FULL}

    def frac(self, gid: str, widths) -> float:
        w = widths[gid]
        return math.ceil(w / self.block) * self.block / FULL[gid]

    def latency(self, widths) -> float:
        t = self.overhead
        for L in self.layers:
            f = 1.0
            for g, _ in (*L.out_groups, *L.in_groups):
                f *= self.frac(g, widths)
            t += self.k * L.macs * f
        return t

    @property
    def base(self) -> float:
        return self.latency(FULL)

    def speedups(self, policies):
        return [self.base / self.latency(self.widths(p)) for p in policies]

    def accuracy(self, widths) -> float:
        return 99.0 - sum(SENS[g] * 10 * (1 - widths[g] / FULL[g]) ** 2 for g in FULL)

    def oneshot_accuracy(self, keep) -> float:
        return self.accuracy(self.widths(keep)) - 3.0

    def measure_policy(self, keep, policy) -> Candidate:
        w = self.widths(keep)
        self.measured.append(w)
        lat = self.distort(self.latency(w), len(self.measured) - 1)
        removed = 1 - sum(w.values()) / sum(FULL.values())
        return Candidate(removed, tuple(sorted(w.items())), lat, 10.0, self.oneshot_accuracy(keep), 100, 10,
                         speedup=self.base / lat, policy=dict(policy))

    def recover(self, c: Candidate) -> float:
        return self.accuracy(dict(c.key))


def make_lut(net: Net, tmp_path, points: int = 8, staircase: bool = False, round_to: int | None = 8) -> LatencyLUT:
    parts = {"target_desc": f"fake-{net.block}", "sample_shape": (3, 8, 8), "model_hash": "x", "batch": 1}
    lut = build_lut(GROUPS, net.speedups, net.base, round_to, points, parts, cache=tmp_path, staircase=staircase)
    lut.layers = net.layers
    return lut


POLICIES = [
    {"conv1": 16, "layer2.0.down": 32},
    {"layer1.0.conv1": 8, "layer1.1.conv1": 16, "conv1": 24},
    {"conv1": 16, "layer1.0.conv1": 16, "layer1.1.conv1": 16, "layer2.0.down": 32, "layer2.0.conv1": 32,
     "layer2.1.conv1": 32},
    {"conv1": 8, "layer1.0.conv1": 8, "layer1.1.conv1": 8, "layer2.0.down": 16, "layer2.0.conv1": 8,
     "layer2.1.conv1": 16},
    {"layer2.0.down": 48, "layer2.1.conv1": 24},
]


# ------------------------------------------------------------------ the interaction model

def test_interaction_model_is_exact_for_bilinear_cost_where_the_additive_sum_is_not(tmp_path):
    net = Net()
    lut = make_lut(net, tmp_path)
    worst_additive = 0.0
    for p in POLICIES:
        w = {**FULL, **p}
        true = net.latency(w)
        assert lut.predict_raw(w, FULL) == pytest.approx(true, rel=1e-9)
        worst_additive = max(worst_additive, abs(lut.predict_raw(w, FULL, "additive") - true) / true)
    # a single cut is what the table measured, in both models
    single = {**FULL, "conv1": 16}
    assert lut.predict_raw(single, FULL, "additive") == pytest.approx(net.latency(single), rel=1e-9)
    assert lut.predict_raw(single, FULL) == pytest.approx(net.latency(single), rel=1e-9)
    # summing single-cut savings double-counts every conv between two cut groups: far too optimistic
    assert worst_additive > 0.3


def test_lut_divides_out_the_measured_self_speedup_of_the_unpruned_model(tmp_path):
    net = Net()
    seen = []

    def biased(policies):  # every engine after the first timed 10% fast: the position, not the model
        seen.append(policies)
        return [1.1 * s for s in net.speedups(policies)]

    parts = {"target_desc": "biased", "sample_shape": (3, 8, 8), "model_hash": "x", "batch": 1}
    lut = build_lut(GROUPS, biased, net.base, 8, 4, parts, cache=tmp_path)
    for p in seen:  # the unpruned model first and last, the group's variants between
        assert p[0] == p[-1] and list(p[0].values()) == [1.0] and all(q.keys() == p[0].keys() for q in p)
    assert lut.null["conv1"] == [pytest.approx(1.1), pytest.approx(1.1)]
    for g in GROUPS:
        for w, s in lut.table[g.id].items():
            assert s == pytest.approx(net.base / net.latency({**FULL, g.id: w}), rel=1e-9)


def test_one_spoiled_null_measurement_cannot_skew_a_group():
    from search.lut import null_bias

    assert null_bias(1.1, 1.1) == pytest.approx(1.1)  # a consistent bias is removed
    assert null_bias(0.9, 0.526) == pytest.approx(0.9)  # a burst of load spoiled the last one
    assert null_bias(1.2, 1.25) == pytest.approx(1.2)
    assert null_bias(0.95, 1.05) == 1.0  # they disagree about the sign: no correction
    assert null_bias(0.0, 1.2) == 1.0


def test_lut_without_layer_structure_falls_back_to_additive(tmp_path):
    net = Net()
    lut = make_lut(net, tmp_path)
    lut.layers = []
    assert lut.active_model() == "additive"
    w = {**FULL, **POLICIES[2]}
    assert lut.predict_raw(w, FULL) == pytest.approx(lut.predict_raw(w, FULL, "additive"))


def test_layer_terms_of_the_default_model_map_every_conv_to_its_groups():
    torch = pytest.importorskip("torch")
    from stages.load.models import ModelRequest, load_model
    from stages.model.cost import layer_terms, macs_params
    from stages.model.graph import PruneGraph

    lm = load_model(ModelRequest("example:digits-resnet", None, None, False))
    groups = PruneGraph(copy.deepcopy(lm.module), torch.zeros((2, *lm.input_shape))).groups()
    ts = {t.name: t for t in layer_terms(copy.deepcopy(lm.module), torch.zeros((1, *lm.input_shape)), groups)}
    # layer2.1.conv2: input channels from its block's conv1 group, output channels from the layer2 stream
    t = ts["layer2.1.conv2"]
    assert t.in_groups == (("layer2.1.conv1", 1.0),) and t.out_groups == (("layer2.0.shortcut.0", 1.0),)
    assert ts["conv1"].in_groups == () and ts["fc"].out_groups == ()  # image input, classifier output: fixed
    macs, _ = macs_params(lm.module, lm.input_shape)
    assert sum(t.macs for t in ts.values()) == pytest.approx(macs, rel=0.02)  # BN/ReLU/add are the rest


# ------------------------------------------------------------------ calibration and its error

def test_calibration_absorbs_a_linear_distortion_and_leave_one_out_is_exact_then(tmp_path):
    net = Net(distort=lambda t, i: 0.3 + 1.3 * t)  # per-call overhead and a slower runtime than the LUT saw
    lut = make_lut(net, tmp_path)
    for p in POLICIES:
        w = {**FULL, **p}
        lut.observe(w, FULL, net.measure_policy({g: v / FULL[g] for g, v in w.items()}, {}).latency_ms)
    cal = lut.calibration(FULL)
    assert cal["n"] == len(POLICIES)
    assert cal["mean_abs_rel_err"] == pytest.approx(0.0, abs=1e-9)  # every point from a fit on the others
    assert cal["fit"]["a"] == pytest.approx(0.3) and cal["fit"]["b"] == pytest.approx(1.3)
    assert cal["raw"]["mean_abs_rel_err"] > 0.2  # uncalibrated, the distortion shows
    assert cal["online"]["max_abs_rel_err"] > 0.2  # the first point was predicted before any fit
    assert lut.predict({**FULL, "conv1": 8}, FULL) == pytest.approx(0.3 + 1.3 * net.latency({**FULL, "conv1": 8}))


def test_leave_one_out_error_matches_an_independent_computation(tmp_path):
    noise = [0.03, -0.05, 0.02, 0.06, -0.01]
    net = Net(distort=lambda t, i: (0.2 + 1.1 * t) * (1 + noise[i]))
    lut = make_lut(net, tmp_path)
    meas = []
    for p in POLICIES:
        w = {**FULL, **p}
        meas.append(net.measure_policy({g: v / FULL[g] for g, v in w.items()}, {}).latency_ms)
        lut.observe(w, FULL, meas[-1])
    cal = lut.calibration(FULL)
    raw = [p["raw_ms"] for p in cal["points"]]
    errs = []
    for i in range(len(raw)):
        xs = [r for j, r in enumerate(raw) if j != i]
        ys = [m for j, m in enumerate(meas) if j != i]
        b, a = np.polyfit(xs, ys, 1)
        pred = a + b * raw[i]
        assert cal["points"][i]["predicted_ms"] == pytest.approx(pred, rel=1e-9)
        errs.append(abs(pred - meas[i]) / meas[i])
    assert cal["mean_abs_rel_err"] == pytest.approx(sum(errs) / len(errs), rel=1e-9)
    assert cal["max_abs_rel_err"] == pytest.approx(max(errs), rel=1e-9)
    # the point itself never takes part in the fit that predicts it: in-sample residuals are smaller
    b, a = np.polyfit(raw, meas, 1)
    in_sample = sum(abs(a + b * r - m) / m for r, m in zip(raw, meas)) / len(raw)
    assert cal["mean_abs_rel_err"] > in_sample


def test_calibration_fit_rules():
    assert Calibration.fit([]) == Calibration()
    one = Calibration.fit([(2.0, 2.5)])
    assert (one.a, one.b) == (pytest.approx(0.5), 1.0)  # one point: offset only
    same = Calibration.fit([(2.0, 2.4), (2.0, 2.6)])
    assert (same.a, same.b) == (pytest.approx(0.5), 1.0)  # no spread in the predictions: offset only
    two = Calibration.fit([(1.0, 1.5), (2.0, 3.5)])
    assert (two.a, two.b) == (pytest.approx(-0.5), pytest.approx(2.0))
    wild = Calibration.fit([(1.0, 1.0), (1.01, 2.0)])  # slope 100: points too close to trust a slope
    assert wild.b == 1.0
    assert leave_one_out([(1.0, 2.0), (3.0, 4.0)]) == [pytest.approx(2.0), pytest.approx(4.0)]


# ------------------------------------------------------------------ the staircase

def test_staircase_bottoms_pick_the_widest_width_of_every_step():
    stairs = {w: math.ceil(w / 8) for w in range(1, 65)}
    assert staircase_bottoms(stairs, tol=0.5) == [8, 16, 24, 32, 40, 48, 56, 64]
    shifted = {w: math.ceil((w - 2) / 6) for w in range(3, 51)}  # steps of 6 that begin at 3: measured, not assumed
    assert staircase_bottoms(shifted, tol=0.5) == [8, 14, 20, 26, 32, 38, 44, 50]
    rng = np.random.default_rng(0)
    noisy = {w: c + float(rng.normal(0, 0.03)) for w, c in stairs.items()}
    assert staircase_bottoms(noisy, tol=0.3) == [8, 16, 24, 32, 40, 48, 56, 64]
    # no staircase at all: the grid thinned to points at least tol apart in cost
    line = {w: w / 64 for w in range(1, 65)}
    assert staircase_bottoms(line, tol=0.1) == [1, 8, 15, 22, 29, 36, 43, 50, 57, 64]


def test_noise_sigma_reads_the_noise_not_the_steps():
    rng = np.random.default_rng(1)
    noisy = {w: math.ceil(w / 8) * 0.05 + float(rng.normal(0, 0.004)) for w in range(1, 129)}
    assert 0.002 < noise_sigma(noisy) < 0.008


def test_stair_grid_is_dense_and_regular():
    assert stair_grid(32, 32) == list(range(1, 32))
    assert stair_grid(128, 32) == list(range(4, 128, 4)) and stair_resolution(128, 32) == 4
    assert stair_grid(64, 6) == [16, 32, 48]  # a small point budget: coarse (steps finer than 32 unseen)


def test_lut_bottoms_on_a_measured_staircase(tmp_path):
    net = Net(block=8)
    lut = make_lut(net, tmp_path, points=32, staircase=True, round_to=None)
    assert sorted(lut.table["layer2.0.conv1"]) == list(range(2, 64, 2))  # dense: resolution 2 for 64 channels
    assert lut.bottoms("layer2.0.conv1", 64) == [8, 16, 24, 32, 40, 48, 56]
    assert lut.bottoms("conv1", 32) == [8, 16, 24]


def test_greedy_with_staircase_only_cuts_to_step_bottoms(tmp_path):
    net = Net(block=8)
    lut = make_lut(net, tmp_path, points=32, staircase=True, round_to=None)
    budget = 0.55 * net.base
    res = search_greedy(net, lut, "latency", Budgets(budget, None, None, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0),
                        GreedySettings(initial_reduction=0.1, staircase=True, lut_points=32), None)
    assert "budget met" in res.stop_reason and res.chosen.latency_ms <= budget
    for w in net.measured:  # off-block widths cost the same as the block above and lose channels: never chosen
        assert all(v % 8 == 0 for v in w.values()), w
    cal = lut.calibration(FULL)
    assert cal["n"] >= 3 and cal["mean_abs_rel_err"] < 0.01  # padded-bilinear cost: nearly exact on the steps


# ------------------------------------------------------------------ greedy on the bilinear net

def test_greedy_meets_budget_and_the_lut_follows_the_measurements(tmp_path):
    net = Net(distort=lambda t, i: 0.05 + 1.2 * t)
    lut = make_lut(net, tmp_path)
    budget = 0.5 * (0.05 + 1.2 * net.base)
    res = search_greedy(net, lut, "latency", Budgets(budget, None, None, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0), GreedySettings(initial_reduction=0.1), 8)
    assert "budget met" in res.stop_reason and res.chosen.latency_ms <= budget
    keep = {g: v / FULL[g] for g, v in res.chosen.key}
    assert keep["layer2.0.conv1"] < keep["conv1"] and keep["layer2.1.conv1"] < keep["conv1"]  # insensitive first
    cal = lut.calibration(FULL)
    assert cal["mean_abs_rel_err"] < 1e-6  # an exact linear distortion of an exact model
    assert cal["online"]["max_abs_rel_err"] > 0.01  # before the first fit the distortion showed


def test_greedy_progress_reports_every_measurement(tmp_path):
    net = Net()
    lut = make_lut(net, tmp_path)
    ticks = []
    search_greedy(net, lut, "latency", Budgets(0.6 * net.base, None, None, 99.0), SearchLimits(max_candidates=12),
                  GreedySettings(), 8, progress=lambda d, t, s: ticks.append((d, t, s)))
    assert ticks and [d for d, _, _ in ticks] == list(range(1, len(ticks) + 1)) and all(t == 12 for _, t, _ in ticks)
    assert all(s for _, _, s in ticks) and ticks[-1][2].startswith("best")


def test_uniform_greedy_keeps_one_width_per_family(tmp_path):
    net = Net()
    lut = make_lut(net, tmp_path)
    fams = families(GROUPS, "stage")
    assert fams == {"layer1": ["conv1", "layer1.0.conv1", "layer1.1.conv1"],
                    "layer2": ["layer2.0.conv1", "layer2.0.down", "layer2.1.conv1"]}
    units = make_units(GROUPS, lut, GreedySettings(uniform=True), 8)
    assert [u.name for u in units] == ["layer1", "layer2"]
    budget = 0.6 * net.base
    res = search_greedy(net, lut, "latency", Budgets(budget, None, None, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0), GreedySettings(uniform=True), 8)
    assert "budget met" in res.stop_reason
    for w in net.measured:
        assert is_uniform(GROUPS, fams, w), w
    chosen = dict(res.chosen.key)
    assert chosen["layer2.0.conv1"] == chosen["layer2.0.down"] == chosen["layer2.1.conv1"] < 64
    assert res.chosen.policy["uniform"] is True


def test_uniform_greedy_on_the_staircase_keeps_one_width_per_family(tmp_path):
    net = Net(block=8)
    lut = make_lut(net, tmp_path, points=32, staircase=True, round_to=None)
    fams = families(GROUPS, "stage")
    res = search_greedy(net, lut, "latency", Budgets(0.6 * net.base, None, None, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0),
                        GreedySettings(uniform=True, staircase=True, lut_points=32), None)
    assert "budget met" in res.stop_reason
    for w in net.measured:
        assert is_uniform(GROUPS, fams, w) and all(v % 8 == 0 for v in w.values()), w


def test_uniform_needs_families_of_several_groups(tmp_path):
    from core.errors import ConfigError

    net = Net()
    with pytest.raises(ConfigError, match="--uniform"):
        search_greedy(net, make_lut(net, tmp_path), "latency", Budgets(1.0, None, None, 99.0), SearchLimits(),
                      GreedySettings(uniform=True, families="group"), 8)


class LuckyNet(Net):
    """Every first measurement reads 30% fast; the confirmation (more rounds) tells the truth."""

    def measure_policy(self, keep, policy) -> Candidate:
        c = super().measure_policy(keep, policy)
        c.payload = {"true": c.latency_ms}
        c.latency_ms *= 0.7
        return c

    def confirm(self, c: Candidate) -> Candidate:
        c.latency_ms = c.payload["true"]
        c.payload["confirmed"] = True
        return c


def test_greedy_confirms_a_feasible_looking_step_before_it_stops(tmp_path):
    net = LuckyNet()
    lut = make_lut(net, tmp_path)
    budget = 0.6 * net.base
    res = search_greedy(net, lut, "latency", Budgets(budget, None, None, 99.0),
                        SearchLimits(max_candidates=30, latency_margin=0.0), GreedySettings(), 8)
    assert "budget met" in res.stop_reason
    true = net.latency(dict(res.chosen.key))
    assert res.chosen.latency_ms == pytest.approx(true) and true <= budget  # stopped on the true latency


def test_greedy_keeps_going_on_measurements_when_the_lut_prices_every_cut_wrong(tmp_path):
    net = Net()
    # a table spoiled by load: every cut "saves" 90%, so every policy is predicted at the floor
    lut = LatencyLUT(net.base, {g.id: {w: 10.0 for w in range(8, g.width, 8)} for g in GROUPS})
    lut.layers = net.layers
    budget = 0.7 * net.base
    res = search_greedy(net, lut, "latency", Budgets(budget, None, None, 99.0),
                        SearchLimits(max_candidates=40, latency_margin=0.0), GreedySettings(), 8)
    assert "budget met" in res.stop_reason and res.chosen.latency_ms <= budget
    assert any("smallest cut" in line for line in res.log)


def test_a_rolled_back_step_is_never_proposed_again(tmp_path):
    net = Net()
    lut = make_lut(net, tmp_path)
    res = search_greedy(net, lut, "latency", Budgets(0.3 * net.base, None, 0.5, 99.0),
                        SearchLimits(max_candidates=25), GreedySettings(), 8)
    assert "not reachable" in res.stop_reason
    keys = [tuple(sorted(w.items())) for w in net.measured]
    assert len(keys) == len(set(keys))  # every measurement a new architecture
    assert all(99.0 - c.accuracy <= 0.5 for c in res.candidates if c.accepted)
