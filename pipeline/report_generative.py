"""The report's diffusion part: generative metrics of the unpruned and the final engine, the time of a sampling
run, and ``samples.png`` (the same seeds sampled by both), for models with a ``diffusion`` schedule."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from core.io import atomic_write_bytes

PLOT = "samples.png"


def measure_generative(state: Any, base_engine, final_engine) -> dict | None:
    """For a diffusion model on a denoising split: :func:`stages.evaluate.generative.generative_record` through
    both engines' runners, ``samples.png`` written to the run folder. None for other models."""
    from stages.evaluate.generative import generative_record
    from stages.model.diffusion import GenerativeSplit

    if getattr(state.loaded.module, "diffusion", None) is None or not isinstance(state.data.test, GenerativeSplit):
        (Path(state.run_dir) / PLOT).unlink(missing_ok=True)
        return None
    with state.target.runner(base_engine) as rb, state.target.runner(final_engine) as rf:
        rec, grids = generative_record(rb, rf, state.data.test)
    atomic_write_bytes(Path(state.run_dir) / PLOT, samples_png(grids))
    return {**rec, "plot": PLOT}


def samples_png(grids: dict[str, torch.Tensor], cols: int = 8) -> bytes:
    """Side-by-side grids (one panel per entry, ``cols`` samples a row) of samples in [-1, 1]."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(0.4 * cols * len(grids) + 0.4, 0.4 * cols + 0.8), dpi=120)
    for k, (name, x) in enumerate(grids.items()):
        ax = fig.add_subplot(1, len(grids), k + 1)
        ax.imshow(tile(x, cols).numpy(), cmap="gray", vmin=-1, vmax=1)
        ax.set_title(name, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def tile(x: torch.Tensor, cols: int = 8, pad: int = 2) -> torch.Tensor:
    """``[N, 1, H, W]`` samples as one ``[rows*(H+pad), cols*(W+pad)]`` image (clipped to [-1, 1])."""
    n, _, h, w = x.shape
    rows = -(-n // cols)
    out = torch.full((rows * (h + pad), cols * (w + pad)), -1.0)
    for i in range(n):
        r, c = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = x[i, 0].clamp(-1, 1)
    return out


def generative_lines(g: dict | None) -> list[str]:
    if not g:
        return []
    fid, mse, secs = g["fid_digits"], g["denoise_mse"], g["sampling_run_s"]
    return ["", "## Generation", "",
            f"Sampler: {g['sampler']}; {g['samples']} samples against the test split's images. `fid-digits` is a "
            "Fréchet distance on the embedded digits classifier's features: a proxy for FID, not FID.", "",
            "| | baseline | final |", "|---|---|---|",
            f"| fid-digits (lower is better) | {fid['baseline']:.3f} | {fid['final']:.3f} |",
            f"| denoise MSE (test pairs) | {mse['baseline']:.5f} | {mse['final']:.5f} |",
            f"| sampling run, {secs['steps']} steps, batch {secs['batch']} (s) | {secs['baseline']:.4f} | "
            f"{secs['final']:.4f} |", "",
            f"LD-Pruner's latent statistic (final vs baseline samples, same seeds): {g['latent_statistic']:.4f}.", "",
            f"![samples: baseline and final, same seeds]({g['plot']})", ""]
