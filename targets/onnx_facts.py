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


MAC_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


def onnx_params_macs(model, sample: tuple[int, ...]) -> tuple[int, int | None]:
    """Parameters (elements of floating-point initializers) and multiply-accumulates of one sample, counted from
    the ONNX graph ``model`` (an ``onnx.ModelProto``, loaded without external data): Conv, ConvTranspose, Gemm and MatMul after shape inference with batch 1 and ``sample`` as the
    first input's other dims (a multi-input file: every input of that shape). ``None`` MACs when the shapes
    cannot be inferred. Elementwise ops, norms and softmax are not counted (as in the pipeline's own count)."""
    import math

    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)  # the input dims are fixed below for shape inference: the caller's model stays as it is
    floats = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE}
    params = sum(math.prod(t.dims) for t in m.graph.initializer if t.data_type in floats)
    inits = {i.name for i in m.graph.initializer}
    packed = len([i for i in m.graph.input if i.name not in inits]) > 1
    dims = (1, *(sample[1:] if packed else sample))
    for inp in m.graph.input:
        if inp.name in inits:
            continue
        shape = inp.type.tensor_type.shape
        if len(shape.dim) == len(dims):
            for d, v in zip(shape.dim, dims):
                d.ClearField("dim_param")
                d.dim_value = int(v)
    try:
        inferred = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:  # noqa: BLE001 - onnx raises several types for graphs it cannot infer
        return params, None
    shapes = {vi.name: tuple(d.dim_value for d in vi.type.tensor_type.shape.dim)
              for vi in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    shapes.update({t.name: tuple(t.dims) for t in m.graph.initializer})
    macs = 0
    for node in inferred.graph.node:
        if node.op_type not in MAC_OPS:
            continue
        a, b = (shapes.get(x) for x in node.input[:2])
        out = shapes.get(node.output[0])
        if not a or not b or not out or 0 in a + b + out:
            return params, None
        if node.op_type == "Conv":
            macs += math.prod(out) * math.prod(b[1:])
        elif node.op_type == "ConvTranspose":
            macs += math.prod(a) * math.prod(b[1:])
        elif node.op_type == "Gemm":
            trans_a = next((x.i for x in node.attribute if x.name == "transA"), 0)
            macs += math.prod(out) * (a[0] if trans_a else a[-1])
        else:
            macs += math.prod(out) * a[-1]
    return params, macs
