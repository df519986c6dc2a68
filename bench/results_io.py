"""What every benchmark script does with its results: ``OUT.json`` and ``OUT.md`` side by side."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path


def write_results(out: Path, report: dict, markdown: Callable[[dict], str], echo: bool = True) -> None:
    """Write ``report`` as ``out.json`` and its Markdown table as ``out.md`` (printed too unless ``echo`` is off)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    text = markdown(report)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    out.with_suffix(".md").write_text(text)
    if echo:
        print(text)
