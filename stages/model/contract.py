"""The model contract: what a model takes in and which of its outputs the pipeline reads.

A model declares its **inputs** (:class:`InputSpec`: name, dtype, the shape of one sample with
named dynamic axes such as ``sequence``) and its **output** (:class:`OutputSpec`: the tensor
itself, an index into a tuple, or a key of a dict / Hugging Face ``ModelOutput``).

Inside the pipeline every sample is **one tensor** (the *packed* sample): with one input it is
that input; with several of one shape and dtype (token ids, attention mask, token type ids) they
are **stacked** on a new axis 1, ``x[:, i]`` being input ``i``; with several of different shapes or
dtypes (a diffusion U-Net's noisy image and timestep) each sample's inputs are **flattened and
concatenated** into one float32 vector, in the declared order (*flat* packing; shapes must be fixed,
and integer inputs are carried exactly as floats below 2**24). So calibration batches
``(x, y)``, the criteria's hooks, Torch-Pruning's tracer, distillation and the timing workers
keep one currency. The packing stops at the boundaries a user sees: the exported ONNX has the
model's own named inputs (dynamic ``batch`` and named axes kept) and the chosen output under its
own name, and the ONNX Runtime runner splits a packed batch into those inputs.

Flat packing cannot carry a named dynamic axis (its offsets would move): inputs of different
shapes with a named axis (an image and a variable-length text, say) are refused up front
(:class:`ModelIO` raises) with that reason; it is written in ``docs/models.md``.

:class:`ContractModel` is the module the pipeline works on: ``forward(x_packed)`` unpacks, casts
each input to its declared dtype (a float zero batch from a shape-only caller becomes integer
zeros), calls the user's model by keyword and returns the selected output. :class:`ExportView`
is the same model with the unpacked signature, for the exporter.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from core.errors import SpecError

DTYPES = {"float32": torch.float32, "int64": torch.int64, "int32": torch.int32, "bool": torch.bool}


@dataclass(frozen=True)
class InputSpec:
    """One model input.

    Attributes:
        name: The keyword the model's ``forward`` takes and the ONNX input's name.
        dtype: One of :data:`DTYPES`.
        shape: One sample's shape without the batch axis; a string is a named dynamic axis
            (``"sequence"``) whose size comes from the data (``ModelIO.sizes``).
    """

    name: str
    dtype: str = "float32"
    shape: tuple[int | str, ...] = ()

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


@dataclass(frozen=True)
class OutputSpec:
    """Which output the evaluator reads: ``key`` None (the model returns one tensor), an ``int``
    (index into a tuple or list) or a ``str`` (key of a dict or attribute of a ``ModelOutput``).
    ``name`` is the ONNX output's name."""

    key: int | str | None = None
    name: str = "output"
    # the output's named dynamic axes after the batch axis (None: fixed), e.g. (None, "anchors") for a YOLO
    # detector's [batch, 84, anchors]; not given: the input's named axes where the output has them (token states)
    axes: tuple[str | None, ...] | None = None


