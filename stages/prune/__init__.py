"""Stage ``prune``: the plan (which channels each group keeps) applied to a copy of the model.

- :mod:`~stages.prune.plan`: policies, replayable plans, BN re-estimation;
- :mod:`~stages.prune.apply`: the pruner the search and the prune stage share (compensation, BN);
- :mod:`~stages.prune.compensate`: STADE's bias compensation over a plan;
- :mod:`~stages.prune.sparsify`: weight masks on top of the plan (``prune.sparsity``);
- :mod:`~stages.prune.depth`: which residual blocks depth pruning drops.
"""
