"""Depth pruning: replace whole residual blocks by identity.

A block is *removable* when replacing it by ``nn.Identity()`` keeps every shape: its output has
the shape of its input, and it has an identity shortcut (``y = x + f(x)``, perhaps followed by an
activation), so dropping it leaves the shortcut's path. Blocks are found by probing the model
once on an example input (forward hooks record each module's input and output shapes), then:

- **Known classes** (matched by module path and class name, no import needed): torchvision
  ``resnet.BasicBlock`` / ``resnet.Bottleneck`` and timm's ``resnet.BasicBlock`` /
  ``resnet.Bottleneck`` without ``downsample``; the embedded CIFAR ResNet's ``BasicBlock``
  (``stages/load/cifar_resnet.py``) with an ``nn.Identity`` shortcut; torchvision
  MobileNetV2 / MobileNetV3 ``InvertedResidual`` with ``use_res_connect``.
- **Generic** (any other module with children): its forward is traced with ``torch.fx`` and it
  counts as a residual block when its output is on the *residual stream* of its input. The
  stream starts at the input; an ``add`` of a stream value and a branch that itself depends on
  the input stays on the stream, and so do elementwise activations (ReLU, GELU, SiLU, ...),
  ``nn.Identity`` and ``nn.Dropout``. So ``relu(x + f(x))`` (post-activation ResNet),
  ``x + f(x)`` (pre-activation, MobileNet) and ``h = x + f(x); h + g(h)`` (a transformer block)
  are found; ``layers(x + pos_embed)`` (an encoder) or ``x + self.bias`` are not. A module whose
  forward does not trace (data-dependent control flow) is not found generically; known classes
  do not need tracing.

Every candidate must also have been called exactly once, with a tensor as its first argument (the
stream; further positional arguments are conditioning, such as a U-Net block's timestep embedding,
and a dropped block ignores them: :class:`Skip`), and return a tensor of that argument's shape. Nothing checks that the residual branch is nonzero: a block whose
branch is already zero (e.g. a zero-initialised last BN) is removable and, scored, comes first.

**Post-activation blocks.** torchvision's and the CIFAR ResNet's ``BasicBlock`` compute
``relu(f(x) + x)``. Its input ``x`` is itself the output of a ReLU (the stem's or the previous
block's), so ``x >= 0`` and removing only the branch gives ``relu(0 + x) = x``: replacing the
whole block by identity is *exactly* removing its residual branch (tested numerically). For a
generic block whose input can be negative, identity drops the trailing activation too.
"""

from __future__ import annotations

import copy
import inspect
import operator
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from core.errors import ConfigError

# (module path, class name) -> "has an identity shortcut" test
KNOWN_BLOCKS: dict[tuple[str, str], Any] = {
    ("torchvision.models.resnet", "BasicBlock"): lambda m: getattr(m, "downsample", None) is None,
    ("torchvision.models.resnet", "Bottleneck"): lambda m: getattr(m, "downsample", None) is None,
    ("timm.models.resnet", "BasicBlock"): lambda m: getattr(m, "downsample", None) is None,
    ("timm.models.resnet", "Bottleneck"): lambda m: getattr(m, "downsample", None) is None,
    ("torchvision.models.mobilenetv2", "InvertedResidual"): lambda m: bool(getattr(m, "use_res_connect", False)),
    ("torchvision.models.mobilenetv3", "InvertedResidual"): lambda m: bool(getattr(m, "use_res_connect", False)),
    ("stages.load.cifar_resnet", "BasicBlock"): lambda m: isinstance(getattr(m, "shortcut", None), nn.Identity),
}

_ADDS = {operator.add, operator.iadd, torch.add}
_ACT_FUNCS = {torch.relu, torch.relu_, nn.functional.relu, nn.functional.relu6, nn.functional.gelu,
              nn.functional.silu, nn.functional.hardswish, nn.functional.leaky_relu, nn.functional.elu,
              torch.sigmoid, torch.tanh, nn.functional.dropout}
_ACT_METHODS = {"relu", "relu_", "sigmoid", "tanh", "clone", "contiguous"}
_PASS_MODULES = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Identity,
                 nn.Dropout, nn.Sigmoid, nn.Tanh)


def _known(module: nn.Module) -> bool | None:
    """True/False for a known block class (has an identity shortcut or not); None if not known."""
    test = KNOWN_BLOCKS.get((type(module).__module__, type(module).__name__))
    return None if test is None else bool(test(module))


