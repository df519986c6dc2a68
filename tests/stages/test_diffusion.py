"""Diffusion models: flat packing of (x_t, t), the U-Net's pruning / export / parity, the sampler, the generative
evaluators and LD-Pruner on sampled latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from core.errors import ConfigError, SpecError
from stages.load.ddpm import digits_ddpm
from stages.model.contract import InputSpec, ModelIO
from stages.model.diffusion import (
    GenerativeSplit,
    Schedule,
    ddim_sample,
    denoising_pairs,
    frechet_distance,
    latent_statistic,
    start_noise,
)


@pytest.fixture(scope="module")
def unet():
    torch.manual_seed(0)
    return digits_ddpm(pretrained=False)


def test_flat_packing_round_trip_keeps_shapes_and_integer_values():
    io = ModelIO((InputSpec("sample", "float32", (1, 4, 4)), InputSpec("step", "int64", ())))
    assert io.flat and io.sample_shape() == (17,) and io.dtype == torch.float32 and not io.integer
    x, t = torch.randn(3, 1, 4, 4), torch.tensor([0, 999, 12345])
    packed = io.pack({"sample": x, "step": t})
    assert packed.shape == (3, 17)
    back = io.unpack(packed)
    assert torch.equal(back["sample"], x) and torch.equal(back["step"], t) and back["step"].dtype == torch.int64
    assert [a.shape for a in io.example(2)] == [(2, 1, 4, 4), (2,)]


def test_flat_packing_refuses_a_named_axis():
    with pytest.raises(SpecError, match="named dynamic axis"):
        ModelIO((InputSpec("image", "float32", (3, 8, 8)), InputSpec("ids", "int64", ("sequence",))))


def test_ort_feed_splits_a_flat_batch():
    from types import SimpleNamespace

    from targets.ort.worker import feed_of

    inputs = [SimpleNamespace(name="sample", shape=["batch", 1, 2, 2], type="tensor(float)"),
              SimpleNamespace(name="timestep", shape=["batch"], type="tensor(float)")]
    x = np.arange(10, dtype=np.float32).reshape(2, 5)
    feed = feed_of(inputs, x)
    assert feed["sample"].shape == (2, 1, 2, 2) and feed["timestep"].tolist() == [4.0, 9.0]


def test_sampler_is_deterministic_and_schedule_sane(unet):
    s = Schedule()
    ab = s.alpha_bar()
    assert ab[0] > 0.999 and ab[-1] < 1e-4 and s.timesteps(5) == [999, 749, 500, 250, 0]
    noise = start_noise(3, (1, 32, 32), 7)
    a = ddim_sample(unet, noise, 4, batch=2)
    b = ddim_sample(unet, start_noise(3, (1, 32, 32), 7), 4, batch=3)
    assert torch.allclose(a, b, atol=1e-5) and a.shape == (3, 1, 32, 32)


def test_denoising_pairs_are_the_forward_process():
    x0 = torch.rand(5, 1, 32, 32) * 2 - 1
    packed, eps = denoising_pairs(x0, 2, seed=3)
    assert packed.shape == (10, 1025) and eps.shape == (10, 1, 32, 32)
    t = packed[:, 1024].long()
    ab = Schedule().alpha_bar()[t].float().view(-1, 1, 1, 1)
    xt = packed[:, :1024].reshape(10, 1, 32, 32)
    assert torch.allclose(xt, ab.sqrt() * x0.repeat(2, 1, 1, 1) + (1 - ab).sqrt() * eps, atol=1e-5)
    assert torch.equal(denoising_pairs(x0, 2, seed=3)[0], packed)


def test_frechet_distance_and_latent_statistic():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 8, generator=g)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = frechet_distance(a, a + 1.0)
    assert shifted == pytest.approx(8.0, rel=1e-6)  # ||mu||^2 of a shift by 1 in 8 dims, same covariance
    assert latent_statistic(a, a) == 0.0 and latent_statistic(a, 2 * a) > 0


def test_unet_prunes_exports_with_both_inputs_and_passes_parity(unet, tmp_path):
    from stages.export import ExportSettings, export_onnx
    from stages.model.graph import PruneGraph, count_macs_params
    from stages.prune.plan import apply_plan, make_plan, uniform_ratios
    from targets.ort.runner import OrtRunner

    ex = torch.randn(2, 1025)
    graph = PruneGraph(unet, ex)
    groups = graph.groups()
    assert any(g.heads == 4 for g in groups), "the attention's heads are a head group"
    scores = {g.id: torch.arange(g.width, dtype=torch.float32) for g in groups}
    pruned = apply_plan(unet, ex, make_plan(groups, scores, uniform_ratios(groups, 0.5), round_to=None))
    assert count_macs_params(pruned, ex)[0] < 0.5 * count_macs_params(unet, ex)[0]
    export_onnx(pruned, (1025,), tmp_path / "m.onnx", ExportSettings())
    packed, _ = denoising_pairs(torch.rand(4, 1, 32, 32), 1, seed=0)
    with OrtRunner(tmp_path / "m.onnx") as r:
        assert r.input_names == ["sample", "timestep"]
        out = r.run(packed.numpy())
    with torch.no_grad():
        assert np.abs(out - pruned(packed).numpy()).max() < 1e-4


@pytest.fixture(scope="module")
def splits():
    from stages.load.data import load_data

    return load_data("digits-ddpm", None)


def test_fid_digits_is_small_between_real_splits_and_large_for_noise(splits):
    from stages.model.diffusion import sample_features

    test = splits.test
    ref = test.reference_features()
    real = frechet_distance(sample_features(test, splits.train.images), ref)
    noise = frechet_distance(sample_features(test, torch.randn(450, 1, 32, 32, generator=torch.Generator().manual_seed(0))), ref)
    assert real < 0.1 * noise, (real, noise)


def test_generative_metrics_need_a_denoising_split():
    from stages.evaluate import evaluate
    from stages.evaluate.generative import evaluate_fid_digits  # noqa: F401 - registered

    with pytest.raises(SpecError, match="denoising split"):
        evaluate("fid-digits", None, torch.utils.data.TensorDataset(torch.zeros(2, 3), torch.zeros(2)))


def test_denoise_loss_is_the_ddpm_objective(unet, splits):
    from stages.evaluate import TorchRunner, evaluate

    sub = GenerativeSplit(*[t[:64] for t in splits.test.tensors], images=splits.test.images, features=splits.test.features,
                          shape=(1, 32, 32))
    x, eps = sub.tensors
    with torch.no_grad():
        mse = float((unet(x) - eps).pow(2).mean())
    assert evaluate("denoise-loss", TorchRunner(unet), sub) == pytest.approx(-mse, rel=1e-5)


def test_ld_pruner_sampled_latents_scores_channels_and_blocks(unet):
    from stages.model.blocks import removable_blocks
    from stages.model.graph import PruneGraph
    from stages.score.ld_sampled import score_sampled

    graph = PruneGraph(unet, torch.randn(2, 1025))
    g = graph.groups()[0]
    blocks = removable_blocks(unet, graph.example_input)
    structures = [("block", b) for b in blocks[:2]] + [("channel", (g.id, c)) for c in range(3)]
    scores, calls = score_sampled(unet, structures, graph.channel_sites(), samples=4, steps=2)
    assert len(scores) == 5 and all(s >= 0 for s in scores) and max(scores) > 0
    # one structure at a time gives the same scores as all of them batched
    alone, _ = score_sampled(unet, structures[2:3], graph.channel_sites(), samples=4, steps=2)
    assert alone[0] == pytest.approx(scores[2], rel=1e-4, abs=1e-6)


def test_ld_pruner_steps_need_a_diffusion_model():
    from stages.score.ld_pruner import sampler_steps

    class Plain(torch.nn.Module):
        pass

    assert sampler_steps(Plain(), "auto") == 0 and sampler_steps(digits_ddpm(pretrained=False), "auto") == 10
    with pytest.raises(ConfigError, match="diffusion model"):
        sampler_steps(Plain(), "3")


def test_masks_at_a_norm_after_a_concatenation_make_the_removal_exact(unet):
    """A U-Net decoder's norm reads [h, skip]: its output carries the skip group's channels at an offset."""
    from stages.model.graph import PruneGraph
    from stages.prune.plan import apply_plan, make_plan, uniform_ratios
    from stages.recover.soft import ChannelMasks

    ex = torch.randn(2, 1025)
    graph = PruneGraph(unet, ex)
    maps = graph.site_index()
    assert maps["model.stem"]["model.up.2.norm1"][0].tolist() == list(range(16, 32))
    groups = graph.groups()
    plan = make_plan(groups, {g.id: torch.randn(g.width, generator=torch.Generator().manual_seed(1))
                              for g in groups}, uniform_ratios(groups, 0.5), None)
    masks = ChannelMasks(unet, graph, plan)
    x, _ = denoising_pairs(torch.rand(6, 1, 32, 32), 1, seed=2)
    with torch.no_grad(), masks.attached():
        for gid, m in masks.values.items():
            m[masks.removed[gid]] = 0.0
        masked = unet(x)
    pruned = apply_plan(unet, ex, plan)
    with torch.no_grad():
        hard = pruned(x)
    assert torch.allclose(hard, masked, atol=1e-4), float((hard - masked).abs().max())
