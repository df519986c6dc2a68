"""Train the embedded default model (ResNet-20, width 32) on scikit-learn's digits, deterministically.

The trained weights ship in ``stages/load/weights/``; this script is how they were made and how
to reproduce them::

    python -m stages.load.train_digits --out stages/load/weights/digits_resnet20_w32.pt

SGD with momentum, cosine schedule, batch 64, random +-2 px shifts; seeded, CPU only.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stages.load.data import load_data
from stages.load.models import digits_resnet


def shift(x: torch.Tensor, g: torch.Generator, max_px: int = 2) -> torch.Tensor:
    """A random roll of the batch by up to ``max_px`` pixels in each direction (augmentation)."""
    dx, dy = (int(v) for v in torch.randint(-max_px, max_px + 1, (2,), generator=g))
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def evaluate(model: torch.nn.Module, ds: torch.utils.data.TensorDataset) -> float:
    x, y = ds.tensors
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(x[i:i + 256]).argmax(1) for i in range(0, len(x), 256)])
    return 100.0 * (pred == y).float().mean().item()


def train(steps: int = 1200, batch: int = 64, lr: float = 0.1, seed: int = 0) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    data = load_data("digits", None)
    x, y = data.train.tensors
    model = digits_resnet(pretrained=False)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    g = torch.Generator().manual_seed(seed)
    t0 = time.time()
    for step in range(steps):
        model.train()
        idx = torch.randint(0, len(x), (batch,), generator=g)
        xb = shift(x[idx], g)
        for pg in opt.param_groups:
            pg["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 200 == 0 or step == steps - 1:
            print(f"step {step:5d} loss {loss.item():.4f} calib {evaluate(model, data.calib):.2f}% "
                  f"({time.time() - t0:.0f}s)", flush=True)
    return model.eval(), evaluate(model, data.test)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", type=int, default=1200)
    args = ap.parse_args()
    torch.set_num_threads(2)
    model, acc = train(args.steps)
    print(f"test top-1 {acc:.2f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
