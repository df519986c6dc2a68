from __future__ import annotations

import copy

import torch

from stages.evaluate import TorchRunner, evaluate_top1
from stages.load.data import load_data
from stages.load.models import digits_resnet
from stages.model.graph import PruneGraph
from stages.prune.plan import apply_plan, make_plan, recalibrate_bn, uniform_ratios
from stages.recover import DistillSettings, distill


def pruned_default(ratio: float = 0.6):
    teacher = digits_resnet()
    x = torch.zeros(2, 1, 32, 32)
    g = PruneGraph(teacher, x)
    plan = make_plan(g.groups(), g.importance("magnitude", p=2), uniform_ratios(g.groups(), ratio), 8)
    return teacher, apply_plan(teacher, x, plan)


def test_distillation_is_deterministic_and_recovers_accuracy():
    data = load_data("digits", None)
    teacher, student = pruned_default()
    recalibrate_bn(student, data.calib, 4)
    before = evaluate_top1(TorchRunner(student), data.calib)
    s = DistillSettings(steps=25, batch_size=32, lr=0.01)
    a, b = copy.deepcopy(student), copy.deepcopy(student)
    rec = distill(a, teacher, data.train, s, labeled=True)
    distill(b, teacher, data.train, s, labeled=True)
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    after = evaluate_top1(TorchRunner(a), data.calib)
    assert after > before and after > 90.0
    assert rec["loss_last"] < rec["loss_first"]


def test_zero_steps_is_a_no_op():
    data = load_data("digits", None)
    teacher, student = pruned_default()
    ref = copy.deepcopy(student.state_dict())
    assert distill(student, teacher, data.train, DistillSettings(steps=0), labeled=True) == {"steps": 0}
    assert all(torch.equal(ref[k], v) for k, v in student.state_dict().items())
