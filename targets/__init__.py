"""Targets: the only package that touches a runtime (onnxruntime, tensorrt, ssh).

:data:`TARGETS` (:mod:`targets.table`) is the one table of targets; :func:`get_target` dispatches
by name. Every target measures with the one protocol of :mod:`targets.timing`.
"""

from __future__ import annotations

from targets.base import Engine, MeasureSettings, Target, TargetSpec
from targets.table import TARGETS, get_target

__all__ = ["TARGETS", "Engine", "MeasureSettings", "Target", "TargetSpec", "get_target"]
