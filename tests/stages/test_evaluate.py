"""The evaluator registry: every registered metric checked against a hand computation (a meta-test says so)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from core.errors import SpecError
from stages.evaluate import EVALUATORS, evaluate, format_score, metric_info, perplexity_of
from stages.load.data import DataBundle, with_model_labels


class Fixed:
    """A runner that returns a fixed output per batch, in order."""

    def __init__(self, outs: list[np.ndarray]) -> None:
        self.outs = list(outs)

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.outs.pop(0)


def test_top1_and_agreement():
    logits = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]], dtype=np.float32)
    data = TensorDataset(torch.zeros(4, 3), torch.tensor([1, 0, 0, 0]))
    assert evaluate("top1", Fixed([logits]), data) == 75.0
    assert evaluate("agreement", Fixed([logits]), data) == 75.0
    assert EVALUATORS.get("fidelity").name == "agreement"  # the old name still works


def test_agreement_over_token_positions():
    out = np.zeros((2, 3, 4), dtype=np.float32)
    out[:, :, 1] = 1.0  # argmax 1 at every position
    ref = torch.tensor([[1, 1, 2], [1, 1, 1]])
    assert evaluate("agreement", Fixed([out]), TensorDataset(torch.zeros(2, 1), ref)) == pytest.approx(500 / 6)


def test_cosine_is_mean_over_rows_times_100():
    ref = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    out = np.array([[1.0, 1.0], [0.0, 5.0]], dtype=np.float32)  # cos 1/sqrt(2) and 1
    want = 100 * (1 / math.sqrt(2) + 1) / 2
    assert evaluate("cosine", Fixed([out]), TensorDataset(torch.zeros(2, 1), ref)) == pytest.approx(want)


def test_output_error_is_one_minus_relative_l2():
    ref = torch.tensor([[3.0, 4.0]])  # |ref| = 5
    out = np.array([[3.0, 3.0]], dtype=np.float32)  # error 1
    assert evaluate("output-error", Fixed([out]), TensorDataset(torch.zeros(1, 1), ref)) == pytest.approx(80.0)


def _lm_logits(p_right: float, vocab: int = 4, seq: int = 5) -> torch.Tensor:
    """Logits whose softmax puts ``p_right`` on the next token id (ids are 0, 1, 2, ... mod vocab)."""
    logits = torch.full((1, seq, vocab), math.log((1 - p_right) / (vocab - 1)))
    for t in range(seq - 1):
        logits[0, t, (t + 1) % vocab] = math.log(p_right)
    return logits


def test_perplexity_score_is_100_minus_percent_increase_and_reads_back():
    ids = torch.arange(5) % 4
    x = torch.stack([ids, torch.ones(5, dtype=torch.long)]).unsqueeze(0)  # [1, 2, 5]: ids, mask
    ref = EVALUATORS.get("perplexity").reference(_lm_logits(0.5), x)  # per sample: summed NLL, tokens
    assert ref.shape == (1, 2) and ref[0, 1] == 4
    data = TensorDataset(x, ref)
    assert evaluate("perplexity", Fixed([_lm_logits(0.5).numpy()]), data) == pytest.approx(100.0)
    score = evaluate("perplexity", Fixed([_lm_logits(0.25).numpy()]), data)  # perplexity 2 -> 4: +100%
    assert score == pytest.approx(0.0, abs=1e-4)
    assert perplexity_of(score, data) == pytest.approx(4.0, rel=1e-5)


def test_perplexity_ignores_masked_positions():
    ids = torch.arange(5) % 4
    mask = torch.tensor([1, 1, 1, 0, 0])
    x = torch.stack([ids, mask]).unsqueeze(0)
    assert EVALUATORS.get("perplexity").reference(_lm_logits(0.5), x)[0, 1] == 2  # pairs (0,1), (1,2)


def test_with_model_labels_uses_the_metrics_reference():
    model = torch.nn.Linear(3, 2)
    xs = torch.randn(6, 3)
    bundle = DataBundle("t", TensorDataset(xs, xs[:, 0]), TensorDataset(xs, xs[:, 0]), TensorDataset(xs, xs[:, 0]),
                        (3,), metric="agreement", labeled=False)
    cos = with_model_labels(bundle, model, "cosine")
    with torch.no_grad():
        assert torch.allclose(cos.test.tensors[1], model(xs)) and cos.metric == "cosine"
    assert torch.equal(with_model_labels(bundle, model, "agreement").test.tensors[1], model(xs).argmax(1))
    with pytest.raises(SpecError, match="needs labels"):
        with_model_labels(bundle, model, "top1")


def test_units_and_formatting():
    assert format_score("top1", 99.5) == "99.50%"
    assert format_score("cosine", 93.2) == "93.20 (cosine x 100)"
    assert format_score("top1", None) == "n/a"
    info = metric_info("perplexity")
    assert info["higher_is_better"] and "perplexity" in info["unit"] and not info["needs_labels"]


HAND_TESTED = {"top1", "agreement", "cosine", "output-error", "perplexity",
               "denoise-loss", "fid-digits",  # these two in tests/stages/test_diffusion.py (MSE by hand, the FD of a shift)
               "det-agreement", "map50", "map50-95",  # tests/stages/test_yolo.py (boxes moved, classes swapped)
               "seg-agreement"}  # tests/stages/test_segmentation.py (one row of 4 x 4 pixels differs)


def test_every_registered_evaluator_has_a_hand_computed_test():
    assert set(EVALUATORS.names()) <= HAND_TESTED, set(EVALUATORS.names()) - HAND_TESTED
