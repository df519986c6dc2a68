"""Train ``example:digits-ddpm`` (:class:`stages.load.unet.DigitsUNet`, width 16) as a DDPM on the digits
train split at 32 x 32, deterministically. The weights ship in ``stages/load/weights/``; this script is how
they were made and how to reproduce them::

    python -m stages.load.train_digits_ddpm --out stages/load/weights/digits_ddpm_unet16.pt

The DDPM objective ``||eps_hat(x_t, t) - eps||^2`` with ``t`` uniform over the 1000 steps of
:class:`stages.model.diffusion.Schedule`; Adam (lr 2e-3, 100 warm-up steps, cosine decay), batch 96,
random +-1 px shifts; an exponential moving average of the weights (0.995) is what ships, its BatchNorm
statistics re-estimated on training batches. Seeded, CPU only, 2 threads. A JSON record of the settings,
losses, wall time and sample quality is written beside the weights (``.json``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from stages.load.data import digits_splits
from stages.load.train_digits import shift
from stages.model.diffusion import Schedule, denoising_pairs

SETTINGS = {"steps": 3000, "batch": 96, "lr": 2e-3, "warmup": 100, "ema": 0.995, "seed": 0, "width": 16,
            "mults": [1, 2, 4], "heads": 4}


@torch.no_grad()
def _ema(avg: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for a, p in zip(avg.parameters(), model.parameters()):
        a.mul_(decay).add_(p.detach(), alpha=1 - decay)


@torch.no_grad()
def _recalibrate(model: torch.nn.Module, x0: torch.Tensor, seed: int, batches: int = 40, batch: int = 96) -> None:
    """Re-estimate BatchNorm statistics of the averaged weights on noised training batches (cumulative mean)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    g = torch.Generator().manual_seed(seed + 1)
    for i in range(batches):
        idx = torch.randint(0, len(x0), (batch,), generator=g)
        packed, _ = denoising_pairs(x0[idx], 1, seed + 1000 + i)
        model(packed)
    model.eval()


def train(settings: dict = SETTINGS, log_every: int = 250) -> tuple[torch.nn.Module, dict]:
    from stages.load.ddpm import digits_ddpm

    s = settings
    torch.manual_seed(s["seed"])
    (x0, _), _, _ = digits_splits()
    model = digits_ddpm(pretrained=False, width=s["width"], mults=tuple(s["mults"]), heads=s["heads"])
    avg = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=s["lr"])
    g = torch.Generator().manual_seed(s["seed"])
    losses, t0 = [], time.time()
    for step in range(s["steps"]):
        model.train()
        idx = torch.randint(0, len(x0), (s["batch"],), generator=g)
        packed, eps = denoising_pairs(shift(x0[idx], g, max_px=1), 1, s["seed"] * 100003 + step)
        warm = min(1.0, (step + 1) / s["warmup"])
        for pg in opt.param_groups:
            pg["lr"] = s["lr"] * warm * 0.5 * (1 + math.cos(math.pi * step / s["steps"]))
        loss = (model(packed) - eps.reshape(len(eps), -1, 32, 32)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _ema(avg, model, s["ema"] if step > s["warmup"] else 0.0)
        losses.append(float(loss.detach()))
        if step % log_every == 0 or step == s["steps"] - 1:
            recent = sum(losses[-log_every:]) / len(losses[-log_every:])
            print(f"step {step:5d} loss {recent:.4f} ({time.time() - t0:.0f}s)", flush=True)
    _recalibrate(avg, x0, s["seed"])
    record = {"settings": s, "schedule": dataclasses.asdict(Schedule()),
              "wall_s": round(time.time() - t0, 1),
              "loss_per_250": [round(sum(losses[i:i + 250]) / len(losses[i:i + 250]), 5)
                               for i in range(0, len(losses), 250)],
              "torch": torch.__version__}
    return avg.eval(), record


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=SETTINGS["steps"])
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, record = train({**SETTINGS, "steps": args.steps})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.model.state_dict(), args.out)
    args.out.with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out} ({record['wall_s']} s)")


if __name__ == "__main__":
    main()
