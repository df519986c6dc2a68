"""Run-folder bookkeeping: atomic writes, sha256, and ``manifest.json``.

Every stage's record carries its config digest, its inputs and outputs with sha256, its
metrics, seconds and library versions. ``--resume`` uses it to skip a stage whose inputs and
outputs still hash the same.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def digest(obj: Any) -> str:
    """Stable sha256 of a JSON-serialisable object."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_torch_save(path: Path, obj: Any) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


@dataclass
class StageRecord:
    name: str
    status: str  # ok | skipped | failed | reused
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
