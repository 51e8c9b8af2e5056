"""Vision encoders: images in [0, 1] -> a set of feature tokens for the VLA trunk.

Every encoder is an `nn.Module` with the same small contract (see `VisionEncoder`), built by
name through the explicit `VISION_ENCODERS` registry:

- `mobilenet_v2`: ImageNet MobileNetV2 (weights shipped offline), last 1280-ch feature map;
- `siglip`, `vit_hf`: transformers towers, loaded from a local directory or tiny and random;
- `small_vit`: a from-scratch ViT for the CPU-sized defaults;
- `resnet_film`: a from-scratch ResNet whose stages are FiLM-conditioned on a vector
  (e.g. the pooled instruction embedding, as in RT-1).

Each encoder normalises its own input (mean/std buffers, not saved in checkpoints), so callers
always pass float32 (B, 3, H, W) in [0, 1].
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robofm.errors import ConfigError
from robofm.models import mobilenet
from robofm.models.layers import Transformer
from robofm.models.mobilenet import mobilenet_weights_path
from robofm.models.sizes import VISION_SIZES, lookup

__all__ = ["VISION_ENCODERS", "VisionEncoder", "build_vision", "mobilenet_weights_path"]

HF_MEAN = (0.5, 0.5, 0.5)  # SigLIP and google/vit-* preprocessors map [0, 1] to [-1, 1]
HF_STD = (0.5, 0.5, 0.5)


def conv_out(n: int, kernel: int, stride: int, pad: int) -> int:
    """Spatial output size of a convolution over `n` pixels (PyTorch's floor formula)."""
    return (n + 2 * pad - kernel) // stride + 1


class VisionEncoder(nn.Module):
    """Base of all encoders: holds the contract attributes and the input normalisation.

    Attributes:
        width: C, channels of each output token.
        num_tokens: N, tokens per image at the `image_size` the encoder was built with.
        cond_dim: size of the conditioning vector (> 0 only for FiLM encoders).
        positional: the tokens already carry their place in the image (ViTs add position
            embeddings; a CNN's feature map carries little absolute position).
    """

    positional = False

    def __init__(
        self,
        width: int,
        num_tokens: int,
        cond_dim: int = 0,
        mean: tuple[float, ...] = HF_MEAN,
        std: tuple[float, ...] = HF_STD,
    ):
        super().__init__()
        self.width, self.num_tokens, self.cond_dim = int(width), int(num_tokens), int(cond_dim)
        # Non-persistent: the statistics belong to the architecture, not to a checkpoint.
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, H, W) standardised per channel."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        return (images - self.mean) / self.std

    def check_cond(self, cond: torch.Tensor | None) -> None:
        """Unconditioned encoders refuse a `cond` rather than silently ignoring it."""
        if cond is not None and not self.cond_dim:
            raise ValueError(f"{type(self).__name__} takes no conditioning, got cond")

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        """images float32 (B, 3, H, W) in [0, 1]; cond (B, cond_dim) or None -> (B, N, width)."""
        raise NotImplementedError


