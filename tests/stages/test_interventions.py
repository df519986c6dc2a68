"""Batched channel interventions, checked against one-at-a-time unbatched interventions."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from stages.load.cifar_resnet import CifarResNet
from stages.model.graph import PruneGraph
from stages.score._interventions import (
    ReplicaRunner,
    channel_means,
    channel_sites,
    intervened_forward,
    working_copy,
)


def one_at_a_time(model, x, sites, iv, mode="zero", means=None):
    """Reference: ``iv`` alone, by plain hooks that overwrite the channels, on ``x`` unreplicated."""
    modules = dict(model.named_modules())
    parts = dict(iv) if isinstance(iv, dict) else {iv[0]: iv[1]}
    hooks = []
    for gid, raw in parts.items():
        idx = torch.as_tensor(raw, dtype=torch.long)
        for s in sites[gid]:
            def fn(mod, inp, out, idx=idx, s=s):
                out = out.clone()
                dim = -1 if isinstance(mod, nn.Linear) else 1
                view = out.movedim(dim, 0)
                view[idx] = 0 if mode == "zero" else means[s][idx].view(-1, *[1] * (view.dim() - 1))
                return out
            hooks.append(modules[s].register_forward_hook(fn))
    try:
        with torch.no_grad():
            return model(x)
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    m = CifarResNet(depth=8, width=8, in_channels=1).eval()
    for mod in m.modules():  # non-trivial BN statistics, so that a zeroed BN output differs from its input
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.bias.data.uniform_(-0.5, 0.5)
    groups = PruneGraph(m, torch.zeros(2, 1, 16, 16)).groups()
    return m, groups


INTERVENTIONS = [
    ("conv1", torch.tensor([0])),
    ("conv1", torch.tensor([1, 5, 7])),
    ("layer1.0.conv1", torch.tensor([3])),
    ("layer3.0.conv1", torch.tensor([0, 31])),
    ("layer3.0.shortcut.0", torch.tensor([2])),
    {"layer2.0.conv1": torch.tensor([4]), "layer1.0.conv1": torch.tensor([0, 1])},
    ("layer2.0.shortcut.0", torch.tensor([], dtype=torch.long)),  # empty: the clean model
]


def test_channel_sites_prefers_batchnorm_outputs(resnet):
    m, groups = resnet
    sites = channel_sites(m, groups)
    assert sites["layer1.0.conv1"] == ["layer1.0.bn1"]
    assert set(sites["conv1"]) == {"bn1", "layer1.0.bn2"}
    lin = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    g = PruneGraph(lin, torch.zeros(2, 2)).groups()
    assert channel_sites(lin, g) == {"0": ["0"]}


@pytest.mark.parametrize("engine", ["fx", "hooks", "auto"])
@pytest.mark.parametrize("max_batch", [2, 5, 64])
def test_batched_equals_one_at_a_time(resnet, engine, max_batch):
    m, groups = resnet
    sites = channel_sites(m, groups)
    x = torch.randn(6, 1, 16, 16)
    runner = ReplicaRunner(m, engine)
    out = intervened_forward(m, x, sites, INTERVENTIONS, max_batch=max_batch, runner=runner)
    assert out.shape == (len(INTERVENTIONS), 6, 10)
    for j, iv in enumerate(INTERVENTIONS):
        assert torch.allclose(out[j], one_at_a_time(m, x, sites, iv), atol=1e-5), j
    assert not torch.allclose(out[0], out[-1])  # the interventions do something
    if engine == "fx":
        assert set(runner.engines.values()) == {"fx"}


def test_mean_mode_equals_one_at_a_time(resnet):
    m, groups = resnet
    sites = channel_sites(m, groups)
    x = torch.randn(5, 1, 16, 16)
    means = channel_means(m, sites, [torch.randn(4, 1, 16, 16), (torch.randn(3, 1, 16, 16), torch.zeros(3))])
    out = intervened_forward(m, x, sites, INTERVENTIONS, mode="mean", means=means, max_batch=8)
    for j, iv in enumerate(INTERVENTIONS):
        assert torch.allclose(out[j], one_at_a_time(m, x, sites, iv, "mean", means), atol=1e-5), j


def test_channel_means_by_hand():
    lin = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    with torch.no_grad():
        lin[0].weight.copy_(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
        lin[0].bias.copy_(torch.tensor([0.0, -1.0]))
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    b = torch.tensor([[5.0, 6.0]])
    mu = channel_means(lin, ["0"], [a, b])["0"]
    # outputs: (1, 2), (3, 6), (5, 10) -> means (3, 6)
    assert torch.allclose(mu, torch.tensor([3.0, 6.0]))


def test_model_is_never_modified(resnet):
    m, groups = resnet
    m = copy.deepcopy(m).train()
    m.layer1.eval()  # mixed flags are restored as they were
    before = {k: v.clone() for k, v in m.state_dict().items()}
    sites = channel_sites(m, groups)
    x = torch.randn(4, 1, 16, 16)
    for engine in ("fx", "hooks"):
        intervened_forward(m, x, sites, INTERVENTIONS, runner=ReplicaRunner(m, engine))
    channel_means(m, sites, [x])
    after = m.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert m.training and not m.layer1.training and m.layer2.training
    assert all(not mod._forward_hooks and not mod._forward_pre_hooks for mod in m.modules())


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it, the hooks engine must serve."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = self.fc1(x)
        if h.sum() > -1e9:
            h = torch.relu(h)
        return self.fc2(h)


class BatchFromInput(nn.Module):
    """Reshapes with the batch size read from its input: traces, but replicating after the input
    would scramble rows, so the engine check must reject fx for it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        n = x.shape[0]
        return self.fc(torch.relu(self.conv(x)).reshape(n, -1))


