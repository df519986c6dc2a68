"""``hf:PATH_OR_ID`` models (Hugging Face ``transformers``), offline only, and ``example:minilm``.

``PATH_OR_ID`` is a local folder with ``config.json``, or a model id already in the local Hugging
Face cache (resolved with ``local_files_only=True`` under ``HF_HUB_OFFLINE=1``: nothing is ever
downloaded; a missing id names the cache it looked in). ``--task`` picks the Auto class and the
contract (:mod:`stages.model.contract`):

=====================  ==========================================  ========================  ==============
task                   Auto class                                  inputs                    output (metric)
=====================  ==========================================  ========================  ==============
feature-extraction     ``AutoModel``                               input_ids, attention_mask  last_hidden_state, or the
                                                                                             sentence embedding of a
                                                                                             sentence-transformers folder
                                                                                             (``cosine``)
sequence-classification ``AutoModelForSequenceClassification``     input_ids, attention_mask  logits (``agreement``)
image-classification   ``AutoModelForImageClassification``         pixel_values [3, H, W]    logits (``agreement``)
causal-lm              ``AutoModelForCausalLM`` (``use_cache`` off) input_ids, attention_mask  logits (``perplexity``)
=====================  ==========================================  ========================  ==============

Token inputs have the named axis ``sequence``; its size is ``--input-shape L`` (default 128,
capped by the model's ``max_position_embeddings``). The tokenizer (or nothing, for images) comes
from the same folder. Attention runs the ``eager`` implementation (explicit matmul / softmax),
which Torch-Pruning's tracer follows.

A folder written by sentence-transformers (``modules.json`` naming a ``Pooling`` module) gets its
pooling (mean / CLS / max as its ``1_Pooling/config.json`` says) and, when listed, the L2
normalisation, so the output is the embedding ``SentenceTransformer.encode`` gives.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import ModelLoadError, SpecError, did_you_mean
from stages.model.contract import ContractModel, InputSpec, ModelIO, OutputSpec

DEFAULT_SEQUENCE = 128


@dataclass(frozen=True)
class Task:
    name: str
    auto_class: str
    output: str
    metric: str
    tokens: bool = True


TASKS = {t.name: t for t in (
    Task("feature-extraction", "AutoModel", "last_hidden_state", "cosine"),
    Task("sequence-classification", "AutoModelForSequenceClassification", "logits", "agreement"),
    Task("image-classification", "AutoModelForImageClassification", "logits", "agreement", tokens=False),
    Task("causal-lm", "AutoModelForCausalLM", "logits", "perplexity"),
)}


@dataclass
class HFModel:
    """What the loader hands to ``stages.load.models``: the contracted module and its companions."""

    module: ContractModel
    tokenizer: object | None
    task: Task
    folder: Path
    notes: list[str]


@contextmanager
def offline():
    """``HF_HUB_OFFLINE=1`` / ``TRANSFORMERS_OFFLINE=1`` for the duration of a load, then restored."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    old = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_of(name: str | None, folder: Path) -> Task:
    """The task named, or the one the folder's config implies (``architectures``), or feature-extraction."""
    if name is not None:
        if name not in TASKS:
            raise SpecError(f"unknown task '{name}'.{did_you_mean(name, TASKS)}", hint=f"tasks: {', '.join(TASKS)}")
        return TASKS[name]
    arch = " ".join(_config(folder).get("architectures") or [])
    for suffix, task in (("ForCausalLM", "causal-lm"), ("ForSequenceClassification", "sequence-classification"),
                         ("ForImageClassification", "image-classification")):
        if suffix in arch:
            return TASKS[task]
    return TASKS["feature-extraction"]


def resolve_folder(path_or_id: str) -> Path:
    """A local folder with config.json, or the snapshot of an id in the local cache (never downloads)."""
    p = Path(path_or_id).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise SpecError(f"hf:{path_or_id}: the folder has no config.json",
                            hint="give the folder that transformers' save_pretrained wrote")
        return p
    if p.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") > 1:
        raise SpecError(f"hf:{path_or_id}: not a folder", hint="give a folder with config.json, or a model id")
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:
        raise SpecError("hf: models need transformers", hint="pip install 'edge-pipeline[hf]'") from None
    with offline():
        try:
            return Path(snapshot_download(path_or_id, local_files_only=True))
        except Exception:  # noqa: BLE001 - hub errors differ by version; all mean "not in the cache"
            raise SpecError(f"hf:{path_or_id} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}); "
                            "nothing is downloaded", hint="download it once elsewhere and copy the folder, then "
                                                          "pass hf:FOLDER") from None


