"""Stage ``recover``: give a pruned model its accuracy back.

- :mod:`stages.recover.distill`: knowledge distillation from the unpruned model (KD + CE);
- :mod:`stages.recover.soft`: gradient-flow soft masks before the hard removal.
"""

from stages.recover.distill import DistillSettings, distill, kd_batch_loss, kd_loss, materialise

__all__ = ["DistillSettings", "distill", "kd_batch_loss", "kd_loss", "materialise"]
