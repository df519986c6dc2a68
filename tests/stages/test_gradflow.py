"""Gradient-flow criterion, the Hessian (OBD) baseline and the adapter's per-channel group sum.

Hand computations: a softmax regression's Hessian-vector product in closed form, a finite-
difference HVP on a two-layer net, and the sign convention as a directional derivative of ‖g‖².
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.model.graph import PruneGraph
from stages.score import CRITERIA, ScoreContext
from stages.score.gradflow import parameter_saliency
from stages.score.hessian import mean_squared_sample_grads
from tests.stages.test_score import TwoLayer, X


class Mlp(nn.Module):
    """fc1 (4 -> 3, bias) -> tanh -> fc2 (3 -> 3): one prunable group, the 3 hidden units."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def _data(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,), generator=g)


def _ctx(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None, **options) -> ScoreContext:
    model.eval()
    bs = batch_size or len(x)
    return ScoreContext(model=model, graph=PruneGraph(model, x[:2]), calib=TensorDataset(x, y),
                        batches=-(-len(x) // bs), batch_size=bs, options=options)


def _grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return list(torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters())))


# ------------------------------------------------------------------ Hessian-vector product

def test_hvp_matches_the_closed_form_of_softmax_regression():
    """L = mean_i CE(W x_i, y_i): g = (P - Y)^T X / n and H v = mean_i (diag p_i - p_i p_i^T)(V x_i) x_i^T."""
    x, y = _data(16)
    model = nn.Linear(4, 3, bias=False).double()
    w = model.weight.detach()
    p = torch.softmax(x @ w.T, 1)
    g = (p - F.one_hot(y, 3).double()).T @ x / len(x)
    hg = torch.zeros_like(w)
    for pi, xi in zip(p, x):
        hg += torch.outer((torch.diag(pi) - torch.outer(pi, pi)) @ (g @ xi), xi) / len(x)
    s, passes = parameter_saliency(model, [(x, y)])
    assert torch.allclose(s["weight"].double(), -w * hg, rtol=1e-5, atol=1e-7)
    assert passes == {"forward": 1, "backward": 2}


def test_hvp_matches_finite_differences_on_a_two_layer_net():
    x, y = _data()
    model = Mlp().double()
    params = list(model.parameters())
    g = _grad(model, x, y)
    eps = 1e-5
    plus, minus = copy.deepcopy(model), copy.deepcopy(model)
    with torch.no_grad():
        for a, b, gi in zip(plus.parameters(), minus.parameters(), g):
            a += eps * gi
            b -= eps * gi
    fd = [(a - b) / (2 * eps) for a, b in zip(_grad(plus, x, y), _grad(minus, x, y))]  # H g
    s, _ = parameter_saliency(model, [(x, y)])
    for (name, p), hg in zip(model.named_parameters(), fd):
        assert torch.allclose(s[name].double(), -p.detach() * hg, rtol=1e-4, atol=1e-8), name
    assert all(q.grad is None for q in params)


def test_two_batches_give_the_hvp_of_the_whole_set():
    """g of the mean loss first, then Hg batch by batch: the same as one batch of all samples."""
    x, y = _data(8)
    one = CRITERIA.get("gradient-flow").result(_ctx(Mlp().double(), x, y))
    two = CRITERIA.get("gradient-flow").result(_ctx(Mlp().double(), x, y, batch_size=4))
    assert torch.allclose(one.scores["fc1"], two.scores["fc1"], rtol=1e-4, atol=1e-7)
    assert one.passes == {"forward": 1, "backward": 2} and two.passes == {"forward": 4, "backward": 6}
    only_first = CRITERIA.get("gradient-flow").result(_ctx(Mlp().double(), x, y, batch_size=4, batches=1))
    assert only_first.passes == {"forward": 1, "backward": 2}
    assert not torch.allclose(only_first.scores["fc1"], one.scores["fc1"])


# ------------------------------------------------------------------ the criterion

