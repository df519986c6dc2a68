"""The model and data of a run, loaded together (the load stage and every ``pipeline worker``)."""

from __future__ import annotations

import torch

from core.errors import SpecError
from stages.load.data import DataBundle, DataRequest, load_data, with_model_labels
from stages.load.models import LoadedModel, ModelRequest, load_model
from stages.model.diffusion import GenerativeSplit

DEFAULT_DATA = "digits"


def load_inputs(req: ModelRequest, data_spec: str | None, seed: int, metric: str | None = None
                ) -> tuple[LoadedModel, DataBundle]:
    """Load the model of ``req`` and the data of ``data_spec`` (seeded; None: the model's own data, else
    digits); check their shapes agree; give unlabeled data the labels of the run's metric (:func:`run_metric`).

    Raises:
        SpecError: the data's samples do not have the model's input shape; the metric needs labels the
            data does not have.
    """
    torch.manual_seed(seed)
    lm = load_model(req)
    spec = data_spec or lm.default_data or DEFAULT_DATA
    data = load_data(spec, data_request(lm))
    if tuple(data.input_shape) != tuple(lm.input_shape):
        raise SpecError(f"data '{spec}' gives samples of shape {data.input_shape}, model expects "
                        f"{lm.input_shape}", hint="pass --input-shape or use matching data")
    chosen = run_metric(lm, data, metric)
    if not data.labeled:
        data = with_model_labels(data, lm.module, chosen)
    elif chosen != data.metric:
        from dataclasses import replace

        data = replace(data, metric=chosen)
    return lm, data


def data_request(lm: LoadedModel) -> DataRequest:
    config = getattr(getattr(lm.module, "model", None), "config", None)
    return DataRequest(tuple(lm.input_shape), tokens=lm.io.integer, tokenizer=lm.tokenizer,
                       vocab_size=getattr(config, "vocab_size", None), causal=lm.task == "causal-lm")


def run_metric(lm: LoadedModel, data: DataBundle, metric: str | None) -> str:
    """The evaluator of the run: ``metric`` when given (checked against the data), else the data's own
    with labels, else the model's label-free one (cosine for embeddings, perplexity for causal LMs, det-agreement
    for detectors; on random tokens a causal LM gets agreement, on random images a detector output-error), else
    agreement."""
    from stages.evaluate import EVALUATORS
    from stages.evaluate.generative import GENERATIVE

    if metric is not None:
        ev = EVALUATORS.get(metric)
        if ev.needs_labels and not data.labeled:
            raise SpecError(f"metric '{ev.name}' needs labels, and data '{data.name}' has none",
                            hint="use a label-free metric (agreement, cosine, output-error, perplexity) or "
                                 "labelled data")
        if ev.name in GENERATIVE and not isinstance(data.test, GenerativeSplit):
            raise SpecError(f"metric '{ev.name}' needs a denoising split with clean images; data '{data.name}' has none",
                            hint="use --data digits-ddpm with a diffusion model (example:digits-ddpm), or another "
                                 "metric")
        if ev.loss == "detection" and lm.task != "detect":
            raise SpecError(f"metric '{ev.name}' reads YOLO-layout detections; model '{lm.spec}' is "
                            f"{lm.task or 'not a detector'}", hint="use it with an ultralytics: detect model")
        if ev.name == "perplexity" and lm.task != "causal-lm":
            raise SpecError(f"metric 'perplexity' needs a causal LM; model '{lm.spec}' is "
                            f"{lm.task or 'not a language model'}", hint="pass --task causal-lm, or another metric")
        return ev.name
    if data.labeled:
        return EVALUATORS.get(data.metric).name
    if data.synthetic and lm.metric == "perplexity":
        return "agreement"  # the perplexity of random tokens means nothing; next-token agreement still does
    if data.synthetic and lm.metric == "det-agreement":
        return "output-error"  # a detector finds nothing in noise: compare its raw output instead
    return EVALUATORS.get(lm.metric or data.metric or "agreement").name