@dataclass(frozen=True)
class ModelIO:
    """A model's inputs and its chosen output, plus the sizes of its named axes.

    Args:
        inputs: At least one input; several must share shape and dtype (see the module doc).
        output: The output read.
        sizes: Size of each named axis for the concrete sample (e.g. ``{"sequence": 128}``).
    """

    inputs: tuple[InputSpec, ...]
    output: OutputSpec = OutputSpec()
    sizes: Mapping[str, int] | None = None

    def __post_init__(self) -> None:
        if not self.inputs:
            raise SpecError("a model needs at least one input", hint="declare the model's inputs")
        names = [i.name for i in self.inputs]
        if len(set(names)) != len(names):
            raise SpecError(f"model inputs repeat a name: {names}", hint="give every input its own name")
        for i in self.inputs:
            if i.dtype not in DTYPES:
                raise SpecError(f"input '{i.name}' has dtype '{i.dtype}'", hint=f"use one of {', '.join(DTYPES)}")
        named = [i.name for i in self.inputs if any(isinstance(d, str) for d in i.shape)]
        if self.flat and named:
            raise SpecError(f"model inputs differ in shape or dtype and {', '.join(named)} has a named dynamic axis",
                            hint="inputs of different shapes are packed flat and need fixed shapes; give "
                                 "every input a fixed shape, or wrap the model so its inputs share one shape")

    @classmethod
    def single(cls, shape: Sequence[int], name: str = "input", output: str = "output") -> ModelIO:
        """The classic contract: one float tensor in, one tensor out."""
        return cls((InputSpec(name, "float32", tuple(int(s) for s in shape)),), OutputSpec(None, output))

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def packed(self) -> bool:
        return len(self.inputs) > 1

    @property
    def flat(self) -> bool:
        """Several inputs of different shapes or dtypes: each sample's inputs flattened and concatenated."""
        first = self.inputs[0]
        return any((i.shape, i.dtype) != (first.shape, first.dtype) for i in self.inputs[1:])

    @property
    def dtype(self) -> torch.dtype:
        """The packed tensor's dtype (float32 when packed flat)."""
        return torch.float32 if self.flat else self.inputs[0].torch_dtype

    @property
    def integer(self) -> bool:
        return not self.dtype.is_floating_point

    def input_shape(self) -> tuple[int, ...]:
        """One input's concrete sample shape (named axes resolved by ``sizes``)."""
        sizes = dict(self.sizes or {})
        out = []
        for d in self.inputs[0].shape:
            if isinstance(d, str):
                if d not in sizes:
                    raise SpecError(f"the size of axis '{d}' of input '{self.inputs[0].name}' is unknown",
                                    hint="pass --input-shape (for token inputs: the sequence length, e.g. 128)")
                d = sizes[d]
            out.append(int(d))
        return tuple(out)

    def sample_shape(self) -> tuple[int, ...]:
        """The packed sample's shape: the input's, with the number of inputs in front when stacked; the total
        element count when flat."""
        if self.flat:
            return (sum(math.prod(i.shape) for i in self.inputs),)
        shape = self.input_shape()
        return (len(self.inputs), *shape) if self.packed else shape

    def shape_of(self, spec: InputSpec) -> tuple[int, ...]:
        """One input's concrete sample shape."""
        return tuple(int(d) for d in spec.shape) if self.flat else self.input_shape()

    def unpack(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """A packed batch as the model's keyword inputs, each cast to its declared dtype."""
        if not self.packed:
            return {self.inputs[0].name: x.to(self.inputs[0].torch_dtype)}
        if self.flat:
            parts = x.reshape(len(x), -1).split([math.prod(i.shape) for i in self.inputs], dim=1)
            return {spec.name: part.reshape(len(x), *self.shape_of(spec)).to(spec.torch_dtype)
                    for spec, part in zip(self.inputs, parts)}
        return {spec.name: x[:, i].to(spec.torch_dtype) for i, spec in enumerate(self.inputs)}

    def pack(self, tensors: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The model's inputs (each ``[B, *shape]``) as one packed batch."""
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise SpecError(f"inputs {missing} are missing", hint=f"the model takes {', '.join(self.names)}")
        if not self.packed:
            return tensors[self.names[0]].to(self.dtype)
        if self.flat:
            return torch.cat([tensors[n].reshape(len(tensors[n]), -1).to(torch.float32) for n in self.names], dim=1)
        return torch.stack([tensors[n].to(self.dtype) for n in self.names], dim=1)

    def example(self, batch: int = 1) -> tuple[torch.Tensor, ...]:
        """Typed example inputs, unpacked (the exporter's arguments): ones for integers, zeros for floats."""
        return tuple((torch.zeros if i.torch_dtype.is_floating_point else torch.ones)((batch, *self.shape_of(i)),
                                                                                    dtype=i.torch_dtype)
                     for i in self.inputs)

    def dynamic_axes(self, output_rank: int) -> dict[str, dict[int, str]]:
        """The exporter's dynamic axes: ``batch`` on every input and on the output, and each named axis
        of the inputs. The output keeps a named axis where it has the input's size at the same place."""
        axes: dict[str, dict[int, str]] = {}
        for spec in self.inputs:
            axes[spec.name] = {0: "batch", **{k + 1: d for k, d in enumerate(spec.shape) if isinstance(d, str)}}
        out = {0: "batch"}
        if self.output.axes is not None:
            out.update({k + 1: d for k, d in enumerate(self.output.axes) if d and k + 1 < output_rank})
        else:
            for k, d in enumerate(self.inputs[0].shape):
                if isinstance(d, str) and k + 1 < output_rank:
                    out[k + 1] = d
        axes[self.output.name] = out
        return axes

    def to_json(self) -> dict:
        return {"inputs": [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)} for i in self.inputs],
                "output": {"key": self.output.key, "name": self.output.name}, "sizes": dict(self.sizes or {})}


