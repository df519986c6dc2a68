"""Depth pruning: which residual blocks identity can replace, dropping them, and plans that carry them."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from core.errors import ConfigError
from stages.load.cifar_resnet import BasicBlock, CifarResNet
from stages.model.blocks import drop_blocks, removable_blocks
from stages.model.graph import PruneGraph
from stages.prune.plan import PruningPlan, apply_plan, make_plan, uniform_ratios

RESNET20_REMOVABLE = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def resnet20(width: int = 8) -> nn.Module:
    torch.manual_seed(0)
    return CifarResNet(depth=20, width=width, in_channels=1).eval()


def test_removable_blocks_of_the_embedded_resnet20():
    m = resnet20()
    x = torch.randn(2, 1, 16, 16)
    # layer2.0 and layer3.0 change width and stride (conv shortcut): not removable
    assert removable_blocks(m, x) == RESNET20_REMOVABLE
    assert removable_blocks(m, x, generic=False) == RESNET20_REMOVABLE  # found as a known class


def test_removable_blocks_of_the_real_default_model():
    from stages.load.models import digits_resnet

    assert removable_blocks(digits_resnet(), torch.zeros(2, 1, 32, 32)) == RESNET20_REMOVABLE


def test_removable_blocks_of_torchvision_resnet18_and_mobilenet_v2():
    import torchvision

    x = torch.zeros(1, 3, 64, 64)
    r18 = torchvision.models.resnet18(weights=None).eval()
    assert removable_blocks(r18, x) == ["layer1.0", "layer1.1", "layer2.1", "layer3.1", "layer4.1"]
    mb = torchvision.models.mobilenet_v2(weights=None).eval()
    expected = [n for n, mod in mb.named_modules() if getattr(mod, "use_res_connect", False)]
    assert expected and removable_blocks(mb, x) == expected


class Unknown(BasicBlock):
    """The CIFAR block under a class name the known-class table does not list."""


class Encoder(nn.Module):
    """Shape-preserving, adds its input to something, but the add is not the last step."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x + self.pos)


class AddBias(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.randn(1, 4, 1, 1))
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(x + self.bias)  # x + constant: no residual *branch*


class PreAct(nn.Module):
    """A transformer-style block: h = x + f(x); h + g(h)."""

    def __init__(self) -> None:
        super().__init__()
        self.f, self.g = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        h = x + self.f(x)
        return h + self.g(h)


def test_generic_detection_by_tracing():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(),
                        Unknown(4, 4, 1), Encoder(), AddBias(), PreAct(), nn.Conv2d(4, 4, 3, padding=1),
                        Unknown(4, 8, 2)).eval()
    x = torch.randn(2, 1, 8, 8)
    assert removable_blocks(net, x) == ["2", "5"]  # the unknown residual block and the transformer-style one
    assert removable_blocks(net, x, generic=False) == []


def test_module_called_twice_is_not_removable():
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.block = BasicBlock(4, 4, 1)
            self.stem = nn.Conv2d(1, 4, 1)

        def forward(self, x):
            return self.block(self.block(self.stem(x)))

    assert removable_blocks(Twice().eval(), torch.randn(2, 1, 4, 4)) == []


def test_identity_equals_removing_the_residual_branch_of_a_post_activation_block():
    """relu(0 + x) = x because the block's input is post-ReLU: dropping the block = zeroing its branch."""
    m = resnet20()
    x = torch.randn(8, 1, 16, 16)
    seen = {}
    h = m.layer1[1].register_forward_hook(lambda mod, i, o: seen.setdefault("in", i[0]))
    with torch.no_grad():
        m(x)
    h.remove()
    assert (seen["in"] >= 0).all() and (seen["in"] > 0).any()
    zeroed = drop_blocks(m, [])  # a copy
    with torch.no_grad():
        zeroed.layer1[1].bn2.weight.zero_()
        zeroed.layer1[1].bn2.bias.zero_()  # branch output = 0 exactly
        assert torch.equal(zeroed.layer1[1](seen["in"]), seen["in"])
        dropped = drop_blocks(m, ["layer1.1"])
        assert torch.equal(dropped(x), zeroed(x))


def test_drop_blocks_copies_and_is_idempotent():
    m = resnet20()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    d = drop_blocks(m, ["layer2.2", "layer1.0"])
    assert isinstance(d.layer1[0], nn.Identity) and isinstance(d.layer2[2], nn.Identity)
    assert isinstance(m.layer1[0], BasicBlock)  # the input model is untouched
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    again = drop_blocks(d, ["layer1.0", "layer2.2"])
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(again(x), d(x))
    nested = drop_blocks(m, ["layer1", "layer1.0"])  # a block inside a dropped one goes with it
    assert isinstance(nested.layer1, nn.Identity)


