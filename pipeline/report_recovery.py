"""The report's recovery part: which method ran, what its phase decided, and ``recovery.png`` (loss and the
calibration metric vs step, the hard removal marked)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

PLOT = "recovery.png"


def recovery_section(state: Any) -> dict | None:
    """From the recover stage's record: None when it did not train."""
    rec = next((r for r in getattr(state, "records", []) if r.name == "recover"), None)
    m = getattr(rec, "metrics", None) or {}
    if not m.get("method") or not m.get("steps"):
        return None
    phase = m.get("phase") or {}
    return {"method": m["method"], "steps": m["steps"], "phase_steps": m.get("phase_steps"),
            "swapped": phase.get("swapped", phase.get("swapped_channels")),
            "families": phase.get("families"), "hard_removal_max_abs": phase.get("hard_removal_max_abs"),
            "calib_accuracy": m.get("calib_accuracy"), "loss_first": m.get("loss_first"),
            "loss_last": m.get("loss_last"), "curve": m.get("curve"), "plot": PLOT if m.get("curve") else None}


def recovery_lines(r: dict | None, metric: str | None) -> list[str]:
    if not r:
        return []
    what = {"distill": "knowledge distillation from the unpruned model", "dpm": "DPM (decaying norms, self-rectifying)",
            "maskprune": "MaskPrune (learned masks, one width per family)"}.get(r["method"], r["method"])
    lines = ["", "## Recovery", "", f"{what}: {r['steps']} steps"
             + (f", of which {r['phase_steps']} before the hard removal" if r.get("phase_steps") else "") + "."]
    if r.get("swapped") is not None:
        lines.append(f"Channels swapped against the search's plan (same widths): {r['swapped']}.")
    if r.get("families"):
        lines.append("Widths per family: " + ", ".join(f"`{f}` {v['kept']}/{v['units']}"
                                                       + ("" if v.get("bound_at") else " (forced at the end)")
                                                       for f, v in r["families"].items()) + ".")
    if r.get("hard_removal_max_abs") is not None:
        lines.append(f"Hard removal changed the outputs by at most {r['hard_removal_max_abs']:.2e} (checked).")
    if r.get("plot"):
        lines += ["", f"![loss and calibration {metric or 'metric'} vs step]({PLOT})"]
    return lines + [""]


def recovery_png(report: dict, figure: Callable[[float, float], Any], png: Callable[[Any], bytes]) -> bytes | None:
    """The plot, drawn with the report's ``figure(width, height)`` and ``png(fig)``; None without a curve."""
    r = report.get("recovery") or {}
    c = r.get("curve")
    if not c:
        return None
    name = (report.get("metric") or {}).get("name") or "metric"
    fig = figure(6.4, 3.8)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(c["step"], c["loss"], color="#6b7fa8", lw=1.2, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log" if min(c["loss"], default=1) > 0 else "linear")
    if r.get("phase_steps"):
        ax.axvline(r["phase_steps"], color="#888", ls="--", lw=1, label="hard removal")
    if c.get("metric"):
        ax2 = ax.twinx()
        ax2.plot(c["metric_step"], c["metric"], "o-", color="#c0504d", ms=3, lw=1,
                 label=f"calib {name}")
        ax2.set_ylabel(f"calib {name}")
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper right")
    else:
        ax.legend(fontsize=7)
    ax.set_title(f"recovery: {r['method']}", fontsize=9)
    return png(fig)