@pytest.mark.parametrize("cls, shape", [(Untraceable, (5, 3)), (BatchFromInput, (5, 1, 4, 4))])
def test_falls_back_to_hooks_where_fx_is_wrong(cls, shape):
    torch.manual_seed(1)
    m = cls().eval()
    x = torch.randn(*shape)
    gid = "fc1" if cls is Untraceable else "conv"
    sites = {gid: [gid]}
    ivs = [(gid, torch.tensor([0])), (gid, torch.tensor([1, 2])), (gid, torch.tensor([3]))]
    runner = ReplicaRunner(m)
    out = intervened_forward(m, x, sites, ivs, runner=runner)
    for j, iv in enumerate(ivs):
        assert torch.allclose(out[j], one_at_a_time(m, x, sites, iv), atol=1e-6)
    assert set(runner.engines.values()) <= {"hooks"}


def test_working_copy_is_channels_last_and_equal(resnet):
    m, _ = resnet
    work, prep = working_copy(m)
    x = torch.randn(3, 1, 16, 16)
    assert work is not m and work.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert torch.allclose(work(prep(x)), m(x), atol=1e-5)


def test_folded_working_copy_gives_the_same_interventions(resnet):
    m, groups = resnet
    work, prep = working_copy(m, fold_bn=True)
    assert isinstance(work.layer1[0].bn1, nn.Identity) and isinstance(m.layer1[0].bn1, nn.BatchNorm2d)
    sites = channel_sites(m, groups)  # named after the BatchNorms of the original
    x = torch.randn(3, 1, 16, 16)
    got = intervened_forward(work, prep(x), sites, INTERVENTIONS, max_batch=8)
    ref = intervened_forward(m, x, sites, INTERVENTIONS, max_batch=8)
    assert torch.allclose(got, ref, atol=1e-4)


def test_bad_mode_and_missing_means_are_config_errors(resnet):
    m, groups = resnet
    sites = channel_sites(m, groups)
    x = torch.randn(2, 1, 16, 16)
    with pytest.raises(ConfigError):
        intervened_forward(m, x, sites, INTERVENTIONS[:1], mode="ones")
    with pytest.raises(ConfigError):
        intervened_forward(m, x, sites, INTERVENTIONS[:1], mode="mean")
    with pytest.raises(ValueError):
        intervened_forward(m, x, sites, [("nope", torch.tensor([0]))])


def test_zeroing_every_site_is_removing_the_channel(resnet):
    """``do(a_c = 0)`` at a group's sites gives the output of the model with channel c pruned
    (before BN re-estimation), for every group of a ResNet, residual groups included."""
    from stages.prune.plan import GroupPlan, PruningPlan, apply_plan

    m, groups = resnet
    sites = channel_sites(m, groups)
    x = torch.randn(4, 1, 16, 16)
    ivs = [(g.id, torch.tensor([1, g.width - 1])) for g in groups]
    out = intervened_forward(m, x, sites, ivs)
    for j, g in enumerate(groups):
        keep = tuple(c for c in range(g.width) if c not in (1, g.width - 1))
        plan = PruningPlan(tuple(GroupPlan(h.id, h.width, keep if h.id == g.id else tuple(range(h.width)))
                                 for h in groups))
        pruned = apply_plan(m, x[:2], plan)
        with torch.no_grad():
            assert torch.allclose(out[j], pruned(x), atol=1e-4), g.id