@pytest.mark.parametrize("name", ["layer9.0", ""])
def test_drop_blocks_rejects_unknown_names(name):
    with pytest.raises(ConfigError):
        drop_blocks(resnet20(), [name])


def _depth_and_channel_plan(m: nn.Module, x: torch.Tensor, dropped: tuple[str, ...], ratio: float = 0.5):
    base = drop_blocks(m, dropped)
    groups = PruneGraph(drop_blocks(base, []), x).groups()
    scores = {g.id: torch.arange(g.width, dtype=torch.float32) for g in groups}
    plan = make_plan(groups, scores, uniform_ratios(groups, ratio), round_to=None)
    return PruningPlan(plan.groups, plan.ignore, {"criterion": "test"}, dropped)


def _arch(model: nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_plan_json_round_trip_with_drop_blocks_replays_the_same_architecture():
    m = resnet20()
    x = torch.randn(2, 1, 16, 16)
    plan = _depth_and_channel_plan(m, x, ("layer1.1", "layer3.2"))
    d = json.loads(json.dumps(plan.to_json()))
    assert d["drop_blocks"] == ["layer1.1", "layer3.2"]
    back = PruningPlan.from_json(d)
    assert back == plan
    a, b = apply_plan(m, x, plan), apply_plan(m, x, back)
    assert _arch(a) == _arch(b) and not any(k.startswith("layer1.1.") for k in _arch(a))
    assert isinstance(b.layer3[2], nn.Identity)
    # the plan also applies to a model whose blocks are already dropped (what the search does)
    assert _arch(apply_plan(drop_blocks(m, plan.drop_blocks), x, plan)) == _arch(a)
    with torch.no_grad():
        assert a(x).shape == m(x).shape


def test_plan_without_drop_blocks_keeps_its_json_and_old_plans_read():
    m = resnet20()
    x = torch.randn(2, 1, 16, 16)
    plan = _depth_and_channel_plan(m, x, ())
    d = plan.to_json()
    assert "drop_blocks" not in d  # byte-identical policy.json for runs without depth pruning
    assert PruningPlan.from_json(d).drop_blocks == ()
    with pytest.raises(ConfigError):
        PruningPlan.from_json({**d, "drop_blocks": "layer1.1"})


def test_save_and_load_pruned_replay_drop_blocks(tmp_path):
    from pipeline.runner import load_pruned, save_pruned

    m = resnet20()
    x = torch.randn(4, 1, 16, 16)
    plan = _depth_and_channel_plan(m, x[:2], ("layer2.1",), ratio=0.25)
    pruned = apply_plan(m, x[:2], plan)
    save_pruned(tmp_path / "p.pt", pruned, plan, "example:test")
    back, back_plan = load_pruned(tmp_path / "p.pt", m, x[:2])
    assert back_plan.drop_blocks == ("layer2.1",)
    with torch.no_grad():
        assert torch.equal(back(x), pruned(x))


def test_depth_pruning_removes_a_block_and_the_model_still_exports_and_passes_parity(tmp_path):
    from stages.export import ExportSettings, check_parity, export_onnx
    from stages.load.models import digits_resnet
    from targets.ort.runner import OrtRunner

    m = digits_resnet()
    x = torch.randn(2, 1, 32, 32)
    plan = _depth_and_channel_plan(m, x, ("layer1.2", "layer3.1"), ratio=0.25)
    pruned = apply_plan(m, x, plan)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in m.parameters())
    rec = export_onnx(pruned, (1, 32, 32), tmp_path / "m.onnx", ExportSettings())
    assert rec["onnx_bytes"] > 0
    with OrtRunner(tmp_path / "m.onnx") as r:
        parity = check_parity(pruned, r, torch.randn(8, 1, 32, 32), 1e-4, 1e-3)
    assert all(v["fail_frac"] == 0.0 for v in parity.values())


# ---------------------------------------------------------------- the score stage's block choice

def _state(model: nn.Module, shape, n: int, criterion_options=None):
    from torch.utils.data import TensorDataset

    torch.manual_seed(0)
    calib = TensorDataset(torch.randn(16, *shape), torch.zeros(16, dtype=torch.long))
    cfg = SimpleNamespace(prune=SimpleNamespace(depth_blocks=n), criterion_options=criterion_options or {})
    return SimpleNamespace(cfg=cfg, loaded=SimpleNamespace(module=model, input_shape=shape),
                           data=SimpleNamespace(calib=calib), drop_blocks=(), plan=None)


