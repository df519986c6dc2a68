"""Stage ``recover``: give a pruned model its accuracy back.

- :mod:`stages.recover.distill`: knowledge distillation from the unpruned model (KD + CE);
- :mod:`stages.recover.soft`: gradient-flow soft masks before the hard removal;
- :mod:`stages.recover.dpm`: DPM, decaying channel norms with self-rectifying;
- :mod:`stages.recover.maskprune`: MaskPrune, learned masks under a minimax width constraint;
- :mod:`stages.recover.methods`: the registry of methods (``recovery.method``).
"""

from stages.recover.distill import DistillSettings, distill, kd_batch_loss, kd_loss, materialise
from stages.recover.methods import RECOVERIES, Recovered, RecoveryJob, RecoveryMethod

__all__ = ["RECOVERIES", "DistillSettings", "Recovered", "RecoveryJob", "RecoveryMethod", "distill", "kd_batch_loss",
           "kd_loss", "materialise"]
