"""Export stage: single-file ONNX, dynamic batch, graphsurgeon cleanup, and a parity gate that fails closed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from core.errors import ParityError, StageError
from stages.export import ExportSettings, check_parity, export_onnx, sanitize
from stages.load.cifar_resnet import CifarResNet
from targets.ort.runner import OrtRunner


@pytest.fixture(scope="module")
def small():
    torch.manual_seed(0)
    return CifarResNet(depth=8, width=8, in_channels=1).eval()


def test_export_is_single_file_checked_and_has_dynamic_batch(small, tmp_path):
    p = tmp_path / "m.onnx"
    rec = export_onnx(small, (1, 16, 16), p, ExportSettings(opset=18))
    assert list(tmp_path.iterdir()) == [p]  # single file, no leftovers
    m = onnx.load(str(p))
    onnx.checker.check_model(m, full_check=True)
    assert m.opset_import[0].version == 18 and rec["onnx_bytes"] == p.stat().st_size
    dim0 = m.graph.input[0].type.tensor_type.shape.dim[0]
    assert dim0.dim_param  # symbolic batch
    x = torch.randn(3, 1, 16, 16)
    with OrtRunner(p) as r:
        out = r.run(x.numpy())
    assert out.shape == (3, 10)
    np.testing.assert_allclose(out, small(x).detach().numpy(), atol=1e-4, rtol=1e-3)


def test_export_is_byte_reproducible(small, tmp_path):
    export_onnx(small, (1, 16, 16), tmp_path / "a.onnx", ExportSettings())
    export_onnx(small, (1, 16, 16), tmp_path / "b.onnx", ExportSettings())
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()


def test_dynamo_exporter_also_works(small, tmp_path):
    p = tmp_path / "d.onnx"
    export_onnx(small, (1, 16, 16), p, ExportSettings(exporter="dynamo"))
    x = torch.randn(2, 1, 16, 16)
    with OrtRunner(p) as r:
        rec = check_parity(small, r, x, atol=1e-4, rtol=1e-3)
    assert rec["output"]["max_abs"] < 1e-4


def test_parity_passes_and_reports_per_output(small, tmp_path):
    p = tmp_path / "m.onnx"
    export_onnx(small, (1, 16, 16), p, ExportSettings())
    with OrtRunner(p) as r:
        rec = check_parity(small, r, torch.randn(4, 1, 16, 16), atol=1e-4, rtol=1e-3)
    assert set(rec) == {"output"} and rec["output"]["fail_frac"] == 0.0


def test_parity_breach_fails_closed_with_every_diff(small, tmp_path):
    p = tmp_path / "m.onnx"
    export_onnx(small, (1, 16, 16), p, ExportSettings())
    m = onnx.load(str(p))
    init = max(m.graph.initializer, key=lambda t: np.prod(t.dims))
    arr = numpy_helper.to_array(init).copy()
    arr *= 1.5  # tamper with the largest weight tensor
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(m, str(p))
    with OrtRunner(p) as r, pytest.raises(ParityError) as e:
        check_parity(small, r, torch.randn(4, 1, 16, 16), atol=1e-4, rtol=1e-3)
    assert "output: max_abs" in e.value.message and "max_rel" in e.value.message


def test_sanitize_folds_constants():
    from onnx import TensorProto, helper

    a = numpy_helper.from_array(np.ones((2,), np.float32), "a")
    b = numpy_helper.from_array(np.ones((2,), np.float32), "b")
    g = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"]), helper.make_node("Mul", ["x", "c"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], [a, b])
    out = sanitize(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]))
    assert [n.op_type for n in out.graph.node] == ["Mul"]


def test_export_failure_is_a_clear_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            return torch.linalg.svd(x).S  # no ONNX operator for SVD

    with pytest.raises(StageError, match="torch.onnx.export"):
        export_onnx(Bad(), (3, 3), tmp_path / "bad.onnx", ExportSettings())
    assert not (tmp_path / "bad.onnx").exists()
