"""Per-group accuracy: one pass gives per-class and per-group counts, a python: data source hands the groups in
(a wrong count is one line), and the report prints the group table."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from core.errors import SpecError
from pipeline.report import _per_class_lines
from stages.evaluate import class_and_group_counts, evaluate_with_classes
from stages.load.data import load_data


class Fixed:
    """A runner that predicts the class in the sample's first value."""

    def __init__(self) -> None:
        self.calls = 0

    def run(self, x: np.ndarray) -> np.ndarray:
        self.calls += 1
        return np.eye(3, dtype=np.float32)[x[:, 0].astype(int)]


def _data() -> TensorDataset:
    pred = torch.tensor([0, 1, 2, 0, 1, 2], dtype=torch.float32)[:, None]
    labels = torch.tensor([0, 1, 1, 0, 2, 2])  # samples 2 and 4 are wrong
    return TensorDataset(pred, labels)


def test_class_and_group_counts_in_one_pass():
    runner = Fixed()
    classes, groups = class_and_group_counts(runner, _data(), batch_size=4, groups=["a", "a", "b", "b", "b", "a"])
    assert classes == {0: (2, 2), 1: (1, 2), 2: (1, 2)}
    assert groups == {"a": (3, 3), "b": (1, 3)} and runner.calls == 2
    acc, gap = evaluate_with_classes("top1", Fixed(), _data(), True, groups=["a", "a", "b", "b", "b", "a"])
    assert acc == pytest.approx(400 / 6) and gap["groups"]["worst_class"] == "b"
    assert gap["groups"]["gap"] == pytest.approx(100 - 100 / 3)
    _, plain = evaluate_with_classes("top1", Fixed(), _data(), True)
    assert "groups" not in plain


def test_the_report_prints_the_group_table():
    _, b = evaluate_with_classes("top1", Fixed(), _data(), True, groups=list("aabbba"))
    text = "\n".join(_per_class_lines({"baseline": b, "final": b}))
    assert "### Per group" in text and "| b | 3 | 33.33 | 33.33 | +0.00 |" in text


def _module(monkeypatch, groups):
    mod = types.ModuleType("grouped_data_mod")
    ds = TensorDataset(torch.zeros(6, 1, 4, 4), torch.zeros(6, dtype=torch.long))
    mod.make = lambda: {"train": ds, "calib": ds, "test": ds, "test_groups": groups}
    monkeypatch.setitem(sys.modules, "grouped_data_mod", mod)


def test_python_data_hands_in_test_groups(monkeypatch):
    _module(monkeypatch, ["x", "y"] * 3)
    assert load_data("python:grouped_data_mod:make", (1, 4, 4)).test_groups == ("x", "y", "x", "y", "x", "y")
    _module(monkeypatch, ["x"])
    with pytest.raises(SpecError, match="1 test_groups for 6 test samples"):
        load_data("python:grouped_data_mod:make", (1, 4, 4))
