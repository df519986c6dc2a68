"""The one output validator: every conversion (PyTorch -> ONNX, ONNX -> TensorRT) is checked here.

In the Optimum style, and failing closed: the outputs are compared by **count and names**, then
**shapes**, then **values**; every failure is collected before one typed error is raised
(:class:`~core.errors.ShapeMismatch` when any count, name or shape differs, else
:class:`~core.errors.ToleranceExceeded`), naming each failing output with its max abs and max rel
error and the tolerance.

**The tolerance rule** (one, everywhere): an element fails when

    |out - ref| > atol + rtol * |ref|

which is ``numpy.isclose`` / ``torch.allclose``'s rule. ``max_rel`` is reported over the
elements with ``|ref| > 1e-6`` (a relative error of a zero reference means nothing).

Only numpy is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.errors import ShapeMismatch, ToleranceExceeded

REL_FLOOR = 1e-6  # |ref| below this is left out of max_rel


@dataclass(frozen=True)
class Tolerance:
    """``atol`` and ``rtol`` of the rule in the module docstring."""

    atol: float
    rtol: float


def _value_record(ref: np.ndarray, out: np.ndarray, tol: Tolerance) -> dict[str, float]:
    r, o = np.asarray(ref, dtype=np.float64), np.asarray(out, dtype=np.float64)
    diff = np.abs(o - r)
    mag = np.abs(r)
    rel = diff[mag > REL_FLOOR] / mag[mag > REL_FLOOR]
    bad = diff > tol.atol + tol.rtol * mag
    return {"max_abs": float(diff.max(initial=0.0)), "max_rel": float(rel.max(initial=0.0)),
            "median_abs": float(np.median(diff)) if diff.size else 0.0,
            "fail_frac": float(bad.mean()) if bad.size else 0.0, "atol": tol.atol, "rtol": tol.rtol}


def compare_outputs(refs: Sequence[np.ndarray], outs: Sequence[np.ndarray], names: Sequence[str], tol: Tolerance,
                    *, converted: str = "ONNX Runtime", reference: str = "PyTorch",
                    ref_names: Sequence[str] | None = None, hint: str = "") -> dict[str, dict[str, float]]:
    """Check ``outs`` (the converted model's) against ``refs``; return the per-output record.

    Args:
        refs: The reference outputs, in order.
        outs: The converted model's outputs, in order.
        names: The converted model's output names (used in the record and the messages).
        tol: The tolerance of the rule in the module docstring.
        converted: What produced ``outs`` ("ONNX Runtime", "TensorRT"), for the message.
        reference: What produced ``refs``, for the message.
        ref_names: The reference's own output names, when it has any: they must equal ``names``.
        hint: What the user should do when the check fails.

    Returns:
        name -> ``max_abs``, ``max_rel``, ``median_abs``, ``fail_frac``, ``atol``, ``rtol``.

    Raises:
        ShapeMismatch: the count, names or shapes differ (value failures of the other outputs are
            listed in the same message).
        ToleranceExceeded: every shape matches and some values break the rule.
    """
    names = list(names) if names else [f"output{i}" for i in range(len(outs))]
    head = f"{converted} output differs from {reference}: "
    if len(outs) != len(refs):
        raise ShapeMismatch(f"{head}{converted} gives {len(outs)} outputs, {reference} {len(refs)}",
                            hint=hint or "the converted graph is not the reference's")
    shape_fails: list[str] = []
    if ref_names is not None and list(ref_names) != names:
        shape_fails.append(f"output names {names} != {reference} {list(ref_names)}")
    value_fails: list[str] = []
    record: dict[str, dict[str, float]] = {}
    for name, r, o in zip(names, refs, outs):
        r, o = np.asarray(r), np.asarray(o)
        if r.shape != o.shape:
            shape_fails.append(f"{name}: shape {o.shape} != {reference} {r.shape}")
            continue
        rec = record[name] = _value_record(r, o, tol)
        if rec["fail_frac"] > 0:
            value_fails.append(f"{name}: max_abs {rec['max_abs']:.3g}, max_rel {rec['max_rel']:.3g}, "
                               f"{100 * rec['fail_frac']:.2f}% of elements over atol={tol.atol:g} + "
                               f"rtol={tol.rtol:g}*|ref|")
    if shape_fails:
        raise ShapeMismatch(head + "; ".join(shape_fails + value_fails), hint=hint)
    if value_fails:
        raise ToleranceExceeded(head + "; ".join(value_fails), hint=hint)
    return record