def _probe(model: nn.Module, example_input: torch.Tensor) -> dict[str, tuple[int, bool]]:
    """Per module name: (calls, every call maps one tensor to a tensor of the same shape)."""
    names = {m: n for n, m in model.named_modules()}
    seen: dict[str, tuple[int, bool]] = {}

    def hook(mod, args, kwargs, out):
        name = names[mod]
        ok = (len(args) >= 1 and isinstance(args[0], torch.Tensor) and isinstance(out, torch.Tensor)
              and not any(isinstance(v, torch.Tensor) for v in kwargs.values())
              and tuple(out.shape) == tuple(args[0].shape) and out.dtype == args[0].dtype)
        calls, prev = seen.get(name, (0, True))
        seen[name] = (calls + 1, prev and ok)

    hooks = [m.register_forward_hook(hook, with_kwargs=True) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    return seen


def _is_generic_residual(module: nn.Module) -> bool:
    """Whether ``module``'s traced forward returns a value on its input's residual stream."""
    from torch import fx

    try:
        params = list(inspect.signature(module.forward).parameters.values())
        concrete = {p.name: p.default for p in params[1:] if p.default is not inspect.Parameter.empty}
        gm = fx.symbolic_trace(module, concrete_args=concrete or None)
    except Exception:  # noqa: BLE001 - any trace failure means "not detectable generically"
        return False
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return False
    x = placeholders[0]
    depends: dict[fx.Node, bool] = {}  # node -> depends on x
    stream: set[fx.Node] = {x}
    added = False
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        inputs = n.all_input_nodes
        depends[n] = n is x or any(depends.get(i, False) for i in inputs)
        if n.op == "output":
            out = n.args[0]
            return added and isinstance(out, fx.Node) and out in stream and out is not x
        if n.op == "call_function" and n.target in _ADDS and len(n.args) >= 2:
            a, b = n.args[0], n.args[1]
            for s, other in ((a, b), (b, a)):
                if s in stream and isinstance(other, fx.Node) and depends.get(other, False) and other not in stream:
                    stream.add(n)
                    added = True
        elif n.args and isinstance(n.args[0], fx.Node) and n.args[0] in stream and (
                (n.op == "call_function" and n.target in _ACT_FUNCS)
                or (n.op == "call_method" and n.target in _ACT_METHODS)
                or (n.op == "call_module" and isinstance(mods.get(str(n.target)), _PASS_MODULES))):
            stream.add(n)
    return False


def removable_blocks(model: nn.Module, example_input: torch.Tensor, generic: bool = True) -> list[str]:
    """Names of the residual blocks of ``model`` that identity can replace, in execution order.

    Args:
        model: The model (not modified; run once in eval mode on ``example_input``).
        example_input: One batch.
        generic: Also detect blocks of unknown classes by tracing (see the module docstring).
    """
    seen = _probe(model, example_input)  # insertion order = first-call order
    modules = dict(model.named_modules())
    out = []
    for name, (calls, shape_ok) in seen.items():
        m = modules[name]
        if calls != 1 or not shape_ok or isinstance(m, nn.Identity):
            continue
        known = _known(m)
        if known is None:
            known = generic and any(True for _ in m.children()) and not isinstance(
                m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) and _is_generic_residual(m)
        if known:
            out.append(name)
    return out


class Skip(nn.Identity):
    """What a dropped block becomes: its first input, whatever else it is called with (a U-Net block's
    timestep embedding)."""

    def forward(self, x: torch.Tensor, *args: object, **kwargs: object) -> torch.Tensor:
        return x


def drop_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A deep copy of ``model`` with the named blocks replaced by :class:`Skip` (an ``nn.Identity``).

    The input model is never modified. A block that is already an ``nn.Identity`` stays one, and a
    block inside another dropped block goes with it, so applying the same names twice is harmless.
    Shapes are not checked here (no input); :func:`stages.prune.plan.apply_plan` runs a forward pass.
    """
    out = copy.deepcopy(model)
    dropped: list[str] = []
    for name in sorted(dict.fromkeys(names), key=lambda n: (n.count("."), n)):
        if any(name.startswith(d + ".") for d in dropped):
            continue
        if not name:
            raise ConfigError("cannot drop the whole model as a block", hint="name a residual block, e.g. layer1.1")
        try:
            block = out.get_submodule(name)
        except AttributeError:
            raise ConfigError(f"no module named {name!r} to drop", hint="use names from removable_blocks(model, x); "
                              "the plan was made for a different architecture") from None
        if not isinstance(block, nn.Identity):
            parent_name, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent_name) if parent_name else out, child, Skip())
        dropped.append(name)
    return out