def select_output(out: object, spec: OutputSpec) -> torch.Tensor:
    """The chosen output of a forward pass; a missing key is a SpecError listing what exists."""
    key = spec.key
    if key is None:
        if isinstance(out, torch.Tensor):
            return out
        raise SpecError(f"the model returns {type(out).__name__}, not one tensor",
                        hint=f"choose the output with --output ({_available(out)})")
    try:
        if isinstance(key, int):
            if isinstance(out, Mapping):
                val = list(out.values())[key]
            else:
                val = out[key]
        elif isinstance(out, Mapping):
            val = out[key]
        else:
            val = getattr(out, key)
    except (KeyError, IndexError, AttributeError, TypeError):
        val = None
    if not isinstance(val, torch.Tensor):
        raise SpecError(f"the model has no tensor output '{key}'", hint=f"choose one of: {_available(out)}")
    return val


def _available(out: object) -> str:
    if isinstance(out, Mapping):  # dicts and Hugging Face ModelOutputs (which drop None fields)
        keys = [k for k, v in out.items() if isinstance(v, torch.Tensor)]
        return ", ".join(keys) or "no tensor outputs"
    if isinstance(out, (tuple, list)):
        return ", ".join(str(i) for i, v in enumerate(out) if isinstance(v, torch.Tensor)) or "no tensor outputs"
    return "a tensor"


class ContractModel(nn.Module):
    """The user's model behind the packed contract: ``forward(x) -> selected output``.

    Args:
        model: The user's module (kept as ``self.model``; its parameter names gain ``model.``).
        io: Its inputs and chosen output.
        post: Optional module applied to the selected output with the keyword inputs
            (``post(output, **inputs)``), e.g. a sentence-embedding pooling.
    """

    def __init__(self, model: nn.Module, io: ModelIO, post: nn.Module | None = None) -> None:
        super().__init__()
        self.model = model
        self.io = io
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.call(self.io.unpack(x))

    def trim(self, x: torch.Tensor) -> torch.Tensor:
        """A packed token batch cut after its last unpadded position (``attention_mask`` 1 somewhere in the
        batch); other batches unchanged. Positions after it change nothing the model computes for the
        unpadded ones (they are masked out), so training on the cut batch is training on the same samples."""
        if not (self.io.integer and self.io.packed and "attention_mask" in self.io.names) or x.dim() < 3:
            return x
        mask = x[:, self.io.names.index("attention_mask")]
        used = mask.ne(0).any(0).nonzero()
        return x[..., :int(used.max()) + 1] if len(used) else x

    def call(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = select_output(self.model(**inputs), self.io.output)
        return self.post(out, **inputs) if self.post is not None else out


class ExportView(nn.Module):
    """A :class:`ContractModel` with the model's own positional inputs (what the exporter traces)."""

    def __init__(self, contract: ContractModel) -> None:
        super().__init__()
        self.contract = contract

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.contract.call(dict(zip(self.contract.io.names, inputs)))


def io_of(model: nn.Module, sample_shape: Sequence[int]) -> ModelIO:
    """The contract of a pipeline model: a :class:`ContractModel`'s own, else one float tensor."""
    return model.io if isinstance(model, ContractModel) else ModelIO.single(sample_shape)
