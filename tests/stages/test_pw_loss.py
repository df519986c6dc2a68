"""The performance-weighted (PW) loss of Meyer & Wong against numbers written down, and the per-class report."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from stages.evaluate import class_gap, per_class_accuracy
from stages.model.losses import pw_weights
from stages.recover.distill import pw_loss


def test_pw_weights_against_the_formula():
    # teacher probabilities of the label: softmax([0, 0]) = 0.5 and softmax([ln 3, 0]) = 0.75
    teacher = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
    y = torch.tensor([0, 0])
    w = pw_weights(teacher, y, min_weight=0.75, gamma=5.0)
    assert torch.allclose(w, torch.tensor([0.75 + 0.25 * 0.5 ** 5, 0.75 + 0.25 * 0.25 ** 5]))
    w = pw_weights(teacher, y, min_weight=0.5, gamma=1.0)
    assert torch.allclose(w, torch.tensor([0.75, 0.625]))


def test_pw_targets_are_the_teacher_where_right_and_the_label_where_wrong():
    teacher = torch.tensor([[math.log(3.0), 0.0], [math.log(3.0), 0.0]])  # p = (0.75, 0.25), argmax 0
    student = torch.tensor([[0.0, 0.0], [0.0, 0.0]])  # log-softmax = log 0.5 everywhere
    y = torch.tensor([0, 1])  # sample 0: teacher right -> soft target; sample 1: wrong -> one-hot label 1
    a, g = 0.5, 1.0
    w0, w1 = a + (1 - a) * (1 - 0.75), a + (1 - a) * (1 - 0.25)
    ce = -math.log(0.5)  # any target that sums to 1 against a uniform student
    expected = (w0 * ce + w1 * ce) / 2
    assert pw_loss(student, teacher, y, a, g).item() == pytest.approx(expected, rel=1e-6)
    # a student that puts all mass on class 0: sample 0's soft target still costs 0.25 * big, sample 1's one-hot too
    sharp = torch.tensor([[10.0, -10.0], [10.0, -10.0]])
    lsm = torch.log_softmax(sharp, 1)
    expected = (w0 * -(0.75 * lsm[0, 0] + 0.25 * lsm[0, 1]) + w1 * -lsm[1, 1]) / 2
    assert pw_loss(sharp, teacher, y, a, g).item() == pytest.approx(expected.item(), rel=1e-6)


def test_pw_refuses_token_logits():
    with pytest.raises(ValueError, match="class logits"):
        pw_loss(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))


class _Fixed:
    """A runner that predicts class 0 for every sample whose first feature is positive, else class 1."""

    def run(self, x: np.ndarray) -> np.ndarray:
        pos = x[:, 0] > 0
        return np.stack([pos.astype(np.float32), (~pos).astype(np.float32)], 1)


def test_per_class_accuracy_and_the_worst_class_gap():
    x = torch.tensor([[1.0], [1.0], [-1.0], [1.0], [-1.0]])
    y = torch.tensor([0, 0, 0, 1, 1])  # class 0: 2 of 3 right; class 1: 1 of 2 right
    counts = per_class_accuracy(_Fixed(), TensorDataset(x, y), batch_size=2)
    assert counts == {0: (2, 3), 1: (1, 2)}
    g = class_gap(counts)
    assert g["worst_class"] == "1" and g["worst"] == pytest.approx(50.0)
    assert g["gap"] == pytest.approx(100 * 2 / 3 - 50.0) and g["samples"] == {"0": 3, "1": 2}


def test_pw_task_loss_for_gradient_criteria_only_sees_what_the_model_gets_wrong():
    """At the unpruned model a right sample's target is its own softmax: zero gradient (the paper's Taylor case)."""
    from stages.model.losses import pw_kind, task_loss

    out = torch.tensor([[2.0, 0.0], [2.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 1])  # right, wrong
    task_loss(pw_kind(0.5, 1.0), out, out, y).backward()
    assert torch.allclose(out.grad[0], torch.zeros(2), atol=1e-7)
    p1 = torch.softmax(out.detach()[1], 0)
    w1 = 0.5 + 0.5 * (1 - p1[1])
    assert torch.allclose(out.grad[1], w1 * (p1 - torch.tensor([0.0, 1.0])) / 2, atol=1e-6)


def test_pw_is_vmap_friendly_for_the_hessian_criterion():
    from torch.func import grad, vmap

    from stages.model.losses import pw_kind, task_loss

    w = torch.randn(3, 4)
    x, y = torch.randn(5, 3), torch.tensor([0, 1, 2, 3, 0])

    def sample_loss(w, xi, yi):
        out = (xi.unsqueeze(0) @ w)
        return task_loss(pw_kind(), out, xi.unsqueeze(0), yi.unsqueeze(0))

    g = vmap(grad(sample_loss), in_dims=(None, 0, 0))(w, x, y)
    assert g.shape == (5, 3, 4) and torch.isfinite(g).all()