def feature_map_tokens(f: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) feature map -> (B, h*w, C) tokens in row-major order."""
    return f.flatten(2).transpose(1, 2)  # (B, h*w, C)


# ---- MobileNetV2 ---------------------------------------------------------------------------


class MobileNetEncoder(VisionEncoder):
    """ImageNet MobileNetV2 trunk. With `stride` 32 the tokens are the final 1280-channel map,
    (B, ceil(H/32)^2, 1280): a 3x3 grid at 96 px. With `stride` 16 they are block 13's
    96-channel map, (B, ceil(H/16)^2, 96): a 6x6 grid at 96 px, fine enough to place objects a
    few pixels wide, and the later blocks are not built. Only `features` is kept (the
    classifier is dropped), under torchvision's key names so its checkpoints map one to one.
    """

    def __init__(
        self, image_size: int, pretrained: bool = True, path: str | None = None, stride: int = 32
    ):
        if stride not in mobilenet.STRIDE_CUTS:
            raise ConfigError(
                f"mobilenet_v2 stride must be one of {sorted(mobilenet.STRIDE_CUTS)}, got {stride}"
            )
        keep, channels = mobilenet.STRIDE_CUTS[stride]
        grid = math.ceil(image_size / stride)
        super().__init__(channels, grid * grid, 0, mobilenet.IMAGENET_MEAN, mobilenet.IMAGENET_STD)
        self.stride = stride
        features = mobilenet.build_features()
        mobilenet.init_weights(features)
        self.frozen_bn = pretrained  # BatchNorm keeps its ImageNet statistics (see `train`)
        if pretrained:
            full = mobilenet.load_imagenet_state_dict(path)
            own = {k[len("features.") :]: v for k, v in full.items() if k.startswith("features.")}
            features.load_state_dict(own, strict=True)
        self.features = features[:keep]

    def train(self, mode: bool = True) -> MobileNetEncoder:
        """Pretrained weights keep BatchNorm in eval mode (frozen statistics, as detection and
        policy fine-tuning do): small robot batches would skew the ImageNet running stats,
        and training would see batch statistics the policy never sees at inference."""
        super().train(mode)
        if self.frozen_bn:
            for m in self.features.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_cond(cond)
        return feature_map_tokens(self.features(self.normalise(images)))  # (B, N, C)


# ---- transformers towers -------------------------------------------------------------------


def _side(v: int | tuple[int, ...] | list[int]) -> int:
    """HF configs store sizes as an int or an (h, w) pair; robofm uses square images."""
    return int(v if isinstance(v, int) else v[0])


def _processor_stats(path: str | None) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean/std from `path`/preprocessor_config.json when present, else the 0.5 default."""
    cfg = Path(path) / "preprocessor_config.json" if path else None
    if cfg is None or not cfg.is_file():
        return HF_MEAN, HF_STD
    d = json.loads(cfg.read_text())
    return tuple(d.get("image_mean", HF_MEAN)), tuple(d.get("image_std", HF_STD))


class HFVisionEncoder(VisionEncoder):
    """A transformers vision tower; tokens are `last_hidden_state` patch tokens, (B, N, hidden).

    `drop_cls`: the tower prepends one [CLS] token (ViT) that is removed, so N is always the
    patch grid, (image_size // patch)^2. When built at another resolution than the checkpoint,
    position embeddings are interpolated.
    """

    positional = True

    def __init__(self, model: nn.Module, image_size: int, drop_cls: bool, stats: tuple):
        cfg = model.config
        grid = image_size // _side(cfg.patch_size)
        super().__init__(cfg.hidden_size, grid * grid, 0, *stats)
        self.model, self.drop_cls = model, drop_cls
        self.interpolate = image_size != _side(cfg.image_size)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_cond(cond)
        dtype = next(self.model.parameters()).dtype
        x = self.normalise(images).to(dtype)
        out = self.model(pixel_values=x, interpolate_pos_encoding=self.interpolate)
        tokens = out.last_hidden_state  # (B, [1 +] N, hidden)
        if self.drop_cls:
            tokens = tokens[:, 1:]  # (B, N, hidden)
        return tokens.to(images.dtype)


def _hf_load(cls: type, path: str, **kwargs) -> nn.Module:
    """`cls.from_pretrained` from a local directory only; never reaches a model hub."""
    if not Path(path).is_dir():
        raise ConfigError(f"vision model directory {path!r} does not exist")
    return cls.from_pretrained(path, local_files_only=True, **kwargs)


def _warn_random(name: str, pretrained: bool) -> None:
    if pretrained:
        warnings.warn(
            f"vision encoder {name!r}: no `path` given, so a tiny randomly initialised tower is "
            "built; pass path=<local HF directory> for pretrained weights",
            stacklevel=3,
        )


# Test-sized HF tower: hidden 64, 2 layers, 2 heads, 8 px patches.
TINY_TOWER = dict(
    hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2, patch_size=8
)


def _random_tower_dims(name: str, size: str, pretrained: bool) -> dict:
    """Dimensions of a randomly initialised HF tower: a named full size, else tiny (with a
    warning when pretrained weights were asked for)."""
    if size:
        return lookup(VISION_SIZES, name, size)
    _warn_random(name, pretrained)
    return TINY_TOWER


