"""Stage ``export``: PyTorch -> one ONNX file, checked, cleaned, and gated on parity.

1. ``torch.onnx.export`` with a pinned opset and a dynamic batch axis, into a single file. A model
   with a declared contract (:class:`stages.model.contract.ContractModel`: token models, ``hf:``)
   is exported with its own named inputs (``input_ids``, ``attention_mask``), their named dynamic
   axes (``sequence``) and its chosen output under its name (``sentence_embedding``, ``logits``):
   the ONNX a user's runtime code feeds directly; the pipeline's packing never shows.
2. ``onnx.checker`` (full check, with shape inference).
3. onnx-graphsurgeon sanitize: fold constants, cleanup, toposort, shape inference, repeated
   until the node count stops shrinking (the loop of TensorRT's efficientdet sample).
4. Parity gate: ONNX Runtime vs PyTorch on calibration inputs through the one validator
   (:mod:`core.parity`: names, shapes, then values; an element fails when
   ``|ort - torch| > atol + rtol * |torch|``). Any failure raises a ``ParityError`` listing every
   output's diffs; nothing is "exported with a warning".

Exporter choice: the TorchScript ("legacy") exporter is the default. On this CPU it exports the
default ResNet-20 in ~0.3 s and byte-for-byte reproducibly; the torch.export ("dynamo") exporter
takes ~8.5 s for the same model, which matters when the tuner exports a dozen candidates. Both
work with torch 2.14.1; pick ``export.exporter: dynamo`` for models the tracer cannot handle.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from core.errors import StageError
from core.io import file_mode
from core.parity import Tolerance, compare_outputs
from stages.model.contract import ContractModel, ExportView, ModelIO

INPUT_NAME = "input"
OUTPUT_NAME = "output"


@dataclass(frozen=True)
class ExportSettings:
    opset: int = 18
    exporter: str = "legacy"
    atol: float = 1e-4
    rtol: float = 1e-3


def export_onnx(model: nn.Module, sample_shape: tuple[int, ...], path: Path, settings: ExportSettings) -> dict:
    """Export, check and sanitize ``model`` into ``path`` (written atomically). Returns a record."""
    model = model.eval()
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".onnx", dir=path.parent)  # a leftover is found
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if isinstance(model, ContractModel):
            out_shape, dynamic = _contract_export(model, tmp, settings)
        else:
            out_shape, dynamic = _torch_export(model, torch.zeros((1, *sample_shape)), tmp, settings)
        nodes_before = len(onnx.load(str(tmp)).graph.node)
        graph = sanitize(onnx.load(str(tmp)))
        pin_output_dims(graph, out_shape, dynamic)
        add_metadata(graph, model)
        try:
            onnx.checker.check_model(graph, full_check=True)
        except onnx.checker.ValidationError as e:
            raise StageError(f"exported ONNX fails onnx.checker: {str(e).splitlines()[0]}",
                             hint="try export.exporter: dynamo or another opset") from None
        onnx.save(graph, str(tmp))
        with contextlib.suppress(OSError):  # a file system without modes
            os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return {"opset": settings.opset, "exporter": settings.exporter, "nodes_before_sanitize": nodes_before,
            "nodes": len(graph.graph.node), "onnx_bytes": path.stat().st_size}


def _torch_export(model: nn.Module, x: torch.Tensor, path: Path, s: ExportSettings) -> tuple[tuple | None, set]:
    """One float input; returns (the output's shape, its dynamic axes) for :func:`pin_output_dims`."""
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    _export(model, (x,), path, s, [INPUT_NAME], [OUTPUT_NAME], axes)
    with torch.no_grad():
        out = model(x)
    return (tuple(out.shape) if isinstance(out, torch.Tensor) else None), set(axes[OUTPUT_NAME])


def _contract_export(model: ContractModel, path: Path, s: ExportSettings) -> tuple[tuple, set]:
    """A contracted model through :class:`ExportView`: its named inputs, named axes and output name; returns (the
    output's shape, its dynamic axes)."""
    io: ModelIO = model.io
    args = io.example(2)
    with torch.no_grad():
        shape = tuple(model.call(dict(zip(io.names, args))).shape)
    axes = io.dynamic_axes(len(shape))
    _export(ExportView(model).eval(), args, path, s, io.names, [io.output.name], axes)
    return shape, set(axes[io.output.name])


def _export(module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, s: ExportSettings, inputs: list[str],
            outputs: list[str], axes: dict[str, dict[int, str]]) -> None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if s.exporter == "dynamo":
                dims: dict[str, torch.export.Dim] = {}
                shapes = [{k: dims.setdefault(v, torch.export.Dim(v, min=1, max=4096)) for k, v in axes[n].items()}
                          for n in inputs]
                params = _forward_arg_names(module)
                dynamic = ({params[0]: tuple(shapes)} if params and params[0] == "inputs" and len(params) == 1
                           else dict(zip(params, shapes)))
                torch.onnx.export(module, args, str(path), dynamo=True, opset_version=s.opset, input_names=inputs,
                                  output_names=outputs, dynamic_shapes=dynamic, external_data=False, verbose=False)
            else:
                torch.onnx.export(module, args, str(path), dynamo=False, opset_version=s.opset, input_names=inputs,
                                  output_names=outputs, dynamic_axes=axes, do_constant_folding=True)
    except Exception as e:  # noqa: BLE001 - exporter failures come in many types
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        other = "dynamo" if s.exporter == "legacy" else "legacy"
        raise StageError(f"torch.onnx.export ({s.exporter}) failed: {msg}",
                         hint=f"try export.exporter: {other}, or export.opset 17") from None


def _forward_arg_names(model: nn.Module) -> list[str]:
    import inspect

    return [p for p in inspect.signature(model.forward).parameters if p != "self"]


def pin_output_dims(graph: onnx.ModelProto, shape: tuple[int, ...] | None, dynamic: set[int]) -> None:
    """Output axes the exporter left as generated symbols (``Concatoutput0_dim_1``) get the size PyTorch computed;
    the axes it was told are dynamic (``batch``, the contract's named ones) stay symbolic."""
    if shape is None or len(graph.graph.output) != 1:
        return
    dims = graph.graph.output[0].type.tensor_type.shape.dim
    if len(dims) != len(shape):
        return
    for k, d in enumerate(dims):
        if k not in dynamic and d.HasField("dim_param"):
            d.dim_value = int(shape[k])


def add_metadata(graph: onnx.ModelProto, model: nn.Module) -> None:
    """A model adapter's ``onnx_metadata`` (e.g. Ultralytics' stride, task, names, imgsz, which its ``YOLO()``
    loader reads back) as the ONNX file's ``metadata_props``, each value as ``str(value)`` like Ultralytics writes."""
    for m in model.modules():
        for key, value in (getattr(m, "onnx_metadata", None) or {}).items():
            prop = graph.metadata_props.add()
            prop.key, prop.value = str(key), str(value)


def sanitize(model: onnx.ModelProto, max_passes: int = 5) -> onnx.ModelProto:
    """onnx-graphsurgeon cleanup loop: fold constants, remove dead nodes, toposort, infer shapes."""
    import onnx_graphsurgeon as gs

    for _ in range(max_passes):
        before = len(model.graph.node)
        graph = gs.import_onnx(model)
        graph.fold_constants().cleanup().toposort()
        model = gs.export_onnx(graph)
        model = onnx.shape_inference.infer_shapes(model)
        if len(model.graph.node) >= before:
            break
    return model


def check_parity(model: nn.Module, runner, inputs: torch.Tensor, atol: float, rtol: float) -> dict:
    """Compare ONNX Runtime (``runner``) with PyTorch on ``inputs`` (:func:`core.parity.compare_outputs`).

    Returns per-output ``max_abs``, ``max_rel``, ``median_abs``, ``fail_frac``, ``atol``, ``rtol``;
    raises :class:`~core.errors.ShapeMismatch` / :class:`~core.errors.ToleranceExceeded` (both
    ``ParityError``) on a breach.
    """
    with torch.no_grad():
        ref = model.eval()(inputs)
    refs = [ref] if isinstance(ref, torch.Tensor) else list(ref)
    outs = runner.run_all(inputs.numpy())
    names = getattr(runner, "output_names", [f"output{i}" for i in range(len(outs))])
    return compare_outputs([r.detach().numpy() for r in refs], outs, names, Tolerance(atol, rtol),
                           hint="inspect the graph with `pipeline measure`; loosen export.atol/rtol only if the "
                                "diff is expected")
