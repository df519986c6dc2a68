"""Run-folder bookkeeping: atomic writes, sha256, and ``manifest.json``.

Every stage's record carries its config digest, its inputs and outputs with sha256, its
metrics, seconds and library versions. ``--resume`` uses it to skip a stage whose inputs and
outputs still hash the same.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.io import atomic_write_json, sha256_file

MANIFEST = "manifest.json"


@dataclass
class StageRecord:
    name: str
    status: str  # ok | skipped | failed | reused | running | interrupted
    seconds: float
    config_digest: str = ""
    inputs: dict[str, str] = field(default_factory=dict)  # path (relative to run dir) -> sha256
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    versions: dict[str, str] = field(default_factory=dict)


class Manifest:
    """The ``manifest.json`` of one run folder; written atomically after every stage."""

    def __init__(self, run_dir: Path, header: Mapping[str, Any]) -> None:
        self.run_dir = Path(run_dir)
        self.header = dict(header)
        self.stages: dict[str, StageRecord] = {}

    @classmethod
    def load(cls, run_dir: Path) -> Manifest | None:
        p = Path(run_dir) / MANIFEST
        if not p.is_file():
            return None
        try:
            d = json.loads(p.read_text())
        except json.JSONDecodeError:
            return None
        m = cls(run_dir, d.get("header", {}))
        for s in d.get("stages", []):
            m.stages[s["name"]] = StageRecord(**s)
        return m

    def hashes(self, names: list[str]) -> dict[str, str]:
        return {n: sha256_file(self.run_dir / n) for n in names if (self.run_dir / n).is_file()}

    def is_fresh(self, name: str, config_digest: str, inputs: list[str], outputs: list[str]) -> bool:
        """True when stage ``name`` ran ok with this config and its files still hash the same."""
        rec = self.stages.get(name)
        if rec is None or rec.status not in ("ok", "reused") or rec.config_digest != config_digest:
            return False
        if set(rec.outputs) != set(outputs):
            return False
        try:
            now_in = self.hashes(inputs)
            if now_in != rec.inputs:
                return False
            return all(sha256_file(self.run_dir / p) == h for p, h in rec.outputs.items())
        except OSError:
            return False

    def record(self, rec: StageRecord) -> None:
        self.stages[rec.name] = rec
        self.save()

    def save(self) -> None:
        atomic_write_json(self.run_dir / MANIFEST, {
            "format": "edge-pipeline/manifest-v1",
            "header": self.header,
            "stages": [vars(r) for r in self.stages.values()],
        })
