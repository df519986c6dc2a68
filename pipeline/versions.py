"""Library versions recorded in every manifest and report."""

from __future__ import annotations

import platform
import sys
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("edge-pipeline", "torch", "torchvision", "torch-pruning", "onnx", "onnxruntime", "onnx-graphsurgeon",
            "numpy", "timm", "tensorrt")


@lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for p in PACKAGES:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            continue
    return out
