"""``example:digits-ddpm`` and its data source ``digits-ddpm``.

The model is :class:`stages.load.unet.DigitsUNet` (width 16, 0.5 M parameters, 57 M MACs a call) trained
by :mod:`stages.load.train_digits_ddpm` as a DDPM on the digits train split; its contract has two inputs
of different shapes, ``sample`` (1 x 32 x 32) and ``timestep`` (a float per sample), packed flat
(:mod:`stages.model.contract`), and one output, the predicted noise.

The data source gives the denoising task on the digits splits (:func:`stages.load.data.digits_splits`):
packed ``(x_t, t)`` inputs with the true noise as the label (``denoise-loss``'s and the gradient criteria's
target), fixed seeds, 4 noisings an image in the train split and one in calib and test. Each split also
carries what the generative evaluator needs (:class:`stages.model.diffusion.GenerativeSplit`): its clean
images and the feature extractor, the embedded digits classifier (``example:digits-resnet``) up to its
pooled penultimate layer.
"""

from __future__ import annotations

import torch
from torch import nn

from core.errors import SpecError
from stages.load.cifar_resnet import digits_resnet, load_shipped
from stages.load.data import DATA_SOURCES, DataBundle, DataRequest, digits_splits
from stages.load.unet import DigitsUNet
from stages.model.contract import ContractModel, InputSpec, ModelIO, OutputSpec
from stages.model.diffusion import GenerativeSplit, Schedule, denoising_pairs

WEIGHTS = "digits_ddpm_unet16.pt"
SHAPE = (1, 32, 32)
UNET = {"width": 16, "mults": (1, 2, 4), "heads": 4}
DRAWS = {"train": 4, "calib": 1, "test": 1}  # noisings of each image
SEEDS = {"train": 11, "calib": 12, "test": 13}


def ddpm_io() -> ModelIO:
    return ModelIO((InputSpec("sample", "float32", SHAPE), InputSpec("timestep", "float32", ())),
                   OutputSpec(None, "noise"))


def digits_ddpm(pretrained: bool = True, **arch: object) -> ContractModel:
    """The U-Net behind the packed contract, with the shipped weights (or freshly initialised)."""
    unet = DigitsUNet(**{**UNET, **arch})
    if pretrained:
        load_shipped(unet, WEIGHTS, "stages.load.train_digits_ddpm")
    model = ContractModel(unet, ddpm_io())
    model.diffusion = Schedule()  # marks the model as a noise predictor (criteria, evaluators, report)
    return model.eval()


class DigitsFeatures(nn.Module):
    """The embedded digits classifier up to its pooled penultimate layer (128 features an image)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = digits_resnet()

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        h = n.layer3(n.layer2(n.layer1(n.relu(n.bn1(n.conv1(x))))))
        return torch.flatten(n.pool(h), 1)


@DATA_SOURCES.register("digits-ddpm")
def _digits_ddpm(arg: str, req: DataRequest) -> DataBundle:
    """The digits splits as denoising pairs for a 1 x 32 x 32 noise predictor (see the module doc)."""
    want = (1025,)
    if req.input_shape is not None and tuple(req.input_shape) != want:
        raise SpecError(f"data 'digits-ddpm' is for a 1x32x32 diffusion model (sample + timestep, packed {want[0]}), "
                        f"but the model's packed sample is {tuple(req.input_shape)}",
                        hint="use --model example:digits-ddpm, or data that fits your model")
    features = DigitsFeatures().eval()
    splits = {}
    for name, (x0, _) in zip(("train", "calib", "test"), digits_splits()):
        packed, eps = denoising_pairs(x0, DRAWS[name], SEEDS[name])
        splits[name] = GenerativeSplit(packed, eps, images=x0, features=features, shape=SHAPE)
    return DataBundle("digits-ddpm", splits["train"], splits["calib"], splits["test"], want,
                      metric="fid-digits", labeled=True)
