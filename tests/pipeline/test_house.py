"""What the house's reshaping must not break: artifacts written by the code before it still load."""

from __future__ import annotations

from pathlib import Path

import torch

from stages.load.models import ModelRequest, load_model
from stages.prune.plan import PruningPlan, apply_plan

DATA = Path(__file__).resolve().parents[1] / "data"


def test_a_policy_json_written_before_the_house_change_replays():
    """``policy.json`` of a `make run` by the code before the reshaping (commit 422b00b)."""
    plan = PruningPlan.from_file(DATA / "policy_before_house.json")
    assert plan.meta["criterion"] == "magnitude-l2" and plan.meta["prune_ratio"] == 0.45
    lm = load_model(ModelRequest("example:digits-resnet", None, None, False))
    pruned = apply_plan(lm.module, torch.zeros((2, *lm.input_shape)), plan)
    widths = {n: m.out_channels for n, m in pruned.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert widths["layer3.0.shortcut.0"] == 72 and len(plan.groups) == 12
    assert pruned(torch.zeros((1, *lm.input_shape))).shape == (1, 10)


def test_the_old_policy_replays_through_the_cli(cli, tmp_path):
    rc, out, _ = cli("run", "--dry-run", "--policy", str(DATA / "policy_before_house.json"))
    assert rc == 0 and "(replay " in out
