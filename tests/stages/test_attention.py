"""Transformer structure: whole attention heads and FFN neurons as groups, attributes synced, forward checked,
exported ONNX on parity; attention that cannot lose heads is held (never a crash); bad head layouts refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from core.errors import StageError
from stages.export import ExportSettings, check_parity, export_onnx
from stages.model.attention import attention_sites
from stages.model.contract import ContractModel, InputSpec, ModelIO, OutputSpec
from stages.model.graph import PruneGraph
from stages.prune.plan import PruningPlan, apply_plan, make_plan, uniform_ratios
from targets.ort.runner import OrtRunner

timm = pytest.importorskip("timm")
IMG = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))


def _plan(graph: PruneGraph, ratio: float = 0.5) -> PruningPlan:
    groups = graph.groups()
    gen = torch.Generator().manual_seed(1)
    scores = {g.id: torch.rand(g.width, generator=gen) for g in groups}
    return make_plan(groups, scores, uniform_ratios(groups, ratio), round_to=8)


def _pruned(model: nn.Module, x: torch.Tensor, ratio: float = 0.5):
    graph = PruneGraph(copy.deepcopy(model), x)
    plan = _plan(graph, ratio)
    return graph, plan, apply_plan(copy.deepcopy(model), x, plan)


def _parity(model: nn.Module, shape: tuple[int, ...], x: torch.Tensor, tmp_path) -> dict:
    export_onnx(model, shape, tmp_path / "m.onnx", ExportSettings())
    with OrtRunner(tmp_path / "m.onnx") as r:
        rec = check_parity(model, r, x, atol=1e-4, rtol=1e-3)
    return next(iter(rec.values())) if "max_abs" not in rec else rec


@pytest.mark.parametrize("name, heads", [("vit_tiny_patch16_224", 3), ("deit_tiny_patch16_224", 3)])
def test_timm_vit_loses_whole_heads_and_exports_on_parity(name, heads, tmp_path):
    model = timm.create_model(name).eval()
    graph, plan, pruned = _pruned(model, IMG[:1])
    assert len(graph.heads()) == 12 and set(graph.heads().values()) == {heads}
    assert len(graph.groups()) == 24  # 12 attention + 12 MLP groups; the residual width is held
    for blk in pruned.blocks:
        att = blk.attn
        assert att.num_heads in (1, 2) and att.qkv.out_features == 3 * att.num_heads * 64
        assert att.proj.in_features == att.num_heads * 64 and att.proj.out_features == 192
    with torch.no_grad():
        assert pruned(IMG).shape == (2, 1000)
    assert _parity(pruned, (3, 224, 224), IMG, tmp_path)["max_abs"] < 1e-3


def test_head_plan_keeps_the_best_heads_whole():
    model = timm.create_model("vit_tiny_patch16_224").eval()
    graph = PruneGraph(copy.deepcopy(model), IMG[:1])
    g = next(g for g in graph.groups() if g.heads)
    s = torch.ones(g.width)
    for c in range(g.width):
        if g.head_of(c) == 1:
            s[c] = 0.0  # head 1 (its q, k and v rows) scores lowest
    scores = {x.id: torch.ones(x.width) for x in graph.groups()}
    scores[g.id] = s
    plan = make_plan(graph.groups(), scores, {g.id: 0.6}, round_to=8)
    keep = next(p.keep for p in plan.groups if p.id == g.id)
    assert {g.head_of(c) for c in keep} == {0, 2} and len(keep) == 2 * 3 * 64


def test_timm_swin_prunes_heads_and_their_relative_position_bias(tmp_path):
    model = timm.create_model("swin_tiny_patch4_window7_224").eval()
    graph, plan, pruned = _pruned(model, IMG[:1])
    assert graph.heads() and not graph.held_notes()
    att = pruned.layers[0].blocks[0].attn
    assert att.relative_position_bias_table.shape[1] == att.num_heads < 3
    with torch.no_grad():
        assert pruned(IMG[:1]).shape == (1, 1000)


def test_torchvision_vit_holds_packed_attention_and_prunes_the_mlp():
    tv = pytest.importorskip("torchvision")
    model = tv.models.vit_b_16().eval()
    graph, plan, pruned = _pruned(model, IMG[:1])
    assert not graph.heads() and len(graph.groups()) == 12  # the 12 MLPs only
    assert len(graph.held_notes()) == 12 and "nn.MultiheadAttention" in graph.held_notes()[0]
    assert pruned.encoder.layers[0].mlp[0].out_features < 3072
    with torch.no_grad():
        assert pruned(IMG[:1]).shape == (1, 1000)


def test_torchvision_swin_attention_is_held_by_the_probe():
    tv = pytest.importorskip("torchvision")
    model = tv.models.swin_t().eval()
    graph = PruneGraph(copy.deepcopy(model), IMG[:1])
    assert graph.attention and all(s.held for s in graph.attention)
    assert "forward fails with one head fewer" in graph.held_notes()[0]
    assert not graph.heads()


def _llama(heads: int = 8, kv: int = 2, seq: int = 16) -> ContractModel:
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=heads, num_key_value_heads=kv, head_dim=8, use_cache=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    io = ModelIO(tuple(InputSpec(n, "int64", ("sequence",)) for n in ("input_ids", "attention_mask")),
                 OutputSpec("logits", "logits"), {"sequence": seq})
    return ContractModel(model, io).eval()


def test_llama_gqa_prunes_kv_heads_with_their_query_heads_and_the_swiglu_ffn(tmp_path):
    model = _llama()
    ids = torch.randint(0, 256, (3, 16), generator=torch.Generator().manual_seed(0))
    x = model.io.pack({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    graph, plan, pruned = _pruned(model, x)
    assert set(graph.heads().values()) == {2}  # key/value heads
    ffn = [g for g in graph.groups() if not g.heads]
    assert len(ffn) == 2 and all(g.id.endswith("gate_proj") and any(n.endswith("up_proj") for n in g.out_layers) for g in ffn)
    att = pruned.model.model.layers[0].self_attn
    assert att.k_proj.out_features == att.v_proj.out_features == 8  # one kv head of 8
    assert att.q_proj.out_features == att.o_proj.in_features == 32  # its 4 query heads
    assert pruned.model.model.layers[0].mlp.down_proj.in_features == 64
    with torch.no_grad():
        assert pruned(x).shape == (3, 16, 256)
    assert _parity(pruned, model.io.sample_shape(), x, tmp_path)["max_abs"] < 1e-3


def test_bert_heads_sync_attributes():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=64)
    bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
    io = ModelIO(tuple(InputSpec(n, "int64", ("sequence",)) for n in ("input_ids", "attention_mask")),
                 OutputSpec("last_hidden_state", "hidden"), {"sequence": 8})
    model = ContractModel(bert, io).eval()
    x = io.pack({"input_ids": torch.randint(0, 100, (2, 8)), "attention_mask": torch.ones(2, 8, dtype=torch.long)})
    graph, plan, pruned = _pruned(model, x)
    att = pruned.model.encoder.layer[0].attention.self
    assert (att.num_attention_heads, att.all_head_size) == (2, 16)
    with torch.no_grad():
        assert pruned(x).shape == (2, 8, 32)


class OddHeads(nn.Module):
    """A fused-qkv attention whose qkv width (3 x 20) does not split into its 3 declared heads."""

    def __init__(self) -> None:
        super().__init__()
        self.num_heads = 3
        self.qkv = nn.Linear(20, 60)
        self.proj = nn.Linear(20, 20)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, -1)
        return self.proj(torch.softmax(q @ k.transpose(-1, -2), -1) @ v)


def test_a_head_count_that_does_not_divide_is_one_error_unless_ignored():
    model = nn.Sequential(OddHeads(), nn.Linear(20, 4))
    with pytest.raises(StageError, match="do not split into 3 heads") as e:
        attention_sites(model)
    assert "prune.ignore" in e.value.hint
    assert attention_sites(model, skip=("0",)) == []
