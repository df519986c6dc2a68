"""The one output validator: names, then shapes, then values; every failure collected; one tolerance rule."""

from __future__ import annotations

import numpy as np
import pytest

from core.errors import ParityError, ShapeMismatch, ToleranceExceeded
from core.parity import Tolerance, compare_outputs


def test_within_tolerance_gives_the_record_of_every_output():
    a = [np.zeros((2, 3), np.float32), np.full((4,), 10.0, np.float32)]
    rec = compare_outputs(a, [a[0] + 1e-5, a[1] + 1e-3], ["logits", "aux"], Tolerance(1e-4, 1e-3))
    assert set(rec) == {"logits", "aux"}
    assert rec["logits"]["max_abs"] == pytest.approx(1e-5, rel=1e-3) and rec["logits"]["fail_frac"] == 0.0
    assert rec["aux"]["max_rel"] == pytest.approx(1e-4, rel=1e-3)
    assert set(rec["aux"]) == {"max_abs", "max_rel", "median_abs", "fail_frac", "atol", "rtol"}


def test_the_rule_is_atol_plus_rtol_times_the_reference():
    ref = np.array([0.0, 100.0])
    tol = Tolerance(atol=1e-3, rtol=1e-2)
    # 100 * 1e-2 + 1e-3 = 1.001: a diff of 1.0 on the large element passes, 1.01 fails
    compare_outputs([ref], [ref + np.array([0.0, 1.0])], ["y"], tol)
    with pytest.raises(ToleranceExceeded):
        compare_outputs([ref], [ref + np.array([0.0, 1.01])], ["y"], tol)
    # the zero reference gets atol only
    with pytest.raises(ToleranceExceeded):
        compare_outputs([ref], [ref + np.array([2e-3, 0.0])], ["y"], tol)


def test_value_failures_are_collected_and_name_each_output_and_the_tolerance():
    a = [np.zeros(3), np.ones(3)]
    with pytest.raises(ToleranceExceeded) as e:
        compare_outputs(a, [a[0] + 0.5, a[1] + 0.5], ["logits", "aux"], Tolerance(1e-4, 1e-3), converted="TensorRT",
                        reference="ONNX Runtime", hint="try fp32")
    msg = e.value.message
    assert msg.startswith("TensorRT output differs from ONNX Runtime: ")
    assert "logits: max_abs 0.5" in msg and "aux: max_abs 0.5, max_rel 0.5" in msg and "atol=0.0001" in msg
    assert e.value.hint == "try fp32" and isinstance(e.value, ParityError)


def test_count_names_and_shapes_are_checked_before_values():
    with pytest.raises(ShapeMismatch, match="gives 1 outputs, PyTorch 2"):
        compare_outputs([np.zeros(2), np.zeros(2)], [np.zeros(2)], ["y"], Tolerance(1e-4, 1e-3))
    with pytest.raises(ShapeMismatch, match=r"output names \['y'\] != PyTorch \['logits'\]"):
        compare_outputs([np.zeros(2)], [np.zeros(2)], ["y"], Tolerance(1e-4, 1e-3), ref_names=["logits"])
    # a shape mismatch wins over value failures, and the message still lists both
    with pytest.raises(ShapeMismatch) as e:
        compare_outputs([np.zeros((2, 3)), np.zeros(2)], [np.zeros((3, 2)), np.ones(2)], ["a", "b"],
                        Tolerance(1e-4, 1e-3))
    assert "a: shape (3, 2) != PyTorch (2, 3)" in e.value.message and "b: max_abs 1" in e.value.message
