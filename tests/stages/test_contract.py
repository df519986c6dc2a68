"""The model contract: named inputs, packing, output selection, export with names and dynamic axes, ORT feeds."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from core.errors import SpecError
from stages.export import ExportSettings, export_onnx
from stages.model.contract import ContractModel, InputSpec, ModelIO, OutputSpec, select_output
from targets.ort.runner import OrtRunner


class TwoTokens(nn.Module):
    """Embeds ids, masks by attention_mask; returns a dict (like a Hugging Face ModelOutput)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.lin = nn.Linear(8, 8)

    def forward(self, input_ids, attention_mask):
        h = self.lin(self.emb(input_ids)) * attention_mask.unsqueeze(-1).float()
        return OrderedDict(hidden=h, pooled=h.sum(1))


def _io(seq: int = 6, key: str | int = "hidden") -> ModelIO:
    return ModelIO(tuple(InputSpec(n, "int64", ("sequence",)) for n in ("input_ids", "attention_mask")),
                   OutputSpec(key, str(key)), {"sequence": seq})


def test_pack_unpack_round_trip_and_shapes():
    io = _io()
    ids = torch.randint(0, 50, (3, 6))
    mask = torch.ones(3, 6, dtype=torch.long)
    x = io.pack({"input_ids": ids, "attention_mask": mask})
    assert x.shape == (3, 2, 6) and io.sample_shape() == (2, 6)
    back = io.unpack(x.float())  # a float zero batch from a shape-only caller becomes integers again
    assert back["input_ids"].dtype == torch.int64 and torch.equal(back["input_ids"], ids)
    with pytest.raises(SpecError, match="missing"):
        io.pack({"input_ids": ids})


def test_inputs_of_different_shapes_pack_flat_unless_an_axis_is_named():
    io = ModelIO((InputSpec("x", "float32", (3, 8, 8)), InputSpec("t", "int64", ())))
    assert io.flat and io.sample_shape() == (193,)
    with pytest.raises(SpecError, match="differ in shape or dtype") as e:
        ModelIO((InputSpec("x", "float32", (3, 8, 8)), InputSpec("ids", "int64", ("sequence",))))
    assert "fixed shape" in e.value.hint


def test_unknown_axis_size_and_dtype_are_spec_errors():
    with pytest.raises(SpecError, match="axis 'sequence'"):
        ModelIO((InputSpec("ids", "int64", ("sequence",)),)).input_shape()
    with pytest.raises(SpecError, match="dtype"):
        ModelIO((InputSpec("ids", "int8", (4,)),))


@pytest.mark.parametrize("out, key, want", [
    (torch.ones(2), None, torch.ones(2)),
    ((torch.zeros(1), torch.ones(3)), 1, torch.ones(3)),
    ({"a": torch.zeros(1), "b": torch.ones(2)}, "b", torch.ones(2)),
    ({"a": torch.zeros(1), "b": torch.ones(2)}, 1, torch.ones(2)),
])
def test_select_output_by_index_key_or_none(out, key, want):
    assert torch.equal(select_output(out, OutputSpec(key)), want)


def test_select_output_names_what_exists():
    with pytest.raises(SpecError, match="no tensor output 'logits'") as e:
        select_output({"hidden": torch.ones(1), "note": "x"}, OutputSpec("logits"))
    assert "hidden" in e.value.hint and "note" not in e.value.hint
    with pytest.raises(SpecError, match="not one tensor"):
        select_output((torch.ones(1),), OutputSpec(None))


def test_hf_model_output_attribute_is_selected():
    transformers = pytest.importorskip("transformers")
    out = transformers.modeling_outputs.BaseModelOutput(last_hidden_state=torch.ones(1, 2, 3))
    assert select_output(out, OutputSpec("last_hidden_state")).shape == (1, 2, 3)


def test_trim_cuts_trailing_padding_only():
    model = ContractModel(TwoTokens(), _io(6))
    x = _io(6).pack({"input_ids": torch.ones(2, 6, dtype=torch.long),
                     "attention_mask": torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]])})
    assert model.trim(x).shape == (2, 2, 3)
    with torch.no_grad():  # the unpadded positions compute the same
        assert torch.allclose(model(x)[:, :3], model(model.trim(x)))
    image = ContractModel(nn.Flatten(), ModelIO.single((3, 4, 4)))
    z = torch.zeros(2, 3, 4, 4)
    assert image.trim(z) is z


def test_export_keeps_input_names_dynamic_axes_and_output_name(tmp_path):
    torch.manual_seed(0)
    model = ContractModel(TwoTokens(), _io(6, "pooled")).eval()
    rec = export_onnx(model, model.io.sample_shape(), tmp_path / "m.onnx", ExportSettings())
    g = onnx.load(str(tmp_path / "m.onnx")).graph
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in g.input}
    assert dims == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert [i.type.tensor_type.elem_type for i in g.input] == [onnx.TensorProto.INT64] * 2
    assert [o.name for o in g.output] == ["pooled"]
    assert rec["onnx_bytes"] > 0
    ids = torch.randint(0, 50, (3, 9))  # another batch and sequence length than exported
    mask = (torch.rand(3, 9) > 0.3).long()
    packed = model.io.pack({"input_ids": ids, "attention_mask": mask})
    with OrtRunner(tmp_path / "m.onnx") as r:
        assert r.input_names == ["input_ids", "attention_mask"]
        got = r.run(packed.numpy())
    with torch.no_grad():
        want = model(packed).numpy()
    assert np.allclose(got, want, atol=1e-5)
