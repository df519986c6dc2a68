"""Weight masks: exact counts per comparison group, N:M patterns, applying, reporting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stages.model.calib import collect_input_stats
from stages.model.masks import (
    DENSE_RUNTIME_NOTE,
    Comparison,
    MaskSpec,
    apply_masks,
    nm_ok,
    prune_mask,
    reapply_masks,
    sparsity_report,
)
from stages.prune.sparsify import sparsify
from stages.score.stade import stade_masks
from stages.score.wanda import wanda_masks


def test_row_mask_by_hand_with_ties_broken_by_index():
    s = torch.tensor([[3.0, 1.0, 2.0, 1.0], [0.0, 5.0, 4.0, 6.0]])
    m = prune_mask(s, MaskSpec(Comparison.ROW, 0.5))
    # row 0: the two 1.0s (indices 1, 3); row 1: 0.0 and 4.0
    assert m.tolist() == [[False, True, False, True], [True, False, True, False]]
    m = prune_mask(s, MaskSpec(Comparison.ROW, 0.3))  # int(4 * 0.3) = 1: the lower index of the tie
    assert m.tolist() == [[False, True, False, False], [True, False, False, False]]


def test_column_and_layer_masks_by_hand():
    s = torch.tensor([[3.0, 1.0, 2.0], [0.0, 5.0, 4.0]])
    assert prune_mask(s, MaskSpec(Comparison.COLUMN, 0.5)).tolist() == [[False, True, True], [True, False, False]]
    assert prune_mask(s, MaskSpec(Comparison.LAYER, 0.5)).tolist() == [[False, True, True], [True, False, False]]
    assert prune_mask(s, MaskSpec(Comparison.LAYER, 0.34)).tolist() == [[False, True, False], [True, False, False]]


@pytest.mark.parametrize("sparsity", [0.1, 0.25, 0.5, 0.7, 0.9])
@pytest.mark.parametrize("shape", [(7, 33), (6, 5, 3, 3)])
def test_unstructured_masks_hit_the_exact_count_per_group(sparsity, shape):
    s = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    rows, cols = shape[0], s[0].numel()
    row = prune_mask(s, MaskSpec(Comparison.ROW, sparsity))
    assert row.shape == s.shape and (row.reshape(rows, -1).sum(1) == int(cols * sparsity)).all()
    col = prune_mask(s, MaskSpec(Comparison.COLUMN, sparsity))
    assert (col.reshape(rows, -1).sum(0) == int(rows * sparsity)).all()
    layer = prune_mask(s, MaskSpec(Comparison.LAYER, sparsity))
    assert int(layer.sum()) == int(s.numel() * sparsity)
    # what is pruned is the lowest of each row
    r2 = s.reshape(rows, -1)
    m2 = row.reshape(rows, -1)
    for i in range(rows):
        if m2[i].any() and (~m2[i]).any():
            assert r2[i][m2[i]].max() <= r2[i][~m2[i]].min()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4)])
def test_nm_masks_have_exactly_n_zeros_in_every_block(n, m):
    g = torch.Generator().manual_seed(n * 10 + m)
    lin = torch.rand(6, 32, generator=g)
    mask = prune_mask(lin, MaskSpec(Comparison.NM, n=n, m=m))
    blocks = mask.reshape(6, 32 // m, m)
    assert (blocks.sum(-1) == n).all()
    # the N pruned of each block are its N lowest
    sb = lin.reshape(6, 32 // m, m)
    assert (sb.masked_fill(~blocks, -1).amax(-1) <= sb.masked_fill(blocks, 2).amin(-1)).all()
    # conv: blocks of M consecutive *input channels* at each (out, kh, kw), the sparse-tensor-core layout
    conv = torch.rand(5, 16, 3, 3, generator=g)
    cm = prune_mask(conv, MaskSpec(Comparison.NM, n=n, m=m))
    assert cm.shape == conv.shape
    per_block = cm.permute(0, 2, 3, 1).reshape(5, 3, 3, 16 // m, m).sum(-1)
    assert (per_block == n).all()


def test_nm_hand_example():
    s = torch.tensor([[4.0, 3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 4.0]])
    assert prune_mask(s, MaskSpec.parse("2:4")).tolist() == [[False, False, True, True, True, True, False, False]]


def test_nm_rejects_incompatible_widths_and_builders_skip_them():
    with pytest.raises(ValueError, match="divisible by 4"):
        prune_mask(torch.rand(4, 6), MaskSpec.parse("2:4"))
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
    stats = collect_input_stats(model, [torch.randn(2, 3, 6, 6)])
    masks = wanda_masks(model, stats, "2:4")
    assert set(masks.pruned) == {"2"} and "divisible by 4" in masks.skipped["0"]  # RGB input: 3 channels


def test_mask_spec_parsing():
    assert MaskSpec.parse("2:4") == MaskSpec(Comparison.NM, 0.0, 2, 4)
    assert MaskSpec.parse("0.5") == MaskSpec(Comparison.ROW, 0.5)
    assert MaskSpec.parse("layer:50%") == MaskSpec(Comparison.LAYER, 0.5)
    assert str(MaskSpec.parse("4:8")) == "4:8" and str(MaskSpec.parse("column:0.3")) == "column:0.3"
    for bad in ("3:2", "1.5", "rows:0.5", "half"):
        with pytest.raises(ValueError):
            MaskSpec.parse(bad)
    with pytest.raises(ValueError, match="structured"):
        MaskSpec(Comparison.CHANNEL)


def test_apply_masks_keeps_shapes_zeros_in_place_and_reports():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(32, 8) + 1
    stats = collect_input_stats(model, [x])
    masks = stade_masks(model, stats, "2:4", ignore={"2"})
    assert set(masks.pruned) == {"0"}
    out = apply_masks(model, masks, stats)
    for (n, p), (_, q) in zip(model.named_parameters(), out.named_parameters()):
        assert p.shape == q.shape, n
    assert torch.equal(out[0].weight == 0, masks.pruned["0"] | (model[0].weight == 0))
    assert torch.equal(out[2].weight, model[2].weight)  # ignored layer untouched
    assert not (model[0].weight == 0).any()  # input model untouched
    rep = sparsity_report(out, layers=["0", "2"], spec=masks.spec)
    assert rep["layers"]["0"] == {"zeros": 64, "numel": 128, "sparsity": 0.5, "nm_ok": True}
    assert rep["layers"]["2"]["zeros"] == 0 and rep["layers"]["2"]["nm_ok"] is False
    assert rep["zeros"] == 64 and rep["numel"] == 128 + 64 and rep["sparsity"] == round(64 / 192, 6)
    assert rep["pattern"] == "2:4" and rep["speedup_note"] == DENSE_RUNTIME_NOTE
    assert "no speedup" in DENSE_RUNTIME_NOTE and "SPARSE_WEIGHTS" in DENSE_RUNTIME_NOTE
    # recovery would regrow the zeros: reapply_masks zeroes them again in place
    with torch.no_grad():
        out[0].weight.add_(1.0)
    reapply_masks(out, masks)
    assert nm_ok(out[0].weight, 2, 4) and int((out[0].weight == 0).sum()) == 64


def test_apply_masks_argument_checks():
    model = nn.Sequential(nn.Linear(4, 2))
    mask = {"0": torch.zeros(2, 4, dtype=torch.bool)}
    with pytest.raises(ValueError, match="stats"):
        apply_masks(model, mask)
    with pytest.raises(ValueError, match="without a mask"):
        apply_masks(model, mask, compensate=["1"])
    with pytest.raises(ValueError, match="shape"):
        apply_masks(model, {"0": torch.zeros(4, 2, dtype=torch.bool)}, compensate=False)


def test_masked_model_exports_with_zeros_in_place(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    x = torch.randn(4, 8, 4, 4)
    stats = collect_input_stats(model, [x])
    out = apply_masks(model, wanda_masks(model, stats, "2:4", ignore={"3"}), compensate=False)
    from stages.export import ExportSettings, export_onnx

    path = tmp_path / "m.onnx"
    export_onnx(out, (8, 4, 4), path, ExportSettings())  # the pipeline's own export (legacy, opset 18)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    w = torch.tensor(next(v for v in inits.values() if v.shape == (8, 8, 3, 3)))
    assert nm_ok(w, 2, 4) and int((w == 0).sum()) == w.numel() // 2


@pytest.mark.parametrize("sequential", [True, False])
def test_sparsify_one_call_per_criterion(sequential):
    from core.errors import ConfigError

    torch.manual_seed(0)
    # linear (no activation): STADE's per-layer mean preservation composes to the whole output
    model = nn.Sequential(nn.Linear(8, 16), nn.Linear(16, 12), nn.Linear(12, 4)).eval()
    xs = [torch.randn(32, 8) + 2, torch.randn(32, 8) + 2]
    ref = torch.cat([model(x) for x in xs]).mean(0).detach()
    results = {}
    for crit in ("wanda", "stade", "stadew"):
        out, masks, rep = sparsify(model, xs, crit, "2:4", ignore={"2"}, sequential=sequential)
        results[crit] = masks
        assert set(masks.pruned) == {"0", "1"} and all(r["nm_ok"] for r in rep["layers"].values())
        assert rep["sparsity"] == 0.5 and rep["speedup_note"] == DENSE_RUNTIME_NOTE
        mean = torch.cat([out(x) for x in xs]).mean(0).detach()
        if crit == "stade":
            assert masks.compensate == {"0", "1"} and torch.allclose(mean, ref, atol=1e-4)
        else:  # wanda never compensates; stadew only on output projections (none named so here)
            assert masks.compensate == frozenset() and torch.equal(out[0].bias, model[0].bias)
            assert (mean - ref).abs().max() > 1e-2
    with pytest.raises(ConfigError, match="Did you mean 'stade'"):
        sparsify(model, xs, "stad", "2:4")


def test_sequential_sparsify_scores_later_layers_on_masked_inputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8)).eval()
    xs = [torch.randn(64, 8)]
    _, seq, _ = sparsify(model, xs, "wanda", "0.5", sequential=True)
    _, one, _ = sparsify(model, xs, "wanda", "0.5", sequential=False)
    assert torch.equal(seq.pruned["0"], one.pruned["0"])  # the first layer sees the same inputs
    masked_first = apply_masks(model, {"0": one.pruned["0"]}, compensate=False)
    expected = wanda_masks(masked_first, collect_input_stats(masked_first, xs, ["2"]), "0.5").pruned["2"]
    assert torch.equal(seq.pruned["2"], expected)
    assert not torch.equal(seq.pruned["2"], one.pruned["2"])  # and the two modes really differ here
