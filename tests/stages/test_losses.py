"""Task losses of the gradient criteria, by output kind, against hand computations; per-sample (vmap) safe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stages.model.losses import task_loss


def test_classes_is_cross_entropy_with_own_prediction_for_missing_labels():
    out = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([1, -1])  # the second sample uses its own argmax (1)
    want = F.cross_entropy(out, torch.tensor([1, 1]))
    assert task_loss("classes", out, torch.zeros(2, 3), y) == pytest.approx(float(want))


def test_classes_per_position():
    out = torch.randn(2, 3, 4)
    y = out.argmax(-1)
    assert task_loss("classes", out, torch.zeros(2, 1), y) == pytest.approx(
        float(F.cross_entropy(out.reshape(-1, 4), y.reshape(-1))))


def test_next_token_is_the_masked_lm_loss():
    ids = torch.tensor([[0, 1, 2, 3]])
    x = torch.stack([ids, torch.tensor([[1, 1, 1, 0]])], dim=1)  # the last position is padding
    logits = torch.zeros(1, 4, 5)  # uniform over 5 tokens
    assert task_loss("next-token", logits, x, torch.zeros(1, 2)) == pytest.approx(math.log(5))
    logits[0, 0, 1] = 10.0  # position 0 predicts token 1 (right) confidently
    got = float(task_loss("next-token", logits, x, torch.zeros(1, 2)))
    assert got == pytest.approx(float((-F.log_softmax(logits[0, 0], -1)[1] + math.log(5)) / 2), rel=1e-5)


def test_features_is_relative_squared_error():
    y = torch.tensor([[3.0, 4.0]])
    assert task_loss("features", torch.tensor([[3.0, 3.0]]), torch.zeros(1, 1), y) == pytest.approx(1 / 25)


def test_per_sample_gradients_under_vmap():
    from torch.func import grad, vmap

    w = torch.randn(4, 3)

    def loss(w, xi, yi):
        return task_loss("features", (xi @ w.T).unsqueeze(0), xi.unsqueeze(0), yi.unsqueeze(0))

    x, y = torch.randn(5, 3), torch.randn(5, 4)
    per = vmap(grad(loss), in_dims=(None, 0, 0))(w, x, y)
    assert per.shape == (5, 4, 3)
    assert torch.allclose(per[2], grad(loss)(w, x[2], y[2]), atol=1e-6)
