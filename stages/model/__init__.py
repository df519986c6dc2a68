"""The ground floor of ``stages``: what every stage knows about a model's structure.

- :mod:`~stages.model.graph`: the Torch-Pruning adapter (prunable groups, importance, removal), the
  only importer of ``torch_pruning``;
- :mod:`~stages.model.calib`: per-layer input statistics on calibration data;
- :mod:`~stages.model.masks`: weight-level (unstructured, N:M) masks;
- :mod:`~stages.model.bias`: bias compensation of removed inputs (STADE's shift);
- :mod:`~stages.model.blocks`: removable residual blocks (depth pruning);
- :mod:`~stages.model.cost`: MACs, params and the per-layer MAC terms a latency model needs.

It imports only ``core`` (and torch / torch_pruning), never another stage.
"""
