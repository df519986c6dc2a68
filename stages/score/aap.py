"""AAP activation-attention score (Zhao, Jain, Zhao; arXiv 2201.10520, code: kaiqi123/Automatic-Attention-Pruning).

Per filter j of a layer with post-ReLU activation A (B x C x H x W):
``S_j = mean_{h,w}( (mean_b A[b, j, h, w]) ** p )`` (``pruning/model_module.py::prune_filters_by_AAP``).

Where we differ from the authors' code, on purpose:
- The authors score from the *last* forward batch; we average the batch-mean over all
  calibration batches, which is the same estimator with less variance.
- A group can couple several layers (residual adds). We observe each coupled layer's own output
  activation (its BatchNorm output, else the conv output), pass it through ReLU, score it as
  above, and average over the group's layers. For a plain conv-BN-ReLU this is exactly AAP.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.score.base import Needs, ScoreContext, register

POWER = 1.0  # p, the authors' scripts use --power_value 1


@register("aap", needs=Needs(forward=True), granularity="channel",
          source="AAP, Zhao et al., arXiv 2201.10520 / AISTATS'23 (methods.md §10)",
          summary="spatial mean of the batch-averaged post-ReLU activation ** p, per filter",
          params={"power": POWER})
@torch.no_grad()
def aap(ctx: ScoreContext, power: float | None = None) -> dict[str, torch.Tensor]:
    power = float(ctx.options.get("power", POWER)) if power is None else power
    modules = dict(ctx.model.named_modules())
    groups = ctx.graph.groups()
    watch: dict[str, str] = {}  # layer name -> group id
    for g in groups:
        norms = [n for n in g.out_layers if isinstance(modules[n], nn.modules.batchnorm._BatchNorm)]
        convs = [n for n in g.out_layers if isinstance(modules[n], (nn.Conv2d, nn.Linear))]
        for n in norms or convs:
            watch[n] = g.id
    sums: dict[str, torch.Tensor] = {}
    count = 0
    hooks = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(mod, nn.Linear) and out.dim() > 2:  # [B, L, C] token features: channels last
                out = out.movedim(-1, 1)
            a = torch.relu(out).mean(0)  # batch mean, per channel (and position)
            sums[name] = sums.get(name, 0) + a
        return fn

    for n in watch:
        hooks.append(modules[n].register_forward_hook(hook(n)))
    try:
        ctx.model.eval()
        for x, _ in ctx.calib_batches():
            ctx.model(x)
            count += 1
    finally:
        for h in hooks:
            h.remove()
    per_group: dict[str, list[torch.Tensor]] = {}
    for n, s in sums.items():
        a = (s / max(count, 1)).clamp_min(0) ** power
        score = a.flatten(1).mean(1) if a.dim() > 1 else a
        per_group.setdefault(watch[n], []).append(score)
    return {g.id: torch.stack(per_group[g.id]).mean(0) if g.id in per_group else torch.zeros(g.width)
            for g in groups}
