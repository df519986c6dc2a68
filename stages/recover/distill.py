"""Stage ``recover`` (optional): knowledge distillation from the unpruned teacher.

Loss (``DistillSettings.loss``):

- ``kl`` (class logits, token logits): ``alpha * T^2 * KL(softmax(s/T) || softmax(t/T)) +
  (1 - alpha) * CE(s, y)`` over the last axis (every token position of an LM is a row); without
  labels (``random``, ``text:`` data) the CE term is dropped;
- ``feature`` (embeddings, any output read by ``cosine`` / ``output-error``): the relative squared
  error ``||s - t||^2 / ||t||^2``, scale-free, so one learning rate fits every model;
- ``detection`` (YOLO-layout detector outputs, ``det-agreement`` / ``map50`` / ``map50-95``): the relative
  squared error of the class scores plus that of the boxes weighted by the teacher's best score at each anchor
  (:func:`detection_kd`); with labelled boxes (``yolo:``, ``shapes``) ``alpha`` times that plus ``1 - alpha``
  times the detector's own training loss (Ultralytics' ``v8DetectionLoss``, :meth:`YoloNet.detection_loss`), as
  ``kl`` adds the cross-entropy;
- ``pw`` (``recovery.loss: pw``, class logits with labels): the performance-weighted loss of Meyer &
  Wong (methods.md §8, from their code): ``mean_i w_i * CE(s_i, t_i)`` with ``w_i = a + (1 - a) *
  (1 - p_i)^g``, ``p_i`` the unpruned model's probability of the true class, and ``t_i`` the unpruned
  model's softmax where it classifies ``x_i`` correctly, else the one-hot label ("fixed labels").
  Samples the unpruned model finds hard weigh more, which is meant to keep the worst classes from
  paying for the cut. ``a`` = ``pw_min_weight`` (0.75), ``g`` = ``pw_gamma`` (5), the code's defaults;
  the teacher's softmax is taken at temperature 1 (the paper's code has no temperature).

:func:`loss_for` picks it from the run's metric. Optimiser (``DistillSettings.optimizer``):
``sgd`` (Nesterov momentum 0.9, weight decay 5e-4; default lr 0.01), ``adamw`` (betas 0.9 / 0.999,
weight decay 0.01; default lr 1e-4) or ``auto``: AdamW for transformers (a model with a recognised
self-attention, :mod:`stages.model.attention`, or token inputs), SGD otherwise. SGD at a CNN's
learning rate barely moves a transformer: on MiniLM at 56% pruning, 150 steps of SGD took the
cosine from 53.5 to 67.2 (docs/models.md). A cosine schedule, seeded: on the CPU the same inputs give
the same weights.

Token batches are cut to their longest unpadded sample before the forward passes
(:meth:`stages.model.contract.ContractModel.trim`): one-sentence samples padded to 128 tokens
otherwise cost the recovery 5-8x their real length; teacher and student see the same cut batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from stages.model.attention import attention_sites
from stages.model.contract import ContractModel
from stages.model.losses import pw_cross_entropy

DEFAULT_LR = {"sgd": 0.01, "adamw": 1e-4}
# diffusion models (a ``diffusion`` schedule): AdamW at 3e-3. Measured on example:digits-ddpm, 50% magnitude, 200 steps of
# noise-prediction distillation: test denoise MSE 0.0378 (SGD 0.01) / 0.0242 (AdamW 1e-3) / 0.0200 (AdamW 3e-3)
DIFFUSION_LR = 3e-3


@dataclass(frozen=True)
class DistillSettings:
    steps: int = 150
    batch_size: int = 64
    lr: float | None = None  # None: DEFAULT_LR of the optimiser
    temperature: float = 4.0
    alpha: float = 0.5
    weight_decay: float = 5e-4
    seed: int = 0
    # the cosine schedule runs over ``schedule_steps`` (None: ``steps``) and starts at
    # ``schedule_start``: a run split in two phases (soft masks, then plain KD) keeps one schedule
    schedule_start: int = 0
    schedule_steps: int | None = None
    loss: str = "kl"  # "kl", "feature", "detection" (loss_for) or "pw" (performance-weighted, pw_loss)
    pw_min_weight: float = 0.75  # the PW loss's a
    pw_gamma: float = 5.0  # the PW loss's g
    optimizer: str = "auto"  # "auto", "sgd" or "adamw" (make_optimizer)
    task: str = "classes"  # the metric's task-loss kind (stages.model.losses), for gradient-flow soft masks

    def lr_at(self, step: int, base: float | None = None) -> float:
        """Learning rate of this run's ``step`` (0-based) on the cosine schedule, from ``base`` (default:
        ``lr``, else the SGD default)."""
        total = self.schedule_steps or self.steps
        lr = base if base is not None else (self.lr if self.lr is not None else DEFAULT_LR["sgd"])
        return lr * 0.5 * (1 + math.cos(math.pi * (self.schedule_start + step) / max(total, 1)))


def is_transformer(model: nn.Module) -> bool:
    """A model with a recognised self-attention, or one that takes token inputs."""
    if isinstance(model, ContractModel) and model.io.integer:
        return True
    return bool(attention_sites(model))


def make_optimizer(model: nn.Module, settings: DistillSettings) -> tuple[torch.optim.Optimizer, float]:
    """The recovery optimiser of ``settings.optimizer`` (``auto``: AdamW for a transformer (:func:`is_transformer`)
    or a diffusion model, at :data:`DIFFUSION_LR` for the latter; else SGD) and its base learning rate."""
    kind = settings.optimizer
    diffusion = getattr(model, "diffusion", None) is not None
    if kind == "auto":
        kind = "adamw" if is_transformer(model) or diffusion else "sgd"
    lr = settings.lr if settings.lr is not None else (DIFFUSION_LR if diffusion and kind == "adamw" else DEFAULT_LR[kind])
    if kind == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01), lr
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                           weight_decay=settings.weight_decay), lr


# diffusion: noise-prediction matching; segmentation: the logits map
FEATURE_METRICS = ("cosine", "output-error", "fid-digits", "denoise-loss", "seg-agreement")
DETECTION_METRICS = ("det-agreement", "map50", "map50-95")  # YOLO layout [batch, 4 + classes, anchors]


def loss_for(metric: str | None) -> str:
    """``detection`` for detector metrics, ``feature`` for outputs compared as vectors (cosine, output-error), else
    ``kl``."""
    if metric in DETECTION_METRICS:
        return "detection"
    return "feature" if metric in FEATURE_METRICS else "kl"


def detection_kd(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Distillation of a YOLO-layout output ``[batch, 4 + classes, anchors]``: the relative squared error of the
    class scores over every anchor, plus that of the boxes weighted by the teacher's best class score at each anchor
    (a background anchor's box means nothing; in pixels, unweighted boxes drown the scores)."""
    sb, tb, ss, ts = student[:, :4], teacher[:, :4], student[:, 4:], teacher[:, 4:]
    w = ts.max(1, keepdim=True).values.detach()
    boxes = (w * (sb - tb).pow(2)).sum() / (w * tb.pow(2)).sum().clamp_min(1e-12)
    return boxes + (ss - ts).pow(2).sum() / ts.pow(2).sum().clamp_min(1e-12)