def test_group_score_is_minus_the_sum_over_the_channels_parameters():
    x, y = _data()
    model = Mlp().double()
    s, _ = parameter_saliency(model, [(x, y)])
    per_unit = s["fc1.weight"].sum(1) + s["fc1.bias"] + s["fc2.weight"].sum(0)
    score = CRITERIA.get("gradient-flow")(_ctx(model, x, y))["fc1"]
    assert torch.allclose(score, -per_unit.float(), rtol=1e-5, atol=1e-8)


def test_sign_convention_removal_direction_raises_the_gradient_norm_by_2S():
    """d/dt ‖g(θ − t θ_c)‖² at t = 0 is −2 θ_cᵀ H g = 2 S_c: shrinking channel c toward removal
    raises the gradient norm exactly when S_c > 0, and the criterion ranks it lowest (pruned first)."""
    x, y = _data(16)
    model = Mlp(seed=3).double()
    scores = CRITERIA.get("gradient-flow")(_ctx(model, x, y))["fc1"]

    def grad_norm_sq(c: int, t: float) -> float:
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.fc1.weight[c] *= 1 - t
            m.fc1.bias[c] *= 1 - t
            m.fc2.weight[:, c] *= 1 - t
        return float(sum((gi ** 2).sum() for gi in _grad(m, x, y)))

    h = 1e-5
    slope = torch.tensor([(grad_norm_sq(c, h) - grad_norm_sq(c, -h)) / (2 * h) for c in range(3)], dtype=torch.float64)
    s_group = -scores.double()
    assert torch.allclose(slope, 2 * s_group, rtol=1e-3, atol=1e-9)
    assert int(scores.argmin()) == int(slope.argmax())  # the channel whose removal grows ‖g‖ most goes first


def test_missing_labels_fall_back_to_the_models_predictions():
    x, _ = _data()
    model = Mlp().double().eval()
    pred = model(x).argmax(1)
    own = CRITERIA.get("gradient-flow")(_ctx(model, x, pred))["fc1"]
    unlabeled = CRITERIA.get("gradient-flow")(_ctx(model, x, torch.full_like(pred, -1)))["fc1"]
    assert torch.equal(own, unlabeled)


def test_gradient_flow_by_hand_on_the_conv_bn_net():
    """TwoLayer (conv -> BN -> ReLU -> pool -> fc): the channel sum covers conv row, BN weight and
    bias, and the fc column; nothing is left on .grad."""
    m = TwoLayer()
    y = torch.tensor([0, 1, 0, 1])
    s, _ = parameter_saliency(m, [(X, y)])
    by_hand = s["conv.weight"].flatten() + s["bn.weight"] + s["bn.bias"] + s["fc.weight"].sum(0)
    scores = CRITERIA.get("gradient-flow")(_ctx(m, X, y))["conv"]
    assert torch.allclose(scores, -by_hand, rtol=1e-5, atol=1e-7)
    assert all(p.grad is None for p in m.parameters())


def test_bad_options_are_config_errors():
    x, y = _data()
    with pytest.raises(ConfigError, match="loss"):
        CRITERIA.get("gradient-flow")(_ctx(Mlp().double(), x, y, loss="mse"))
    with pytest.raises(ConfigError, match="batches"):
        CRITERIA.get("gradient-flow")(_ctx(Mlp().double(), x, y, batches="two"))


# ------------------------------------------------------------------ hessian (Torch-Pruning OBD)

