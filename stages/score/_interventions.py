"""Batched do-interventions on channels: run a model once per intervention, many per forward pass.

An *intervention* ``do(a_c = v)`` sets channel ``c`` of a prunable group to a constant at every
*site* that carries the group's channels, and leaves every other replica of the batch alone. With
``v = 0`` this is exactly what removing structure ``c`` does to the network (before any BatchNorm
re-estimation): a zeroed BN output contributes nothing downstream, its bias included. With ``v``
the calibration mean of the channel it is a mean ablation.

Public functions:

- :func:`channel_sites`: per group, the modules whose outputs carry its channels;
- :func:`channel_means`: per site, the calibration mean of each channel;
- :func:`intervened_forward`: the model's output for ``x`` under each of many interventions;
- :class:`ReplicaRunner`: the engine underneath, for callers that need other per-replica edits
  of a module's output (SBPF's weight damage uses it).

How the batching works. Intervention ``j`` acts on replica ``j`` of ``x``; the replicas of a chunk
are stacked along the batch dimension (row ``j * b + i`` is sample ``i`` of replica ``j``), so one
forward pass serves up to ``max_batch`` rows. Two engines compute the same thing:

- ``hooks`` (always available): ``x`` is repeated once per replica and forward hooks on the sites
  edit each replica's rows.
- ``fx`` (when ``torch.fx.symbolic_trace`` can trace the model): the graph is interpreted node by
  node, and a node runs on ``b`` rows until it depends on an intervened site, on ``R * b`` rows
  after (tensors of ``b`` rows that meet a replicated one are repeated). Everything upstream of the
  first intervened site is computed once instead of once per replica, which for interventions deep
  in a network is most of the work. It assumes dim 0 is the batch in every tensor, so the first run
  for each set of active sites is checked against the ``hooks`` engine on two samples; a mismatch
  or an error makes the runner use ``hooks`` for that set of sites from then on.

The model is never modified: hooks are removed in ``finally``, the modules' train/eval flags are
restored, no parameter is written. Inference runs in eval mode and without autograd.
"""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from core.errors import ConfigError
from stages.model.graph import GroupInfo

Intervention = tuple[str, torch.Tensor] | Mapping[str, torch.Tensor]
Override = Callable[[str, nn.Module, tuple, dict, int, bool], torch.Tensor]
"""``(site name, module, args, kwargs, replicas, shared) -> output``: runs a site for ``replicas``
stacked replicas and returns its edited output of ``replicas * b`` rows. The inputs have
``replicas * b`` rows, or, when ``shared`` is true, the ``b`` rows that every replica shares (the
site is the first place the replicas differ; computing it once and expanding the output saves
the copy)."""

MAX_BATCH = 256  # default rows per forward pass


# ------------------------------------------------------------------ sites


def channel_sites(model: nn.Module, groups: Sequence[GroupInfo]) -> dict[str, list[str]]:
    """Per group id, the modules whose outputs carry the group's channels.

    A group's BatchNorm outputs if it has any, else its conv/linear outputs (the choice
    :mod:`stages.score.aap` makes). Zeroing channel ``c`` at every site of a group is removing
    structure ``c`` of that group. A group with neither gets an empty list.
    """
    modules = dict(model.named_modules())
    out: dict[str, list[str]] = {}
    for g in groups:
        norms = [n for n in g.out_layers if isinstance(modules.get(n), nn.modules.batchnorm._BatchNorm)]
        convs = [n for n in g.out_layers if isinstance(modules.get(n), (nn.modules.conv._ConvNd, nn.Linear))]
        out[g.id] = norms or convs
    return out


def channel_dim(module: nn.Module) -> int:
    """The channel dimension of a site's output: last for Linear, 1 otherwise."""
    return -1 if isinstance(module, nn.Linear) else 1


def _flat_sites(sites: Mapping[str, Sequence[str]] | Iterable[str]) -> list[str]:
    if isinstance(sites, Mapping):
        return list(dict.fromkeys(n for names in sites.values() for n in names))
    return list(dict.fromkeys(sites))


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and no autograd inside; every module's own train flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            yield
    finally:
        for m, t in flags:
            m.training = t


