"""Checks that run before the work they protect, so a bad input stops a run early with one line.

- :func:`check_names` (before any work, and by ``--dry-run``): the model / data / arch source
  prefixes, the criterion and its options, the search for the objective and the criterion
  (``search: cswap`` prunes the plan of ``criterion: cswap``), a ``--policy`` file, paths the
  specs name.
- :func:`check_loaded` (in the load stage, before the baseline): what needs the model: the
  ``prune.ignore`` module names, that a ``--policy`` fits this model, labels that can measure
  anything (one class against a many-class model measures nothing).
- :func:`check_baseline` (in the baseline stage): a baseline at or below the allowed drop (0% of a
  model that does not fit its data) makes the accuracy floor vacuous: every result would "pass".
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import ConfigError, SpecError, StageError

LABEL_SCAN = 2048  # test samples read to find a second class (stops at the first one found)


def check_names(cfg) -> None:
    """Fail before any work (and before a run folder exists) on names and paths that cannot resolve."""
    from search import SEARCHES
    from stages.load.checks import DATA_CHECKS, MODEL_CHECKS, check_spec
    from stages.load.data import DATA_SOURCES
    from stages.load.models import MODEL_SOURCES
    from stages.prune.plan import PruningPlan
    from stages.score import CRITERIA

    for spec, sources, checks in ((cfg.model, MODEL_SOURCES, MODEL_CHECKS), (cfg.arch, MODEL_SOURCES, MODEL_CHECKS),
                                  (cfg.data, DATA_SOURCES, DATA_CHECKS)):
        if spec:
            sources.get(str(spec).partition(":")[0])  # an unknown source prefix
            check_spec(spec, checks)
    if cfg.policy:
        PruningPlan.from_file(Path(cfg.policy))
    else:
        crit = CRITERIA.get(cfg.criterion)
        options = crit.resolve_options(cfg.criterion_options)
        c = cfg.constraints
        search = SEARCHES.get(cfg.search)
        search.check(cfg.objective, c.latency_ms is not None or c.speedup is not None, criterion=crit.name)
        if search.needs_criterion == "cswap" and not options.get("progressive", True):
            raise ConfigError(f"search '{search.name}' needs the plan of criterion cswap's progressive procedure, "
                              "and criterion option progressive is off",
                              hint="drop criterion option progressive=false (on is the default)")


def check_loaded(cfg, lm, data) -> None:
    """What the loaded model tells: ignored modules exist, a replayed policy fits, labels can measure, attention
    widths split into their heads, a multi-input model runs on the target."""
    names = {n for n, _ in lm.module.named_modules()}
    unknown = [n for n in cfg.prune.ignore if n not in names]
    if unknown:
        raise ConfigError(f"prune.ignore names modules the model does not have: {', '.join(unknown[:5])}",
                          hint="use module names from model.named_modules() (e.g. 'fc', 'classifier.1')")
    if cfg.policy:
        from stages.prune.plan import PruningPlan, apply_plan

        apply_plan(lm.module, torch.zeros((2, *lm.input_shape)), PruningPlan.from_file(Path(cfg.policy)))
    if data.labeled and _class_accuracy(data.metric):
        _check_labels(lm, data)
    from stages.model.attention import attention_sites

    attention_sites(lm.module, skip=cfg.prune.ignore)  # a head layout that does not divide: one error, now
    _check_criterion_fits(cfg, lm, data)
    _check_recovery_loss(cfg, data)
    if lm.io.packed and cfg.target != "cpu":
        raise SpecError(f"model '{lm.spec}' takes {len(lm.io.inputs)} inputs ({', '.join(lm.io.names)}); target "
                        f"'{cfg.target}' times and runs one-input models only in this version",
                        hint="use --target cpu for token models (see docs/models.md)")


def _check_recovery_loss(cfg, data) -> None:
    """The PW loss weighs samples by the unpruned model's probability of their label: it needs class labels."""
    if cfg.recovery.loss == "pw" and cfg.recovery.method != "none" and not (data.labeled and
                                                                           _class_accuracy(data.metric)):
        raise SpecError(f"recovery.loss pw needs class labels; data '{data.name}' is judged by '{data.metric}'"
                        f"{'' if data.labeled else ' without labels'}",
                        hint="use labelled class data (digits, imagefolder:, python:) or recovery.loss auto")


def _check_criterion_fits(cfg, lm, data) -> None:
    """A criterion that reads class probabilities needs a metric on class logits."""
    from stages.evaluate import EVALUATORS
    from stages.score import CRITERIA

    if cfg.policy:
        return
    crit = CRITERIA.get(cfg.criterion)
    kind = EVALUATORS.get(data.metric).loss
    if crit.needs.classes and kind != "classes":
        raise SpecError(f"criterion '{crit.name}' reads the probability of a class; model '{lm.spec}' is judged by "
                        f"'{data.metric}' (its output is not class logits)",
                        hint="use a criterion for any output: wanda, stade, magnitude-l2, sbpf or ld-pruner")
    if crit.needs.gradients and kind == "detection":
        raise SpecError(f"criterion '{crit.name}' differentiates a task loss; '{data.metric}' (detections after NMS) "
                        "has none", hint="use magnitude-l2, bn-scale, wanda, stade or sbpf")
    if crit.name == "ld-pruner":  # sampled latents need a diffusion model: say so before the baseline
        from stages.score.ld_pruner import sampler_steps

        sampler_steps(lm.module, crit.resolve_options(cfg.criterion_options).get("steps"))


def _class_accuracy(metric: str) -> bool:
    """Whether ``metric`` is a class accuracy in % (higher is better, against labels), as top1 is."""
    from stages.evaluate import EVALUATORS

    ev = EVALUATORS.get(metric) if metric in EVALUATORS else None
    return ev is not None and ev.needs_labels and ev.higher_is_better and ev.unit == "%"


def _check_labels(lm, data) -> None:
    with torch.no_grad():
        outputs = int(lm.module(lm.example_input(1)).reshape(1, -1).shape[1])
    seen: set[int] = set()
    for i in range(min(len(data.test), LABEL_SCAN)):
        y = data.test[i][1]
        if getattr(y, "ndim", 0) != 0 or float(y) != int(y):  # not a class index: nothing to say
            return
        seen.add(int(y))
        if len(seen) > 1:
            return
    if outputs > 1 and len(seen) == 1:
        raise SpecError(f"the test split of '{data.name}' has labels of one class only ({seen.pop()}) for a model "
                        f"with {outputs} outputs: accuracy on it measures nothing",
                        hint="use data with samples of every class (or --data random for a latency-only run)")


def check_baseline(accuracy: float | None, data, max_drop: float | None) -> None:
    """The accuracy floor (baseline - allowed drop, through the engine, on real labels) must be above 0, or no
    result could break it: stop instead of passing vacuously."""
    if (accuracy is not None and data.labeled and max_drop is not None and _class_accuracy(data.metric)
            and accuracy - max_drop <= 0.0):
        raise StageError(f"the unpruned model scores {accuracy:.2f}% {data.metric} on the test split of "
                         f"'{data.name}', within the allowed drop of {max_drop:g}: no result could break the floor",
                         hint="check the labels, the class order and the preprocessing of the data (a model that "
                              "fits its data scores far above the drop)")