def test_hessian_by_hand_on_the_conv_bn_net():
    """Torch-Pruning's formula with E[g²] over *all* samples: per layer Σ w²·E[g²] over the channel's
    weights (conv row, BN gamma, fc column), mean over layers, divided by the mean over channels."""
    m = TwoLayer().eval()  # BN on its running statistics, as the criterion runs it
    x = X * torch.arange(1.0, 5.0).view(4, 1, 1, 1)
    y = torch.tensor([0, 1, 1, 0])
    fisher = {n: torch.zeros_like(p) for n, p in m.named_parameters()}
    for i in range(len(x)):  # per-sample gradients, one backward each
        g = torch.autograd.grad(F.cross_entropy(m(x[i:i + 1]), y[i:i + 1]), list(m.parameters()))
        for (n, _), gi in zip(m.named_parameters(), g):
            fisher[n] += gi ** 2 / len(x)
    got = mean_squared_sample_grads(m, x, y, chunk=3)
    assert all(torch.allclose(got[n], fisher[n], rtol=1e-5, atol=1e-10) for n in fisher)
    w2h = {n: p.detach() ** 2 * fisher[n] for n, p in m.named_parameters()}
    r = w2h["conv.weight"].flatten() + w2h["bn.weight"] + w2h["fc.weight"].sum(0)
    s = CRITERIA.get("hessian")(_ctx(m, x, y, samples=4))["conv"]
    assert torch.allclose(s, r / r.mean(), rtol=1e-5)
    assert all(p.grad is None for p in m.parameters())


def test_hessian_ranks_a_dead_channel_last():
    m = TwoLayer()
    with torch.no_grad():
        m.fc.weight[:, 1] = 0.0  # channel 1 reaches no logit: no gradient, no weight on the consumer side
    x = X * torch.arange(1.0, 5.0).view(4, 1, 1, 1)
    s = CRITERIA.get("hessian")(_ctx(m, x, torch.tensor([0, 1, 1, 0])))["conv"]
    assert s[1] == 0 and (s[[0, 2]] > 0).all() and int(s.argmin()) == 1


# ------------------------------------------------------------------ adapter: group sum, channel sites

class Mixed(nn.Module):
    """conv+BN, depthwise conv+BN, flatten -> Linear + LayerNorm, biases everywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.bn1 = nn.Conv2d(2, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.dw, self.bn2 = nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8)
        self.c3 = nn.Conv2d(8, 4, 1)
        self.fc1, self.ln, self.fc = nn.Linear(4 * 4 * 4, 6), nn.LayerNorm(6), nn.Linear(6, 3)

    def forward(self, x):
        x = torch.relu(self.bn2(self.dw(torch.relu(self.bn1(self.c1(x))))))
        return self.fc(torch.relu(self.ln(self.fc1(self.c3(x).flatten(1)))))


@pytest.mark.parametrize("arch", ["resnet", "mixed"])
def test_group_sum_of_ones_counts_the_parameters_a_channel_removes(arch):
    from stages.load.cifar_resnet import CifarResNet

    model = CifarResNet(depth=8, width=4, in_channels=1).eval() if arch == "resnet" else Mixed().eval()
    x = torch.randn(2, 1, 8, 8) if arch == "resnet" else torch.randn(2, 2, 4, 4)
    graph = PruneGraph(model, x)
    sums = graph.group_sum({n: torch.ones_like(p) for n, p in model.named_parameters()})
    before = sum(p.numel() for p in model.parameters())
    for info in graph.groups():
        m = copy.deepcopy(model)
        PruneGraph(m, x).prune({info.id: [1]})
        removed = before - sum(p.numel() for p in m.parameters())
        assert torch.equal(sums[info.id], torch.full((info.width,), float(removed))), info.id


def test_channel_sites_are_the_norm_layers_after_convs():
    from stages.load.cifar_resnet import CifarResNet

    m = CifarResNet(depth=8, width=4, in_channels=1).eval()
    sites = PruneGraph(m, torch.randn(2, 1, 8, 8)).channel_sites()
    assert sites["conv1"] == ("bn1", "layer1.0.bn2")  # stem + residual stream: every BN adding into it
    assert set(sites["layer2.0.shortcut.0"]) == {"layer2.0.shortcut.1", "layer2.0.bn2"}
    mixed = PruneGraph(Mixed().eval(), torch.randn(2, 2, 4, 4)).channel_sites()
    assert set(mixed["dw"]) == {"bn1", "bn2"} and mixed["c3"] == ("c3",) and mixed["fc1"] == ("ln",)
