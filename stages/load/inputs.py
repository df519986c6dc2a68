"""The model and data of a run, loaded together (the load stage and every ``pipeline worker``)."""

from __future__ import annotations

import torch

from core.errors import SpecError
from stages.load.data import DataBundle, load_data, with_model_labels
from stages.load.models import LoadedModel, ModelRequest, load_model


def load_inputs(req: ModelRequest, data_spec: str, seed: int) -> tuple[LoadedModel, DataBundle]:
    """Load the model of ``req`` and the data of ``data_spec`` (seeded); check their shapes agree; give
    unlabeled data the model's own labels (fidelity).

    Raises:
        SpecError: the data's samples do not have the model's input shape.
    """
    torch.manual_seed(seed)
    lm = load_model(req)
    data = load_data(data_spec, lm.input_shape)
    if tuple(data.input_shape) != tuple(lm.input_shape):
        raise SpecError(f"data '{data_spec}' gives samples of shape {data.input_shape}, model expects "
                        f"{lm.input_shape}", hint="pass --input-shape or use matching data")
    if not data.labeled:
        data = with_model_labels(data, lm.module)
    return lm, data
