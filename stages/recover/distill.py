"""Stage ``recover`` (optional): knowledge distillation from the unpruned teacher.

Loss = ``alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) + (1 - alpha) * CE(s, y)``; without
labels (``random`` data) the CE term is dropped. SGD with Nesterov momentum and a cosine
schedule, seeded: on the CPU the same inputs give the same weights.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 150
    batch_size: int = 64
    lr: float = 0.01
    temperature: float = 4.0
    alpha: float = 0.5
    weight_decay: float = 5e-4
    seed: int = 0
    # the cosine schedule runs over ``schedule_steps`` (None: ``steps``) and starts at
    # ``schedule_start``: a run split in two phases (soft masks, then plain KD) keeps one schedule
    schedule_start: int = 0
    schedule_steps: int | None = None

    def lr_at(self, step: int) -> float:
        """Learning rate of this run's ``step`` (0-based) on the cosine schedule."""
        total = self.schedule_steps or self.steps
        return self.lr * 0.5 * (1 + math.cos(math.pi * (self.schedule_start + step) / max(total, 1)))


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, t: float,
            alpha: float) -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)`` (no CE at alpha 1)."""
    soft = F.softmax(teacher_logits / t, dim=1)
    loss = alpha * (t * t) * F.kl_div(F.log_softmax(student_logits / t, dim=1), soft, reduction="batchmean")
    if alpha < 1.0:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, y)
    return loss


def kd_batch_loss(student: nn.Module, teacher: nn.Module, xs: torch.Tensor, ys: torch.Tensor, batch_size: int,
                  gen: torch.Generator, t: float, alpha: float, device: torch.device | None = None) -> torch.Tensor:
    """One distillation step's loss: draw a batch with ``gen``, teacher logits without grad, the
    student in train mode. Shared by plain recovery and the soft-mask phase."""
    idx = torch.randint(0, len(xs), (min(batch_size, len(xs)),), generator=gen)
    x, y = xs[idx], ys[idx]
    if device is not None:
        x, y = x.to(device), y.to(device)
    with torch.no_grad():
        teacher_logits = teacher(x)
    student.train()
    return kd_loss(student(x), teacher_logits, y, t, alpha)


def distill(student: nn.Module, teacher: nn.Module, train: Dataset, settings: DistillSettings, labeled: bool,
            on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``student`` in place for ``settings.steps`` steps. Returns the loss record."""
    if settings.steps <= 0:
        return {"steps": 0}
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    xs, ys = materialise(train)
    teacher = teacher.eval()
    opt = torch.optim.SGD(student.parameters(), lr=settings.lr, momentum=0.9, nesterov=True,
                          weight_decay=settings.weight_decay)
    t, alpha = settings.temperature, settings.alpha if labeled else 1.0
    losses = []
    for step in range(settings.steps):
        for pg in opt.param_groups:
            pg["lr"] = settings.lr_at(step)
        loss = kd_batch_loss(student, teacher, xs, ys, settings.batch_size, g, t, alpha)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if on_step is not None:
            on_step(step + 1, losses[-1])
    student.eval()
    k = max(1, len(losses) // 10)
    return {"steps": settings.steps, "loss_first": sum(losses[:k]) / k, "loss_last": sum(losses[-k:]) / k}


def materialise(ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    tensors = getattr(ds, "tensors", None)
    if tensors is not None and len(tensors) == 2:
        return tensors[0], tensors[1]
    items = [ds[i] for i in range(len(ds))]
    return torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])
