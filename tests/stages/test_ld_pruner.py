"""LD-Pruner against examples small enough to write the means and standard deviations down."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ConfigError
from stages.model.graph import PruneGraph
from stages.score import CRITERIA, ScoreContext
from stages.score.ld_pruner import Moments, score_blocks, score_channels

# four samples: h0 = relu(x0) = [1, 3, 0, 0], h1 = relu(x1) = [0, 0, 2, 4], h2 = relu(x0 + x1)
X = torch.tensor([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])


class MLP(nn.Module):
    """h = relu(fc1 x), y = fc2 h with y0 = h0, y1 = 2 h1 (h2 feeds nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(2, 3, bias=False)
        self.fc2 = nn.Linear(3, 2, bias=False)
        with torch.no_grad():
            self.fc1.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
            self.fc2.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def ctx_for(model: nn.Module, x: torch.Tensor, **options) -> ScoreContext:
    model.eval()
    data = TensorDataset(x, torch.zeros(len(x), dtype=torch.long))
    return ScoreContext(model=model, graph=PruneGraph(model, x[:2]), calib=data, batches=1, batch_size=len(x),
                        options=options)


def test_channel_scores_by_hand():
    # removing h0 sets y0 to 0: d mean = (mean h0, 0) = (1, 0), d std = (std h0, 0) = (sqrt(1.5), 0)
    #   (population std of [1, 3, 0, 0]: sqrt(10/4 - 1)); score 1 + sqrt(1.5)
    # removing h1 sets y1 to 0: 2 * (mean h1 + std h1) = 2 * (1.5 + sqrt(20/4 - 2.25))
    # removing h2 changes nothing: 0
    r = CRITERIA.get("ld-pruner").result(ctx_for(MLP(), X))
    expected = torch.tensor([1 + math.sqrt(1.5), 2 * (1.5 + math.sqrt(2.75)), 0.0])
    assert torch.allclose(r.scores["fc1"], expected, atol=1e-5)
    assert r.blocks == {}  # no residual blocks in an MLP
    assert r.passes == {"forward": 1 + 3}  # the reference pass + one per channel, over one batch


def test_mean_intervention_by_hand():
    # mean ablation replaces fc1's output channel by its calibration mean (x0: 1, x1: 1.5), so
    # y0 = relu(1) = 1 = mean(y0) and y1 = 2 * 1.5 = mean(y1): only the std term is left
    r = CRITERIA.get("ld-pruner").result(ctx_for(MLP(), X, intervention="mean"))
    expected = torch.tensor([math.sqrt(1.5), 2 * math.sqrt(2.75), 0.0])
    assert torch.allclose(r.scores["fc1"], expected, atol=1e-5)


class Scale(nn.Module):
    """A residual block x + w * x (a 1x1 linear branch)."""

    def __init__(self, w: float) -> None:
        super().__init__()
        self.branch = nn.Linear(1, 1, bias=False)
        with torch.no_grad():
            self.branch.weight.fill_(w)

    def forward(self, x):
        return x + self.branch(x)


def test_block_scores_by_hand():
    # Z = (1 + w2)(1 + w1) x with x = [1, 3] (mean 2, std 1). Without block 1: Z = (1 + w2) x, so
    # d mean = (1 + w2) w1 * 2 and d std = (1 + w2) w1 * 1; without block 2: w2 (1 + w1) * (2 + 1).
    m = nn.Sequential(Scale(0.5), Scale(0.25)).eval()
    x = torch.tensor([[1.0], [3.0]])
    scores, passes = score_blocks(m, [x])
    assert scores == pytest.approx({"0": 1.25 * 0.5 * 3, "1": 0.25 * 1.5 * 3}, abs=1e-6)
    assert passes["forward"] == 3
    # the same samples split into two batches give the same scores (moments are merged exactly)
    assert score_blocks(m, [x[:1], x[1:]])[0] == pytest.approx(scores, abs=1e-6)


def test_block_scores_of_the_criterion_equal_dropping_each_block():
    from stages.load.cifar_resnet import CifarResNet
    from stages.model.blocks import drop_blocks

    torch.manual_seed(0)
    m = CifarResNet(depth=8, width=4, in_channels=1).eval()
    x = torch.randn(12, 1, 8, 8)
    r = CRITERIA.get("ld-pruner").result(ctx_for(m, x))
    assert set(r.blocks) == {"layer1.0"}  # depth 8: one block per stage, two with conv shortcuts
    with torch.no_grad():
        z, zo = m(x).double(), drop_blocks(m, ["layer1.0"])(x).double()
    by_hand = (z.mean(0) - zo.mean(0)).norm() + (z.std(0, correction=0) - zo.std(0, correction=0)).norm()
    assert r.blocks["layer1.0"] == pytest.approx(float(by_hand), rel=1e-5)


def test_channel_scores_equal_zeroing_each_channel_alone():
    """One resnet channel against an explicit hook that zeroes it at its BN output."""
    from stages.load.cifar_resnet import CifarResNet

    torch.manual_seed(1)
    m = CifarResNet(depth=8, width=4, in_channels=1).eval()
    xs = [torch.randn(6, 1, 8, 8), torch.randn(5, 1, 8, 8)]
    groups = PruneGraph(m, xs[0][:2]).groups()
    scores, passes = score_channels(m, groups, xs)
    assert passes["forward"] == 2 * (1 + sum(g.width for g in groups))
    h = m.layer1[0].bn1.register_forward_hook(lambda mod, i, o: o.index_fill(1, torch.tensor([2]), 0.0))
    with torch.no_grad():
        zo = torch.cat([m(x) for x in xs]).double()
    h.remove()
    with torch.no_grad():
        z = torch.cat([m(x) for x in xs]).double()
    by_hand = (z.mean(0) - zo.mean(0)).norm() + (z.std(0, correction=0) - zo.std(0, correction=0)).norm()
    assert float(scores["layer1.0.conv1"][2]) == pytest.approx(float(by_hand), rel=1e-4)


def test_named_latent_and_samples_option():
    m = MLP()
    # the latent is fc2's output here, i.e. the model output: same scores
    a = CRITERIA.get("ld-pruner").result(ctx_for(m, X, latent="fc2")).scores["fc1"]
    b = CRITERIA.get("ld-pruner").result(ctx_for(m, X)).scores["fc1"]
    assert torch.allclose(a, b, atol=1e-6)
    # samples=2 keeps the first two: h0 = [1, 3] (mean 2, std 1), h1 = [0, 0]
    r = CRITERIA.get("ld-pruner").result(ctx_for(m, X, samples=2))
    assert torch.allclose(r.scores["fc1"], torch.tensor([3.0, 0.0, 0.0]), atol=1e-5)
    assert r.meta["samples"] == 2


@pytest.mark.parametrize("options, needle", [
    ({"latent": "fc9"}, "not a module"),
    ({"latent": "fc1"}, "where channels of group"),
    ({"intervention": "noise"}, "not one of"),
    ({"samples": 0}, "samples must be >= 1"),
])
def test_bad_options_are_config_errors(options, needle):
    with pytest.raises(ConfigError) as e:
        CRITERIA.get("ld-pruner").result(ctx_for(MLP(), X, **options))
    assert needle in e.value.message and e.value.hint


def test_latent_inside_a_removable_block_is_refused():
    m = nn.Sequential(Scale(0.5), Scale(0.25)).eval()
    with pytest.raises(ConfigError, match="inside removable block"):
        score_blocks(m, [torch.ones(2, 1)], latent="0.branch")


def test_moments_survive_a_large_offset():
    z = 1e6 + torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64).view(1, 4, 1)
    mom = Moments()
    mom.add(z[:, :2])
    mom.add(z[:, 2:])
    mean, std = mom.mean_std()
    assert float(mean) == pytest.approx(1e6 + 1.5) and float(std) == pytest.approx(math.sqrt(1.25), rel=1e-9)


def test_the_users_model_is_not_modified():
    m = MLP()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    CRITERIA.get("ld-pruner").result(ctx_for(m, X, intervention="mean"))
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert not m.fc1._forward_hooks and not m.fc2._forward_hooks
