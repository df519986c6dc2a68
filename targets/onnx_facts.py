"""What a builder or runtime needs to know about an ONNX file before loading it: its first input
(name, dims, dtype), its first output, FP16 tensors and Q/DQ nodes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from core.errors import ConfigError


@dataclass(frozen=True)
class OnnxFacts:
    """What the builder needs to know about an ONNX file before TensorRT sees it."""

    input_name: str
    input_dims: tuple[int | str, ...]  # str = symbolic (dim_param), 0/-1 = unknown
    has_fp16: bool
    has_qdq: bool
    input_dtype: str = "float32"  # numpy name of the input's element type (raw input files are written in it)
    output_name: str | None = None  # the first graph output

    @property
    def dynamic_batch(self) -> bool:
        d = self.input_dims[0] if self.input_dims else 1
        return isinstance(d, str) or d <= 0


def onnx_facts(path: Path) -> OnnxFacts:
    """First graph input (name, dims, element type), first output, whether any tensor is FP16, whether it has
    Q/DQ nodes."""
    import onnx
    from onnx import helper

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    if not inputs:
        raise ConfigError(f"{Path(path).name} has no graph input", hint="export the model with an input")
    first = inputs[0]
    dims = tuple(d.dim_param if d.dim_param else d.dim_value for d in first.type.tensor_type.shape.dim)
    fp16 = onnx.TensorProto.FLOAT16
    has_fp16 = any(i.type.tensor_type.elem_type == fp16 for i in inputs) or any(
        t.data_type == fp16 for t in m.graph.initializer)
    has_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in m.graph.node)
    dtype = helper.tensor_dtype_to_np_dtype(first.type.tensor_type.elem_type).name
    output = m.graph.output[0].name if m.graph.output else None
    return OnnxFacts(first.name, dims, has_fp16, has_qdq, dtype, output)