def pw_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, min_weight: float = 0.75,
            gamma: float = 5.0) -> torch.Tensor:
    """The performance-weighted cross-entropy (module doc; :func:`stages.model.losses.pw_cross_entropy`)."""
    if student_logits.dim() > 2 or y.dim() != 1:
        raise ValueError("the PW loss needs class logits (batch, classes) and one class label per sample")
    return pw_cross_entropy(student_logits, teacher_logits, y, min_weight, gamma)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor, t: float,
            alpha: float, loss: str = "kl") -> torch.Tensor:
    """``alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, y)`` (no CE at alpha 1) over
    the last axis; ``loss="feature"``: the relative squared error of the outputs."""
    if loss == "feature":
        return (student_logits - teacher_logits).pow(2).sum() / teacher_logits.pow(2).sum().clamp_min(1e-12)
    if loss == "detection":
        return detection_kd(student_logits, teacher_logits)
    if teacher_logits.dim() > 2:
        student_logits = student_logits.reshape(-1, student_logits.shape[-1])
        teacher_logits = teacher_logits.reshape(-1, teacher_logits.shape[-1])
    soft = F.softmax(teacher_logits / t, dim=1)
    loss = alpha * (t * t) * F.kl_div(F.log_softmax(student_logits / t, dim=1), soft, reduction="batchmean")
    if alpha < 1.0:
        loss = loss + (1 - alpha) * F.cross_entropy(student_logits, y)
    return loss


def kd_batch_loss(student: nn.Module, teacher: nn.Module, xs: torch.Tensor, ys: torch.Tensor, batch_size: int,
                  gen: torch.Generator, t: float, alpha: float, device: torch.device | None = None,
                  loss: str = "kl", pw: tuple[float, float] = (0.75, 5.0)) -> torch.Tensor:
    """One distillation step's loss: draw a batch with ``gen``, teacher logits without grad, the
    student in train mode. Shared by plain recovery and the soft-mask phase."""
    idx = torch.randint(0, len(xs), (min(batch_size, len(xs)),), generator=gen)
    x, y = xs[idx], ys[idx]
    if isinstance(teacher, ContractModel):
        x = teacher.trim(x)
    if device is not None:
        x, y = x.to(device), y.to(device)
    with torch.no_grad():
        teacher_logits = teacher(x)
    student.train()
    if loss == "pw":
        return pw_loss(student(x), teacher_logits, y, *pw)
    task_loss = getattr(getattr(student, "model", None), "detection_loss", None)
    if loss == "detection" and task_loss is not None and alpha < 1.0:
        out, task = task_loss(x, y)  # labelled boxes: the detector's own training loss beside distillation
        return alpha * detection_kd(out, teacher_logits) + (1 - alpha) * task
    return kd_loss(student(x), teacher_logits, y, t, alpha, loss)


def distill(student: nn.Module, teacher: nn.Module, train: Dataset, settings: DistillSettings, labeled: bool,
            on_step: Callable[[int, float], None] | None = None) -> dict:
    """Train ``student`` in place for ``settings.steps`` steps. Returns the loss record."""
    if settings.steps <= 0:
        return {"steps": 0}
    torch.manual_seed(settings.seed)
    g = torch.Generator().manual_seed(settings.seed)
    xs, ys = materialise(train)
    teacher = teacher.eval()
    opt, base_lr = make_optimizer(student, settings)
    t, alpha = settings.temperature, settings.alpha if labeled else 1.0
    losses = []
    for step in range(settings.steps):
        for pg in opt.param_groups:
            pg["lr"] = settings.lr_at(step, base_lr)
        loss = kd_batch_loss(student, teacher, xs, ys, settings.batch_size, g, t, alpha, loss=settings.loss,
                             pw=(settings.pw_min_weight, settings.pw_gamma))
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
