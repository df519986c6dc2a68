"""``example:tiny-llama``: a small LLaMA-architecture decoder trained in this repository.

The project's real decoder workload for Wanda / STADE and for head / FFN pruning: a
``transformers`` ``LlamaForCausalLM`` (4 layers, hidden 192, 6 query heads of 32 sharing 2
key/value heads: **grouped-query attention**, SwiGLU FFN of 512, RMSNorm, RoPE, tied embeddings,
2.0 M parameters) with a byte-level BPE tokenizer of 2048 tokens, both trained by
:mod:`stages.load.train_tiny_llama` on a real text corpus that every Python installation carries:
the **docstrings of the CPython 3.11 standard library** (module, class and function docstrings of
``Lib/*.py``, tests, IDLE, tkinter, lib2to3 and the demo folders excluded; whitespace collapsed,
one docstring a line, at least 40 characters, duplicates dropped). That text is CPython's, under
the Python Software Foundation License version 2 (``LICENSE`` of CPython); it is used here as
training data and a 10% held-out part ships as the example's text data.

What ships (``stages/load/weights/tiny-llama/``, written by the training script):
``config.json``, ``model.safetensors`` (float16, loaded as float32), ``tokenizer.json``,
``tokenizer_config.json`` and ``training.json`` (the script's settings, corpus digest, losses and
wall time). The held-out docstrings are ``stages/load/text/stdlib_docstrings_heldout.txt``: the
docstrings whose SHA-1 ends in a multiple of 10 never enter training, so perplexity on them is
held-out perplexity.
"""

from __future__ import annotations

import ast
import hashlib
import re
import sysconfig
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

WEIGHTS = "tiny-llama"
HELDOUT = "stdlib_docstrings_heldout.txt"
SKIP_PARTS = ("idlelib", "lib2to3", "site-packages", "tkinter", "turtledemo", "ensurepip", "venv",
              "__phello__", "pydoc_data")
MIN_CHARS = 40


def model_folder() -> Path:
    """The shipped model folder (config, weights, tokenizer)."""
    return Path(str(resources.files("stages.load") / "weights" / WEIGHTS))


def heldout_file() -> Path:
    """The shipped held-out docstrings, one a line (the example's ``text:`` data)."""
    return Path(str(resources.files("stages.load") / "text" / HELDOUT))


def _sources(root: Path) -> list[Path]:
    def wanted(p: Path) -> bool:
        parts = p.relative_to(root).parts
        return not any(part in SKIP_PARTS or part.startswith("test") for part in parts)

    return sorted(p for p in root.rglob("*.py") if wanted(p))


def _docstrings(path: Path) -> Iterator[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                text = re.sub(r"\s+", " ", doc).strip()
                if len(text) >= MIN_CHARS:
                    yield text


def stdlib_docstrings(root: Path | None = None) -> list[str]:
    """Every qualifying docstring of the standard library at ``root`` (default: this interpreter's), in
    file then tree order, first occurrence kept."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out = []
    for path in _sources(root):
        for text in _docstrings(path):
            if text not in seen:
                seen.add(text)
                out.append(text)
    return out


def _bucket(text: str) -> int:
    return int(hashlib.sha1(text.encode("utf-8")).hexdigest(), 16) % 10


def is_heldout(text: str) -> bool:
    """The fixed 10% held out of training (the example's data): SHA-1 of the text, as an integer, is 0 mod 10."""
    return _bucket(text) == 0


def is_validation(text: str) -> bool:
    """The 10% that chose the training length (1 mod 10); neither trained on nor shipped."""
    return _bucket(text) == 1