def _config(folder: Path) -> dict:
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SpecError(f"{folder / 'config.json'} is not readable JSON: {e}", hint="re-save the model") from None


def load_hf(path_or_id: str, task_name: str | None, sequence: int | None, output: str | None = None) -> HFModel:
    """Load an ``hf:`` model offline as a :class:`ContractModel` (eval mode, float32, CPU)."""
    folder = resolve_folder(path_or_id)
    task = task_of(task_name, folder)
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise SpecError("hf: models need transformers", hint="pip install 'edge-pipeline[hf]'") from None
    cls = getattr(transformers, task.auto_class)
    kwargs = {"local_files_only": True, "attn_implementation": "eager", "dtype": torch.float32}
    with offline():
        verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()  # "Loading weights" bars are noise on a CI log
        try:
            model = cls.from_pretrained(str(folder), **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError, TypeError, ImportError) as e:
            raise ModelLoadError(f"hf:{path_or_id} does not load as {task.auto_class}: {_first_line(e)}",
                                 hint="check --task (or the folder's config.json and weights)") from None
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer = _tokenizer(folder) if task.tokens else None
    if getattr(model.config, "use_cache", None):
        model.config.use_cache = False  # the pipeline reads logits; no key/value cache outputs
    notes = [f"transformers {task.auto_class} from {folder} (offline)"]
    io, post = _contract(model, folder, task, sequence, output)
    if post is not None:
        notes.append("sentence-transformers pooling from the folder's modules.json")
    return HFModel(ContractModel(model.eval(), io, post).eval(), tokenizer, task, folder, notes)


def _tokenizer(folder: Path):
    from transformers import AutoTokenizer

    names = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
    if not any((folder / n).is_file() for n in names):
        return None
    try:
        return AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"the tokenizer in {folder} does not load: {_first_line(e)}",
                             hint="re-save it with tokenizer.save_pretrained(FOLDER)") from None


def _contract(model: nn.Module, folder: Path, task: Task, sequence: int | None, output: str | None
              ) -> tuple[ModelIO, nn.Module | None]:
    cfg = model.config
    post = sentence_pooling(folder) if task.name == "feature-extraction" and output is None else None
    key = output or task.output
    name = "sentence_embedding" if post is not None else key
    out = OutputSpec(int(key) if key.isdigit() else key, name)
    if not task.tokens:
        size = int(getattr(cfg, "image_size", 224))
        chans = int(getattr(cfg, "num_channels", 3))
        return ModelIO((InputSpec("pixel_values", "float32", (chans, size, size)),), out), None
    limit = int(getattr(cfg, "max_position_embeddings", 0) or 0)
    seq = int(sequence or (min(DEFAULT_SEQUENCE, limit) if limit else DEFAULT_SEQUENCE))
    if limit and seq > limit:
        raise SpecError(f"sequence length {seq} exceeds the model's max_position_embeddings {limit}",
                        hint=f"pass --input-shape {limit} or less")
    inputs = tuple(InputSpec(n, "int64", ("sequence",)) for n in ("input_ids", "attention_mask"))
    return ModelIO(inputs, out, {"sequence": seq}), post


class SentencePooling(nn.Module):
    """sentence-transformers' Pooling (+ Normalize): token states -> one embedding per sentence."""

    def __init__(self, mode: str = "mean", normalize: bool = True) -> None:
        super().__init__()
        self.mode = mode
        self.normalize = normalize

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: torch.Tensor
                ) -> torch.Tensor:
        mask = (torch.ones(hidden.shape[:2], dtype=hidden.dtype) if attention_mask is None
                else attention_mask.to(hidden.dtype)).unsqueeze(-1)
        if self.mode == "cls":
            pooled = hidden[:, 0]
        elif self.mode == "max":
            pooled = hidden.masked_fill(mask == 0, -1e9).amax(1)
        else:
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1) if self.normalize else pooled


def sentence_pooling(folder: Path) -> SentencePooling | None:
    """The pooling a sentence-transformers folder declares, or None for a plain transformers folder."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    types = {str(m.get("type", "")).rsplit(".", 1)[-1]: m for m in modules if isinstance(m, dict)}
    if "Pooling" not in types:
        return None
    try:
        pcfg = json.loads((folder / types["Pooling"].get("path", "1_Pooling") / "config.json").read_text())
    except (OSError, ValueError):
        pcfg = {"pooling_mode_mean_tokens": True}
    mode = "cls" if pcfg.get("pooling_mode_cls_token") else "max" if pcfg.get("pooling_mode_max_tokens") else "mean"
    return SentencePooling(mode, "Normalize" in types)


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__
