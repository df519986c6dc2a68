"""CIFAR-style ResNet (He et al. 2016, §4.2): 3 stages of basic blocks, 6n+2 layers.

This is the architecture family used by the AAP, DepGraph and DPM papers (ResNet-20/56 on CIFAR).
Shortcuts between stages use a 1x1 convolution + BN ("option B"), which exports cleanly to ONNX
and is handled by Torch-Pruning's dependency graph.
"""

from __future__ import annotations

from importlib import resources

import torch
from torch import nn

from core.errors import ModelLoadError


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=False)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for small images.

    Args:
        depth: 20, 32, 44, 56, 110 ...
        width: Channels of the first stage (16 in the paper); stages use width, 2w, 4w.
        in_channels: Input channels (1 for digits, 3 for CIFAR).
        num_classes: Classifier outputs.
    """

    def __init__(self, depth: int = 20, width: int = 16, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=False)
        layers = []
        cin = width
        for i, cout in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(cin, cout, stride))
                cin = cout
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


DIGITS_RESNET = {"depth": 20, "width": 32, "in_channels": 1, "num_classes": 10}
DIGITS_WEIGHTS = "digits_resnet20_w32.pt"


def load_shipped(model: nn.Module, weights: str, script: str) -> nn.Module:
    """``model`` with the state_dict shipped as ``stages/load/weights/<weights>`` (made by ``python -m <script>``)."""
    ref = resources.files("stages.load") / "weights" / weights
    with resources.as_file(ref) as p:
        if not p.is_file():
            raise ModelLoadError(f"embedded weights missing: {p}",
                                 hint=f"reinstall the package or run `python -m {script}`")
        model.load_state_dict(torch.load(p, weights_only=True, map_location="cpu"))
    return model


def digits_resnet(pretrained: bool = True) -> nn.Module:
    """The embedded default: ResNet-20 (width 32) trained on digits; weights ship with the package."""
    model = CifarResNet(**DIGITS_RESNET)
    if pretrained:
        load_shipped(model, DIGITS_WEIGHTS, "stages.load.train_digits")
    return model.eval()