def max_rows(model: nn.Module, sample: torch.Tensor, budget_mb: float = 128.0, cap: int = 1024) -> int:
    """Rows per forward pass such that the largest activation of the model stays under ``budget_mb``.

    ``sample`` is one batch (any size); the largest leaf-module output per sample is measured on it.
    """
    largest = [1]

    def hook(mod, inp, out):
        if isinstance(out, torch.Tensor) and out.dim() > 0:
            largest[0] = max(largest[0], out[:1].numel() * out.element_size())

    hooks = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        with eval_mode(model):
            model(sample[:1])
    finally:
        for h in hooks:
            h.remove()
    return int(max(1, min(cap, budget_mb * 2**20 // largest[0])))


def working_copy(model: nn.Module, fold_bn: bool = False) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
    """An eval copy of ``model`` for inference-only scoring, and the input conversion that goes with it.

    The copy is channels-last where the model has 4-D weights (faster conv kernels on CPU; same
    values). With ``fold_bn``, every BatchNorm that directly follows a conv (found by tracing) is
    folded into that conv and becomes an ``nn.Identity`` of the same name, so a site named after
    the BatchNorm still outputs the BatchNorm's values (up to rounding) at less cost. Use sites
    computed on the original model (:func:`channel_sites` needs the BatchNorms). ``model`` itself
    is not touched.
    """
    work = copy.deepcopy(model).eval()
    if fold_bn:
        fold_batchnorms(work)
    if any(p.dim() == 4 for p in work.parameters()):
        work = work.to(memory_format=torch.channels_last)
        return work, lambda x: x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    return work, lambda x: x


def fold_batchnorms(model: nn.Module) -> list[str]:
    """Fold each eval-mode BatchNorm fed only by a conv (used once) into it, in place; returns the
    BatchNorms replaced by ``nn.Identity``. Does nothing where the model does not trace."""
    try:
        graph = torch.fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001
        return []
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    modules = dict(model.named_modules())
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    folded = []
    for n in graph.nodes:
        bn = modules.get(n.target) if n.op == "call_module" else None
        if not isinstance(bn, nn.modules.batchnorm._BatchNorm) or bn.running_mean is None or bn.training:
            continue
        src = n.args[0] if len(n.args) == 1 and not n.kwargs else None
        if not isinstance(src, torch.fx.Node) or src.op != "call_module" or len(src.users) != 1:
            continue
        conv = modules.get(src.target)
        if (type(conv) not in (nn.Conv1d, nn.Conv2d, nn.Conv3d) or calls[src.target] != 1 or calls[n.target] != 1
                or conv.out_channels != bn.num_features):
            continue
        _set_module(model, src.target, fuse_conv_bn_eval(conv, bn))
        _set_module(model, n.target, nn.Identity())
        folded.append(n.target)
    return folded


def _set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, new)


def stack_batches(batches: Iterable[tuple], prep: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` calibration batches as one input tensor (through ``prep``) and one label vector; labels that
    are not class indices (the unpruned model's outputs, for label-free metrics) are stacked as they are."""
    xs, ys = zip(*batches)
    ys = [torch.as_tensor(y) for y in ys]
    if any(y.is_floating_point() or y.dim() > 1 for y in ys):
        return prep(torch.cat(xs)), torch.cat(ys)
    return prep(torch.cat(xs)), torch.cat([y.reshape(-1) for y in ys]).long()


# ------------------------------------------------------------------ engine


class ReplicaRunner:
    """Runs a model on ``R`` stacked replicas of a batch, with some modules' outputs overridden.

    Args:
        model: The model; never modified.
        engine: ``auto`` (``fx`` where it traces and checks out, else ``hooks``), ``fx`` or ``hooks``.

    Attributes:
        forwards: Forward passes run (checks included).
        rows: Rows pushed through them (replicas x samples; ``fx`` passes count in full even
            though their prefix ran on fewer rows, so this is an upper bound on the work).
        engines: Which engine served each set of active sites.
    """

    def __init__(self, model: nn.Module, engine: Literal["auto", "fx", "hooks"] = "auto") -> None:
        if engine not in ("auto", "fx", "hooks"):
            raise ConfigError(f"unknown intervention engine {engine!r}", hint="use auto, fx or hooks")
        self.model = model
        self.engine = engine
        self.modules = dict(model.named_modules())
        self.forwards = 0
        self.rows = 0
        self.engines: dict[frozenset[str], str] = {}
        self._gm = None
        if engine != "hooks":
            try:
                self._gm = torch.fx.symbolic_trace(model)
            except Exception:  # any tracing failure means: use hooks
                if engine == "fx":
                    raise
            if self._gm is not None:
                self._prepare_graph()

    # -- fx bookkeeping
    def _prepare_graph(self) -> None:
        nodes = list(self._gm.graph.nodes)
        self._nodes = nodes
        first = next((n for n in nodes if n.op == "placeholder"), None)
        batchy: set = set()
        for n in nodes:  # nodes that depend on the input: the only ones whose dim 0 is the batch
            if n is first or any(a in batchy for a in n.all_input_nodes):
                batchy.add(n)
        self._batchy = batchy
        last: dict = {}
        for n in nodes:
            for a in n.all_input_nodes:
                last[a] = n
        self._frees: dict = {}
        for a, n in last.items():
            self._frees.setdefault(n, []).append(a)
        self._fx_modules = dict(self._gm.named_modules())

    def _attr(self, target: str) -> Any:
        obj: Any = self._gm
        for part in target.split("."):
            obj = getattr(obj, part)
        return obj

    def _fx_forward(self, x: torch.Tensor, replicas: int, active: frozenset[str], override: Override) -> torch.Tensor:
        b = x.shape[0]
        env: dict = {}
        expanded: set = set()
        seen_input = False

        def widen(node):
            v = env[node]
            if node in expanded or node not in self._batchy:
                return v
            if replicas > 1 and isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == b:
                return torch.cat([v] * replicas, 0)
            return v

        for n in self._nodes:
            if n.op == "placeholder":
                if not seen_input:
                    env[n], seen_input = x, True
                elif n.args:
                    env[n] = n.args[0]
                else:
                    raise TypeError(f"the model's forward needs more than one input ({n.target})")
                continue
            if n.op == "get_attr":
                env[n] = self._attr(n.target)
                continue
            if n.op == "output":
                return torch.fx.node.map_arg(n.args[0], widen)
            site = n.op == "call_module" and n.target in active
            shared = site and not any(a in expanded for a in n.all_input_nodes)
            wide = site or any(a in expanded for a in n.all_input_nodes)
            fetch = widen if wide and not shared else env.__getitem__
            args = torch.fx.node.map_arg(n.args, fetch)
            kwargs = torch.fx.node.map_arg(n.kwargs, fetch)
            if n.op == "call_module":
                mod = self._fx_modules[n.target]
                val = override(n.target, mod, args, kwargs, replicas, shared) if site else mod(*args, **kwargs)
            elif n.op == "call_function":
                val = n.target(*args, **kwargs)
            else:  # call_method
                val = getattr(args[0], n.target)(*args[1:], **kwargs)
            env[n] = val
            if wide:
                expanded.add(n)
            for a in self._frees.get(n, ()):
                env.pop(a, None)
        raise RuntimeError("traced graph has no output")

    def _hooks_forward(self, x: torch.Tensor, replicas: int, active: frozenset[str], override: Override) -> torch.Tensor:
        inside: set[str] = set()  # the override calls the module again: its own hook must pass

        def hook(name):
            def fn(mod, args, kwargs, out):
                if name in inside:
                    return None
                inside.add(name)
                try:
                    return override(name, mod, args, kwargs, replicas, False)
                finally:
                    inside.discard(name)
            return fn

        hooks = [self.modules[n].register_forward_hook(hook(n), with_kwargs=True) for n in active]
        try:
            return self.model(torch.cat([x] * replicas, 0))
        finally:
            for h in hooks:
                h.remove()

    def run(self, x: torch.Tensor, replicas: int, active: Collection[str], override: Override) -> torch.Tensor:
        """The model's output for ``replicas`` stacked copies of ``x`` (``[replicas * b, ...]``).

        ``override`` (see :data:`Override`) runs each module named in ``active`` and returns its
        edited output of ``replicas * b`` rows; every other module runs as usual.
        """
        active = frozenset(active)
        unknown = [n for n in active if n not in self.modules]
        if unknown:
            raise KeyError(f"no such modules: {', '.join(sorted(unknown))}")
        with eval_mode(self.model):
            kind = self._engine_for(x, replicas, active, override)
            if kind == "fx":
                try:
                    out = self._fx_forward(x, replicas, active, override)
                except Exception:  # fall back, and stay on hooks for these sites
                    if self.engine == "fx":
                        raise
                    self.engines[active] = kind = "hooks"
            if kind == "hooks":
                out = self._hooks_forward(x, replicas, active, override)
        if not isinstance(out, torch.Tensor):
            raise TypeError(f"interventions need a model that returns one tensor, got {type(out).__name__}")
        self.forwards += 1
        self.rows += replicas * x.shape[0]
        return out

    def _engine_for(self, x: torch.Tensor, replicas: int, active: frozenset[str], override: Override) -> str:
        if self._gm is None or self.engine == "hooks":
            return "hooks"
        if active in self.engines:
            return self.engines[active]
        if self.engine == "fx":
            self.engines[active] = "fx"
            return "fx"
        probe = x[: min(2, x.shape[0])]
        try:
            got = self._fx_forward(probe, replicas, active, override)
            ref = self._hooks_forward(probe, replicas, active, override)
            self.forwards += 2
            self.rows += 2 * replicas * probe.shape[0]
            ok = (isinstance(got, torch.Tensor) and isinstance(ref, torch.Tensor) and got.shape == ref.shape
                  and torch.allclose(got, ref, rtol=1e-4, atol=1e-5))
        except Exception:  # noqa: BLE001
            ok = False
        self.engines[active] = "fx" if ok else "hooks"
        return self.engines[active]


# ------------------------------------------------------------------ channel interventions


def channel_means(model: nn.Module, sites: Mapping[str, Sequence[str]] | Iterable[str],
                  batches: Iterable[torch.Tensor | tuple]) -> dict[str, torch.Tensor]:
    """Per site, the mean of each output channel over the calibration data (all samples and positions).

    Args:
        model: The model; never modified.
        sites: Site module names, or the ``{group: [sites]}`` of :func:`channel_sites`.
        batches: Input tensors, or ``(x, y)`` pairs whose ``x`` is used.
    """
    names = _flat_sites(sites)
    modules = dict(model.named_modules())
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(name):
        def fn(mod, inp, out):
            d = channel_dim(mod) % out.dim()
            o = out.detach().to(torch.float64).movedim(d, -1).reshape(-1, out.shape[d])
            sums[name] = sums.get(name, 0) + o.sum(0)
            counts[name] = counts.get(name, 0) + o.shape[0]
        return fn

    hooks = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with eval_mode(model):
            for batch in batches:
                model(batch[0] if isinstance(batch, (tuple, list)) else batch)
    finally:
        for h in hooks:
            h.remove()
    if set(sums) != set(names):
        missing = sorted(set(names) - set(sums))
        raise ValueError(f"sites never ran in a forward pass: {', '.join(missing)}")
    return {n: (sums[n] / counts[n]).float() for n in names}


def _normalise(interventions: Sequence[Intervention], sites: Mapping[str, Sequence[str]]) -> list[dict[str, torch.Tensor]]:
    out = []
    for iv in interventions:
        parts = dict(iv) if isinstance(iv, Mapping) else {iv[0]: iv[1]}
        for gid in parts:
            if gid not in sites:
                raise ValueError(f"intervention on unknown group {gid!r}")
        out.append({g: torch.as_tensor(idx, dtype=torch.long).reshape(-1) for g, idx in parts.items()})
    return out


def _chunk_sizes(n_samples: int, n_iv: int, max_batch: int) -> tuple[int, int]:
    """Samples per chunk and replicas per forward, with ``samples * replicas <= max_batch``.

    Up to 16 replicas share a pass before samples are split, so a deep intervention's prefix is
    shared by many replicas under the ``fx`` engine.
    """
    b = min(n_samples, max(1, max_batch // max(1, min(n_iv, 16))))
    return b, max(1, min(n_iv, max_batch // b))


def intervened_forward(model: nn.Module, x: torch.Tensor, sites: Mapping[str, Sequence[str]],
                       interventions: Sequence[Intervention], mode: Literal["zero", "mean"] = "zero",
                       means: Mapping[str, torch.Tensor] | None = None, max_batch: int = MAX_BATCH,
                       runner: ReplicaRunner | None = None,
                       maps: Mapping[str, Mapping[str, tuple[torch.Tensor, torch.Tensor]]] | None = None) -> torch.Tensor:
    """The model's outputs on ``x`` under each intervention, batched.

    Args:
        model: The model; never modified.
        x: One input batch ``[B, ...]``.
        sites: ``{group id: [site module names]}``, from :func:`channel_sites`.
        interventions: Intervention ``j`` is ``(group_id, channel indices)``, or a mapping
            ``{group_id: channel indices}`` to intervene on several groups at once (a pruning mask).
            An empty index tensor is the clean model.
        mode: ``zero`` sets the channels to 0; ``mean`` to their calibration mean (``means``).
        means: Per site, the per-channel means of :func:`channel_means` (``mode="mean"`` only).
        max_batch: Most rows (replicas x samples) in one forward pass.
        runner: A :class:`ReplicaRunner` on ``model`` to reuse (it keeps the engine checks and the
            pass counts across calls); by default a new one.
        maps: Per group id and site, ``(index, channel)`` where the site's output does not carry the group's
            channels as its own channels in order (a norm after a concatenation:
            :meth:`stages.model.graph.PruneGraph.site_index`); without it a site's channel ``c`` is the group's.

    Returns:
        ``[len(interventions), B, *out]``: output ``j`` is the model's output on ``x`` with
        intervention ``j`` applied, exactly as if run alone.
    """
    if mode not in ("zero", "mean"):
        raise ConfigError(f"unknown intervention mode {mode!r}", hint="use 'zero' or 'mean'")
    if mode == "mean" and means is None:
        raise ConfigError("mode='mean' needs the calibration means",
                          hint="pass means=channel_means(model, sites, batches)")
    if max_batch < 1:
        raise ConfigError(f"max_batch must be >= 1, got {max_batch}", hint="use the default")
    ivs = _normalise(interventions, sites)
    runner = runner or ReplicaRunner(model)
    n_samples = x.shape[0]
    if not ivs:
        return torch.empty(0, n_samples)
    b, r = _chunk_sizes(n_samples, len(ivs), max_batch)
    result: torch.Tensor | None = None
    for j0 in range(0, len(ivs), r):
        chunk = ivs[j0:j0 + r]
        per_site: dict[str, list[tuple[int, torch.Tensor]]] = {}
        for j, iv in enumerate(chunk):
            for gid, idx in iv.items():
                if idx.numel():
                    for s in sites[gid]:
                        where = (maps or {}).get(gid, {}).get(s)
                        at = idx if where is None else where[0][torch.isin(where[1], idx)]
                        per_site.setdefault(s, []).append((j, at))
        override = _channel_override(per_site, mode, means)
        for i0 in range(0, n_samples, b):
            xb = x[i0:i0 + b]
            out = runner.run(xb, len(chunk), per_site, override).detach()
            out = out.unflatten(0, (len(chunk), xb.shape[0]))
            if result is None:
                result = out.new_empty((len(ivs), n_samples, *out.shape[2:]))
            result[j0:j0 + len(chunk), i0:i0 + xb.shape[0]] = out
    assert result is not None
    return result


def _channel_override(per_site: Mapping[str, list[tuple[int, torch.Tensor]]], mode: str,
                      means: Mapping[str, torch.Tensor] | None) -> Override:
    """Zero (or mean-replace) each replica's channels at each site; other replicas pass unchanged."""

    def override(name: str, module: nn.Module, args: tuple, kwargs: dict, replicas: int,
                 shared: bool) -> torch.Tensor:
        out = module(*args, **kwargs)
        d = channel_dim(module) % out.dim()
        keep = torch.ones(replicas, out.shape[d], dtype=out.dtype, device=out.device)
        for j, idx in per_site.get(name, ()):
            keep[j, idx] = 0
        shape = [replicas] + [1] * out.dim()
        shape[d + 1] = out.shape[d]
        keep = keep.view(shape)
        # shared: one copy of the rows, broadcast against the replicas' masks (the product expands it)
        rows = out.unsqueeze(0) if shared else out.unflatten(0, (replicas, out.shape[0] // replicas))
        if mode == "zero":
            edited = rows * keep
        else:
            mu = means[name].to(out.dtype).to(out.device)  # type: ignore[index]
            mshape = [1] * (out.dim() + 1)
            mshape[d + 1] = out.shape[d]
            edited = rows * keep + (1 - keep) * mu.view(mshape)
        return edited.flatten(0, 1)

    return override