def test_score_stage_drops_the_lowest_scoring_blocks():
    from pipeline.steps import _base, _depth_prune
    from stages.score import CRITERIA

    m = resnet20()
    st = _state(m, (1, 16, 16), 2)
    depth = _depth_prune(st, CRITERIA.get("magnitude-l2"))
    scores = depth["block_scores"]
    assert set(scores) == set(RESNET20_REMOVABLE)
    lowest = sorted(scores, key=scores.get)[:2]
    assert sorted(depth["dropped"]) == sorted(lowest) and st.drop_blocks == tuple(depth["dropped"])
    base = _base(st)
    assert all(isinstance(base.get_submodule(b), nn.Identity) for b in depth["dropped"])
    assert isinstance(m.get_submodule(depth["dropped"][0]), BasicBlock)  # loaded model untouched


@pytest.mark.parametrize("n, model, shape, needle", [
    (8, "resnet20", (1, 16, 16), "has 7 removable residual blocks"),
    (1, "plain", (1, 8, 8), "has 0 removable residual blocks"),
])
def test_score_stage_refuses_more_blocks_than_removable(n, model, shape, needle):
    from pipeline.steps import _depth_prune
    from stages.score import CRITERIA

    net = resnet20() if model == "resnet20" else nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(),
                                                               nn.LazyLinear(3))
    if model == "plain":
        net(torch.zeros(1, *shape))
    with pytest.raises(ConfigError) as e:
        _depth_prune(_state(net.eval(), shape, n), CRITERIA.get("magnitude-l2"))
    assert needle in e.value.message and e.value.hint


# ---------------------------------------------------------------- end to end

def _fast_yaml(extra: str) -> str:
    from tests.conftest import FAST_YAML

    return (FAST_YAML.replace("steps: 60", "steps: 5").replace("max_candidates: 6", "max_candidates: 3")
            + extra)


@pytest.mark.slow
def test_cli_run_with_ld_pruner_and_depth_pruning(cli, tmp_path):
    """The embedded default, one block dropped by LD-Pruner's block score, channels by its channel score."""
    from stages.load.models import ModelRequest, load_model

    cfg = tmp_path / "c.yaml"
    cfg.write_text(_fast_yaml("prune: {depth_blocks: 1}\ncriterion_options: {samples: 4}\n"))
    out = tmp_path / "r"
    code, _, err = cli("run", "--config", cfg, "--criterion", "ld-pruner", "--out", out, "-q")
    assert code in (0, 1, 3), err
    saved = torch.load(out / "scores.pt", weights_only=True)
    blocks = saved["depth"]["block_scores"]
    assert set(blocks) == set(RESNET20_REMOVABLE) and saved["blocks"] == blocks
    lowest = min(blocks, key=blocks.get)
    policy = json.loads((out / "policy.json").read_text())
    assert policy["drop_blocks"] == [lowest] == saved["depth"]["dropped"]
    assert not any(g.startswith(lowest + ".") for g in policy["groups"])  # ids of the depth-pruned model
    rep = json.loads((out / "report.json").read_text())
    assert rep["criterion"] == "ld-pruner" and rep["final"]["macs"] < rep["baseline"]["macs"]
    man = json.loads((out / "manifest.json").read_text())
    score = next(s for s in man["stages"] if s["name"] == "score")
    assert score["metrics"]["depth"]["dropped"] == [lowest] and score["metrics"]["passes"]["forward"] > 0
    lm = load_model(ModelRequest(f"file:{out / 'pruned.pt'}"))  # the plan replays with its dropped block
    assert isinstance(lm.module.get_submodule(lowest), nn.Identity)
    assert sum(p.numel() for p in lm.module.parameters()) == rep["final"]["params"]


def test_cli_depth_blocks_beyond_the_removable_blocks_is_exit_2(cli, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(_fast_yaml("prune: {depth_blocks: 8}\n"))
    code, _, err = cli("run", "--config", cfg, "--out", tmp_path / "r")
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert code == 2 and "Traceback" not in err, err
    assert lines[0].startswith("error:") and "prune.depth_blocks = 8" in lines[0] and "7 removable" in lines[0]
    assert any(ln.startswith("hint:") and "at most 7" in ln for ln in lines)