def build_siglip(
    *, image_size: int, pretrained: bool, path: str | None, size: str = "", **_
) -> VisionEncoder:
    """SigLIP vision tower from `path`, a random one of a named `size` (robofm.models.sizes),
    or a tiny random one (hidden 64, 2 layers, patch 8)."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    if path:
        # The attention-pooling head is never used for tokens; dropping it keeps DDP happy.
        model = _hf_load(SiglipVisionModel, path, vision_use_head=False)
    else:
        dims = _random_tower_dims("siglip", size, pretrained)
        model = SiglipVisionModel(
            SiglipVisionConfig(**dims, image_size=image_size, vision_use_head=False)
        )
    return HFVisionEncoder(model, image_size, drop_cls=False, stats=_processor_stats(path))


def build_vit_hf(
    *, image_size: int, pretrained: bool, path: str | None, size: str = "", **_
) -> VisionEncoder:
    """HF ViT from `path`, a random one of a named `size`, or a tiny random one; the [CLS]
    token is dropped from the output."""
    from transformers import ViTConfig, ViTModel

    if path:
        model = _hf_load(ViTModel, path, add_pooling_layer=False)
    else:
        dims = _random_tower_dims("vit_hf", size, pretrained)
        model = ViTModel(ViTConfig(**dims, image_size=image_size), add_pooling_layer=False)
    return HFVisionEncoder(model, image_size, drop_cls=True, stats=_processor_stats(path))


# ---- from-scratch ViT ----------------------------------------------------------------------


class SmallViT(VisionEncoder):
    """Plain ViT: patchify conv -> learned position embedding -> pre-norm transformer blocks.

    The patch is image_size // 8 (at least 4 px), so N = 64 tokens from 32 px upward
    (16-64 below). Attention uses `scaled_dot_product_attention` (via `layers.Transformer`).
    """

    positional = True

    def __init__(self, image_size: int, width: int = 256, depth: int = 4, heads: int | None = None):
        patch = max(4, image_size // 8)
        grid = image_size // patch
        super().__init__(width, grid * grid)
        heads = heads or max(1, width // 64)
        if width % heads:
            heads = 1
        self.patch = patch
        self.embed = nn.Conv2d(3, width, patch, stride=patch)
        self.pos = nn.Parameter(torch.randn(1, grid * grid, width) * 0.02)
        self.blocks = Transformer(width, depth, heads)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        self.check_cond(cond)
        x = feature_map_tokens(self.embed(self.normalise(images)))  # (B, N, C)
        if x.shape[1] != self.pos.shape[1]:
            raise ValueError(
                f"small_vit built for {self.num_tokens} tokens got {x.shape[1]}; "
                f"images must be the image_size it was built with"
            )
        return self.blocks(x + self.pos)  # (B, N, C)


def build_small_vit(*, image_size: int, width: int, **_) -> VisionEncoder:
    """From-scratch ViT of embedding width `width`, 4 blocks."""
    return SmallViT(image_size, width)


# ---- from-scratch ResNet with FiLM ---------------------------------------------------------


def group_norm(c: int) -> nn.GroupNorm:
    """GroupNorm with up to 8 groups: batch-size independent, so cached features stay fixed."""
    return nn.GroupNorm(math.gcd(8, c), c)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and a (projected when needed) residual."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = group_norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = group_norm(cout)
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), group_norm(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.skip(x) + self.norm2(self.conv2(h)))


class FiLM(nn.Module):
    """Feature-wise affine modulation h * (1 + gamma) + beta, gamma/beta = Linear(cond).

    The linear is zero-initialised so a fresh FiLM layer is exactly the identity.
    """

    def __init__(self, cond_dim: int, channels: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.proj(cond)[:, :, None, None].chunk(2, dim=1)  # each (B, C, 1, 1)
        return h * (1 + gamma) + beta


class ResNetFiLM(VisionEncoder):
    """Small ResNet (stem + 4 stages of channels width/8, /4, /2, width) with FiLM per stage.

    Stride 2 in the stem and in stages 2-4, so tokens = the (ceil(H/16))^2 final map:
    16 tokens at 64 px, 36 at 96 px.
    """

    STAGE_STRIDES = (1, 2, 2, 2)

    def __init__(self, image_size: int, width: int, cond_dim: int):
        chans = [max(1, width >> (3 - i)) for i in range(4)]
        side = conv_out(image_size, 3, 2, 1)
        for s in self.STAGE_STRIDES:
            side = conv_out(side, 3, s, 1)
        super().__init__(
            width, side * side, cond_dim, mobilenet.IMAGENET_MEAN, mobilenet.IMAGENET_STD
        )
        self.stem = nn.Sequential(
            nn.Conv2d(3, chans[0], 3, 2, 1, bias=False), group_norm(chans[0]), nn.ReLU()
        )
        cins = [chans[0], *chans[:-1]]
        self.stages = nn.ModuleList(
            BasicBlock(ci, co, s) for ci, co, s in zip(cins, chans, self.STAGE_STRIDES, strict=True)
        )
        self.films = nn.ModuleList(FiLM(cond_dim, c) for c in chans)

    def forward(self, images: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if cond is None:
            raise ValueError(
                f"resnet_film needs the conditioning vector `cond` (B, {self.cond_dim}), got None"
            )
        if cond.shape != (images.shape[0], self.cond_dim):
            raise ValueError(
                f"cond must be (B, cond_dim) = ({images.shape[0]}, {self.cond_dim}), "
                f"got {tuple(cond.shape)}"
            )
        h = self.stem(self.normalise(images))  # (B, C0, H/2, W/2)
        for stage, film in zip(self.stages, self.films, strict=True):
            h = film(stage(h), cond)
        return feature_map_tokens(h)  # (B, N, width)


def build_resnet_film(*, image_size: int, width: int, cond_dim: int, **_) -> VisionEncoder:
    """From-scratch FiLM ResNet; `cond_dim` (> 0) is the conditioning vector's size."""
    if cond_dim <= 0:
        raise ConfigError("vision encoder 'resnet_film' needs cond_dim > 0 (the FiLM input size)")
    return ResNetFiLM(image_size, width, cond_dim)


