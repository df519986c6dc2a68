"""Evaluation: what an engine (or a torch module) computes on a split, scored by a registered evaluator.

The latency and memory numbers come from the target (:meth:`targets.base.Target.measure`);
this module gives what the engine computes, run through the engine's own runner, so the number
is the one that ships. The report's record ``M`` is :class:`core.records.Measurement`.

Evaluators live in :data:`EVALUATORS`, like criteria: each declares whether it needs real labels,
its unit and whether higher is better; ``--max-accuracy-drop`` is read in that unit.

- ``top1``: top-1 accuracy (%) of the argmax of the output against the data's labels;
- ``agreement`` (alias ``fidelity``): the same against the *unpruned model's* argmax (data without
  labels): top-1 agreement with the unpruned model, in %;
- ``cosine``: mean cosine similarity (x 100) of the output to the unpruned model's, along the last
  axis (sentence embeddings; token states are averaged over positions), label-free;
- ``seg-agreement``: segmentation logits ``[N, C, H, W]``: per-pixel agreement (%) of the class map with the
  unpruned model's (data without labels);
- ``output-error``: 100 x (1 - relative L2 error) of the output against the unpruned model's over
  the split, label-free, for any model: the fallback when nothing else fits;
- ``perplexity``: causal LMs on a token split (``x[:, 0]`` ids, ``x[:, 1]`` mask): the score is
  ``100 - relative perplexity increase in %`` against the unpruned model's perplexity on the same
  split (100 = unchanged; a drop of 10 points = 10% more perplexity), so the floor
  ``--max-accuracy-drop D`` is exactly "perplexity may rise by at most D %" and every search keeps
  reading "higher is better". :func:`perplexity_of` turns a score back into the perplexity.

A label-free evaluator declares ``reference``: how the unpruned model's output on a batch becomes
the per-sample "label" it compares against (:func:`stages.load.data.with_model_labels` stores
it). Adding an evaluator is one :func:`register` call here (or in a module that imports this one)
and its test.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from core.registry import Registry

EvalFn = Callable[..., float]  # (runner, data: Dataset, batch_size) -> score
Reference = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (unpruned output, packed x) -> per-sample ref


@dataclass(frozen=True)
class Evaluator:
    """One registered metric.

    Attributes:
        name: The metric's name (``DataBundle.metric``, report.json's ``accuracy_metric``).
        fn: ``fn(runner, data, batch_size) -> score``.
        needs_labels: Ground-truth labels (else ``reference`` makes them from the unpruned model).
        unit: What the score is in; ``--max-accuracy-drop`` is read in this unit.
        higher_is_better: The direction of the score.
        summary: One line for listings.
        reference: For label-free evaluators: the unpruned model's batch output -> per-sample labels.
        loss: The kind of task loss gradient criteria differentiate for this metric
            (:mod:`stages.model.losses`: classes, next-token, features).
        negated: For a lower-is-better quantity reported negated (so that every search reads "higher is
            better" and ``--max-accuracy-drop D`` reads "may rise by at most D"): its name, e.g. ``FD``.
    """

    name: str
    fn: EvalFn
    needs_labels: bool
    unit: str
    higher_is_better: bool
    summary: str
    reference: Reference | None = None
    loss: str = "classes"
    negated: str | None = None

    def __call__(self, runner, data: Dataset, batch_size: int = 64) -> float:
        return self.fn(runner, data, batch_size)


EVALUATORS: Registry[Evaluator] = Registry("evaluator")


def register(name: str, *, needs_labels: bool, unit: str, higher_is_better: bool, summary: str,
             reference: Reference | None = None, aliases: tuple[str, ...] = (), loss: str = "classes",
             negated: str | None = None) -> Callable[[EvalFn], EvalFn]:
    """Decorator: register ``fn(runner, data, batch_size) -> score`` as evaluator ``name``."""

    def deco(fn: EvalFn) -> EvalFn:
        EVALUATORS.add(name, Evaluator(name, fn, needs_labels, unit, higher_is_better, summary, reference, loss,
                                       negated), aliases=aliases)
        return fn

    return deco


def _batches(data: Dataset, batch_size: int):
    return DataLoader(data, batch_size=batch_size, shuffle=False)


def _argmax_agreement(runner, data: Dataset, batch_size: int = 64) -> float:
    correct = total = 0
    for x, y in _batches(data, batch_size):
        out = np.asarray(runner.run(x.numpy()))
        pred = out.reshape(len(x), -1).argmax(1) if out.ndim <= 2 else out.argmax(-1)
        yy = y.numpy().reshape(pred.shape)
        correct += int((pred == yy).sum())
        total += int(pred.size)
    return 100.0 * correct / max(total, 1)


@register("top1", needs_labels=True, unit="%", higher_is_better=True,
          summary="top-1 accuracy of the output's argmax against the labels")
def evaluate_top1(runner, data: Dataset, batch_size: int = 64) -> float:
    """Top-1 (in %) of ``runner.run(x)`` logits against the labels of ``data``."""
    return _argmax_agreement(runner, data, batch_size)


def per_class_accuracy(runner, data: Dataset, batch_size: int = 64) -> dict[int, tuple[int, int]]:
    """Per class label: (correct, samples) of the output's argmax, for class logits with one label a sample."""
    return class_and_group_counts(runner, data, batch_size)[0]


def class_and_group_counts(runner, data: Dataset, batch_size: int = 64, groups: Sequence[object] | None = None
                           ) -> tuple[dict[int, tuple[int, int]], dict | None]:
    """In one pass: (correct, samples) per class label, and per ``groups[i]`` (one group per sample of ``data``,
    in order) when given."""
    per_class: dict[int, list[int]] = {}
    per_group: dict[object, list[int]] = {}
    i = 0
    for x, y in _batches(data, batch_size):
        pred = np.asarray(runner.run(x.numpy())).reshape(len(x), -1).argmax(1)
        for p, t in zip(pred.tolist(), y.numpy().reshape(-1).tolist()):
            hit = int(p == int(t))
            for table, key in ((per_class, int(t)), *(((per_group, groups[i]),) if groups is not None else ())):
                c = table.setdefault(key, [0, 0])
                c[0] += hit
                c[1] += 1
            i += 1

    def done(table: dict) -> dict:
        return {k: (v[0], v[1]) for k, v in sorted(table.items(), key=lambda kv: (str(type(kv[0])), kv[0]))}

    return done(per_class), (done(per_group) if groups is not None else None)


def class_gap(counts: dict[int, tuple[int, int]]) -> dict:
    """Per-class accuracy in %, the worst class and the gap between the best and the worst class (points)."""
    acc = {str(k): 100.0 * c / max(n, 1) for k, (c, n) in counts.items()}
    worst = min(acc, key=acc.get)
    return {"accuracy": acc, "worst_class": worst, "worst": acc[worst], "gap": max(acc.values()) - acc[worst],
            "samples": {str(k): n for k, (_, n) in counts.items()}}


def _argmax_reference(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out.reshape(len(out), -1).argmax(1) if out.dim() <= 2 else out.argmax(-1)


register("agreement", needs_labels=False, unit="%", higher_is_better=True, aliases=("fidelity",),
         reference=_argmax_reference,
         summary="top-1 agreement with the unpruned model's argmax (label-free)")(_argmax_agreement)


def _pixel_reference(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out.argmax(1)


@register("seg-agreement", needs_labels=False, unit="%", higher_is_better=True, reference=_pixel_reference,
          loss="pixels",
          summary="segmentation logits [N, C, H, W]: per-pixel agreement with the unpruned model's class map")
def evaluate_seg_agreement(runner, data: Dataset, batch_size: int = 16) -> float:
    same = total = 0
    for x, y in _batches(data, batch_size):
        pred = np.asarray(runner.run(x.numpy())).argmax(1)
        same += int((pred == y.numpy().reshape(pred.shape)).sum())
        total += int(pred.size)
    return 100.0 * same / max(total, 1)


def _output_reference(out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return out.detach().float()


@register("cosine", needs_labels=False, unit="cosine x 100", higher_is_better=True, reference=_output_reference,
          loss="features",
          summary="mean cosine similarity (x100) of the output to the unpruned model's, along the last axis")
def evaluate_cosine(runner, data: Dataset, batch_size: int = 64) -> float:
    total, n = 0.0, 0
    for x, y in _batches(data, batch_size):
        out = torch.from_numpy(np.asarray(runner.run(x.numpy()), dtype=np.float64))
        cos = F.cosine_similarity(out.reshape(-1, out.shape[-1]), y.double().reshape(-1, out.shape[-1]), dim=1)
        total += float(cos.sum())
        n += cos.numel()
    return 100.0 * total / max(n, 1)


@register("output-error", needs_labels=False, unit="100 x (1 - relative L2 error)", higher_is_better=True,
          reference=_output_reference, loss="features",
          summary="100 x (1 - relative L2 error) of the output against the unpruned model's (any model)")
def evaluate_output_error(runner, data: Dataset, batch_size: int = 64) -> float:
    err = ref = 0.0
    for x, y in _batches(data, batch_size):
        out = np.asarray(runner.run(x.numpy()), dtype=np.float64).reshape(len(x), -1)
        yy = y.double().numpy().reshape(len(x), -1)
        err += float(((out - yy) ** 2).sum())
        ref += float((yy ** 2).sum())
    return 100.0 * (1.0 - math.sqrt(err / ref)) if ref > 0 else (100.0 if err == 0 else 0.0)


def _nll_tokens(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per sample: [summed next-token NLL, number of predicted tokens] (ids ``x[:, 0]``, mask ``x[:, 1]``)."""
    ids = x[:, 0].long()
    mask = x[:, 1].float() if x.shape[1] > 1 else torch.ones_like(ids, dtype=torch.float32)
    logp = F.log_softmax(logits[:, :-1].double(), dim=-1)
    nll = -logp.gather(-1, ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    m = mask[:, 1:].double() * mask[:, :-1].double()
    return torch.stack([(nll * m).sum(1), m.sum(1)], dim=1)


@register("perplexity", needs_labels=False, unit="100 - perplexity increase in %", higher_is_better=True,
          reference=_nll_tokens, loss="next-token",
          summary="causal LMs: 100 - % perplexity increase over the unpruned model on the same split")
def evaluate_perplexity(runner, data: Dataset, batch_size: int = 16) -> float:
    ppl, ref = _perplexities(runner, data, batch_size)
    return 100.0 - 100.0 * (ppl / ref - 1.0)


def _perplexities(runner, data: Dataset, batch_size: int) -> tuple[float, float]:
    nll = tokens = ref_nll = ref_tokens = 0.0
    for x, y in _batches(data, batch_size):
        logits = torch.from_numpy(np.asarray(runner.run(x.numpy())))
        got = _nll_tokens(logits, x)
        nll += float(got[:, 0].sum())
        tokens += float(got[:, 1].sum())
        ref_nll += float(y[:, 0].sum())
        ref_tokens += float(y[:, 1].sum())
    return math.exp(nll / max(tokens, 1.0)), math.exp(ref_nll / max(ref_tokens, 1.0))


def reference_perplexity(data: Dataset) -> float:
    """The unpruned model's perplexity on a split labelled by :func:`stages.load.data.with_model_labels`."""
    ys = torch.stack([data[i][1] for i in range(len(data))])
    return math.exp(float(ys[:, 0].sum()) / max(float(ys[:, 1].sum()), 1.0))


def perplexity_of(score: float, data: Dataset) -> float:
    """The perplexity a ``perplexity`` score stands for on ``data`` (its reference known from the labels)."""
    return reference_perplexity(data) * (1.0 + (100.0 - score) / 100.0)


def format_score(metric: str, value: float | None, data: Dataset | None = None) -> str:
    """A score as the console and report.md print it, in its unit: ``99.78%`` for % metrics, ``93.20
    (cosine x 100)`` otherwise; a perplexity score also as the perplexity change (and, given the labelled
    ``data`` it was measured on, the perplexity itself): ``-7.91 (ppl 83.61, +107.9%)``."""
    if value is None:
        return "n/a"
    ev = EVALUATORS.get(metric) if metric in EVALUATORS else None
    if ev is None or ev.unit == "%":
        return f"{value:.2f}%"
    if ev.negated:
        return f"{ev.negated} {-value:.4g}"
    if ev.name == "perplexity":
        ppl = f"ppl {perplexity_of(value, data):.2f}, " if data is not None else "ppl "
        return f"{value:.2f} ({ppl}{round(100.0 - value, 1) + 0.0:+.1f}%)"  # + 0.0: no "-0.0%"
    return f"{value:.2f} ({ev.unit})"


def metric_info(metric: str) -> dict:
    """report.json's ``metric`` section: what the accuracy numbers and ``--max-accuracy-drop`` are in."""
    ev = EVALUATORS.get(metric)
    return {"name": ev.name, "unit": ev.unit, "higher_is_better": ev.higher_is_better,
            "needs_labels": ev.needs_labels, "summary": ev.summary}


def evaluate_with_classes(metric: str, runner, data: Dataset, labeled: bool, batch_size: int = 64,
                          groups: Sequence[object] | None = None) -> tuple[float, dict | None]:
    """``evaluate``, and for top-1 against one class label a sample also :func:`class_gap`, from the same single
    pass (a device evaluation is not repeated); ``None`` for other metrics and labels. With ``groups`` (one per
    sample, from the data source) the result also holds ``groups``: the same accuracy, worst and gap per group."""
    scalar = len(data) > 0 and torch.as_tensor(data[0][1]).ndim == 0
    if not (labeled and EVALUATORS.get(metric).name == "top1" and scalar):
        return evaluate(metric, runner, data, batch_size), None
    counts, by_group = class_and_group_counts(runner, data, batch_size, groups)
    right, total = sum(c for c, _ in counts.values()), sum(n for _, n in counts.values())
    gap = class_gap(counts)
    if by_group is not None:
        gap["groups"] = class_gap(by_group)
    return 100.0 * right / max(total, 1), gap


def evaluate(metric: str, runner, data: Dataset, batch_size: int = 64) -> float:
    """Score ``runner`` on ``data`` with the registered evaluator ``metric``."""
    return EVALUATORS.get(metric)(runner, data, batch_size)


class TorchRunner:
    """Runs a torch module like an engine runner (for calibration-time checks only)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()

    def run(self, x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(x)).numpy()


from stages.evaluate import detection, generative  # noqa: E402,F401 - register det-agreement, map50(-95), fid-digits ...