def build_mobilenet_v2(
    *, image_size: int, pretrained: bool, path: str | None, stride: int = 32, **_
) -> VisionEncoder:
    """MobileNetV2 with ImageNet weights (or `path`, a torchvision-layout .pth) or random init;
    `stride` 16 or 32 picks the token map (see `MobileNetEncoder`)."""
    return MobileNetEncoder(image_size, pretrained=pretrained, path=path, stride=stride)


# ---- registry ------------------------------------------------------------------------------

VISION_ENCODERS: dict[str, Callable[..., VisionEncoder]] = {
    "mobilenet_v2": build_mobilenet_v2,
    "siglip": build_siglip,
    "vit_hf": build_vit_hf,
    "small_vit": build_small_vit,
    "resnet_film": build_resnet_film,
}
CONDITIONED = frozenset({"resnet_film"})  # encoders that take a cond vector
ACCEPTS_PATH = frozenset({"mobilenet_v2", "siglip", "vit_hf"})  # encoders that load from `path`
STRIDED = frozenset({"mobilenet_v2"})  # encoders whose token-map stride is a choice


def build_vision(
    name: str,
    *,
    image_size: int,
    width: int = 256,
    cond_dim: int = 0,
    pretrained: bool = True,
    path: str | None = None,
    size: str = "",
    stride: int = 0,
) -> VisionEncoder:
    """Build the vision encoder registered as `name`.

    Args:
        name: a key of `VISION_ENCODERS`.
        image_size: square input resolution, px; fixes `num_tokens`.
        width: embedding width of the from-scratch encoders (pretrained ones keep theirs).
        cond_dim: conditioning-vector size; > 0 for FiLM encoders only.
        pretrained: load pretrained weights where the encoder has them.
        path: local weights: an HF directory (siglip, vit_hf) or a .pth (mobilenet_v2).
        size: a named full size of an HF tower (`robofm.models.sizes.VISION_SIZES`), random
            init; "" = tiny. Ignored when `path` is given.
        stride: output stride of the token map of a CNN encoder with a choice of maps
            (`STRIDED`: mobilenet_v2 16 or 32); 0 = the encoder's default.
    """
    if name not in VISION_ENCODERS:
        raise ConfigError(
            f"unknown vision encoder {name!r}; valid names: {', '.join(sorted(VISION_ENCODERS))}"
        )
    if image_size <= 0:
        raise ConfigError(f"image_size must be positive, got {image_size}")
    if cond_dim and name not in CONDITIONED:
        raise ConfigError(f"vision encoder {name!r} takes no conditioning (cond_dim={cond_dim})")
    if path and name not in ACCEPTS_PATH:
        raise ConfigError(f"vision encoder {name!r} is built from scratch and takes no path")
    if size and name not in VISION_SIZES:
        raise ConfigError(f"vision encoder {name!r} has no named sizes")
    if stride and name not in STRIDED:
        raise ConfigError(f"vision encoder {name!r} has one token map; vision_stride must be 0")
    kw: dict[str, Any] = {"size": size} if size else {}
    if stride:
        kw["stride"] = stride
    return VISION_ENCODERS[name](
        image_size=image_size,
        width=width,
        cond_dim=cond_dim,
        pretrained=pretrained,
        path=path,
        **kw,
    )
