"""Image transforms in plain torch (no torchvision): small callables composed in order.

Images are (..., 3, H, W) tensors: one image (3, H, W), a batch (B, 3, H, W), or a batch of
histories (B, T, 3, H, W). `ToFloat` brings dataset frames (uint8 H x W x 3, numpy or torch)
into that layout as float32 in [0, 1]; the geometric and colour transforms keep the dtype they
get (uint8 in, uint8 out, rounded), and expect float images in [0, 1].

Randomness: every random transform draws from an explicit `torch.Generator` (or an int seed),
so the same seed gives the same augmentations. For a leading batch axis, each sample b gets its
own draw, shared by any axes between B and the channels (a sample's history frames stay
aligned). In DataLoader workers, build the transform per worker with seed + worker_id: a
forked generator repeats its parent's draws.

`build_image_transform(size, train, seed)` gives the pipeline used for every camera: random
resized crop + colour jitter for training, and the deterministic centre crop with the same
expected framing for inference.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

Size = int | tuple[int, int]
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights, as torchvision's rgb_to_grayscale


def _pair(size: Size) -> tuple[int, int]:
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {size}")
    return int(h), int(w)


def _generator(generator: torch.Generator | int) -> torch.Generator:
    if isinstance(generator, torch.Generator):
        return generator
    return torch.Generator().manual_seed(int(generator))


def _check_image(x: Any, what: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim < 3 or x.shape[-3] != 3:
        shape = tuple(getattr(x, "shape", ()))
        raise ValueError(f"{what} expects a (..., 3, H, W) tensor, got {type(x).__name__} {shape}")


def _to_float(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """(float image in [0, 1], whether it was uint8)."""
    if x.dtype == torch.uint8:
        return x.to(torch.float32) / 255.0, True
    if not x.is_floating_point():
        raise ValueError(f"images must be uint8 or float, got {x.dtype}")
    return x, False


def _restore(x: torch.Tensor, was_uint8: bool) -> torch.Tensor:
    if was_uint8:
        return (x * 255.0).round().clamp(0, 255).to(torch.uint8)
    return x


def _per_sample(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """fn on (3, H, W) or on each x[b] of (B, ..., 3, H, W), with its own random draw each."""
    if x.ndim == 3:
        return fn(x)
    return torch.stack([fn(x[b]) for b in range(x.shape[0])])


def resize(x: torch.Tensor, size: tuple[int, int], antialias: bool = True) -> torch.Tensor:
    """Bilinear resize of (..., 3, H, W) to (..., 3, h, w); antialiased when shrinking."""
    _check_image(x, "resize")
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    xf, was_uint8 = _to_float(x)
    flat = xf.reshape(-1, *xf.shape[-3:])  # (N, 3, H, W)
    out = F.interpolate(
        flat, size=size, mode="bilinear", align_corners=False, antialias=antialias
    )  # (N, 3, h, w)
    return _restore(out.reshape(*xf.shape[:-2], *size), was_uint8)


class Compose:
    """Apply transforms in order: `Compose([ToFloat(), Resize(224)])(frame)`."""

    def __init__(self, transforms: Sequence[Callable[[Any], Any]]) -> None:
        self.transforms = list(transforms)

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x

    def __repr__(self) -> str:
        inner = ", ".join(type(t).__name__ for t in self.transforms)
        return f"Compose([{inner}])"


class ToFloat:
    """uint8 (or float) images, H x W x 3 or 3 x H x W, numpy or torch, with any leading axes
    -> float32 (..., 3, H, W) in [0, 1] (uint8 is divided by 255; float is kept as is).

    Layout is detected (last axis 3 and axis -3 not 3 means channels-last) unless
    `channels_last` says which it is.
    """

    def __init__(self, channels_last: bool | None = None) -> None:
        self.channels_last = channels_last

    def __call__(self, x: Any) -> torch.Tensor:
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(np.ascontiguousarray(x))
        elif not isinstance(x, torch.Tensor):
            raise ValueError(f"ToFloat expects a numpy array or tensor, got {type(x).__name__}")
        if x.ndim < 3:
            raise ValueError(f"ToFloat expects (..., H, W, 3) or (..., 3, H, W), got {x.shape}")
        hwc = self.channels_last
        if hwc is None:
            hwc = x.shape[-1] == 3 and x.shape[-3] != 3
        if hwc:
            x = x.movedim(-1, -3)  # (..., H, W, 3) -> (..., 3, H, W)
        _check_image(x, "ToFloat")
        x, _ = _to_float(x)
        return x.to(torch.float32).contiguous()


class Resize:
    """Bilinear resize with antialiasing. `size` (h, w) is exact; an int sets the shorter
    side and keeps the aspect ratio (torchvision's convention)."""

    def __init__(self, size: Size, *, antialias: bool = True) -> None:
        self.size = size
        self.antialias = antialias
        _pair(size)

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """(h, w) of the result for an h x w input."""
        if not isinstance(self.size, int):
            return _pair(self.size)
        if h <= w:
            return self.size, max(1, round(self.size * w / h))
        return max(1, round(self.size * h / w)), self.size

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, "Resize")
        return resize(x, self.output_size(*x.shape[-2:]), self.antialias)


class CenterCrop:
    """Crop the centre: `size` in pixels ((h, w) or int for square), or `fraction` of each
    side in (0, 1] (keeps the input's aspect ratio)."""

    def __init__(self, size: Size | None = None, *, fraction: float | None = None) -> None:
        if (size is None) == (fraction is None):
            raise ValueError("CenterCrop takes exactly one of size and fraction")
        if fraction is not None and not 0 < fraction <= 1:
            raise ValueError(f"CenterCrop fraction must be in (0, 1], got {fraction}")
        self.size = None if size is None else _pair(size)
        self.fraction = fraction

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, "CenterCrop")
        h, w = x.shape[-2:]
        if self.fraction is not None:
            ch, cw = max(1, round(h * self.fraction)), max(1, round(w * self.fraction))
        else:
            ch, cw = self.size  # type: ignore[misc]
        if ch > h or cw > w:
            raise ValueError(f"CenterCrop of {ch}x{cw} does not fit a {h}x{w} image")
        top, left = round((h - ch) / 2), round((w - cw) / 2)  # torchvision's rounding
        return x[..., top : top + ch, left : left + cw]


class RandomResizedCrop:
    """Crop a random box of `scale` x the image area with aspect `ratio`, resize to `size`.

    Unlike torchvision, `ratio` is relative to the input's own aspect (ratio 1 crops keep the
    image's shape), so non-square cameras are cropped without distortion on average and the
    inference centre crop (`build_image_transform`) frames the same way. Like torchvision, a
    box is drawn up to 10 times until it fits, then the whole image is used.
    """

    def __init__(
        self,
        size: Size,
        scale: tuple[float, float] = (0.8, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        *,
        generator: torch.Generator | int,
        antialias: bool = True,
    ) -> None:
        if not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
        if not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"ratio must satisfy 0 < low <= high, got {ratio}")
        self.size = _pair(size)
        self.scale = (float(scale[0]), float(scale[1]))
        self.ratio = (float(ratio[0]), float(ratio[1]))
        self.generator = _generator(generator)
        self.antialias = antialias

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def sample_box(self, h: int, w: int) -> tuple[int, int, int, int]:
        """(top, left, height, width) in pixels of a random crop of an h x w image."""
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            area = self._uniform(*self.scale)
            aspect = math.exp(self._uniform(*log_ratio))
            ch = round(h * math.sqrt(area / aspect))
            cw = round(w * math.sqrt(area * aspect))
            if 0 < ch <= h and 0 < cw <= w:
                top = int(torch.randint(0, h - ch + 1, (), generator=self.generator))
                left = int(torch.randint(0, w - cw + 1, (), generator=self.generator))
                return top, left, ch, cw
        return 0, 0, h, w

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, "RandomResizedCrop")

        def crop(image: torch.Tensor) -> torch.Tensor:
            top, left, ch, cw = self.sample_box(*image.shape[-2:])
            box = image[..., top : top + ch, left : left + cw]
            return resize(box, self.size, self.antialias)

        return _per_sample(x, crop)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB float in [0, 1] -> HSV, each channel in [0, 1] (hue in turns)."""
    r, g, b = x.unbind(-3)
    maxc, minc = x.amax(-3), x.amin(-3)
    delta = maxc - minc
    saturation = torch.where(maxc > 0, delta / torch.where(maxc > 0, maxc, 1.0), 0.0)
    safe = torch.where(delta > 0, delta, 1.0)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    hue = torch.where(maxc == r, bc - gc, torch.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    hue = torch.where(delta > 0, torch.remainder(hue / 6.0, 1.0), 0.0)
    return torch.stack([hue, saturation, maxc], dim=-3)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) HSV in [0, 1] (hue in turns, wraps) -> RGB float in [0, 1]."""
    h, s, v = x.unbind(-3)
    h6 = torch.remainder(h, 1.0) * 6.0
    sector = torch.floor(h6)
    f = h6 - sector
    sector = sector.long().remainder(6).unsqueeze(0)  # (1, ..., H, W)
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))

    def pick(*options: torch.Tensor) -> torch.Tensor:
        return torch.stack(options).gather(0, sector).squeeze(0)

    return torch.stack([pick(v, q, p, p, t, v), pick(t, v, v, q, p, p), pick(p, p, t, v, v, q)], -3)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) -> (..., 1, H, W) luma."""
    weights = torch.tensor(_GRAY, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * weights).sum(-3, keepdim=True)


class ColorJitter:
    """Random brightness, contrast, saturation and hue, applied in that (fixed) order.

    Factors are drawn uniformly: brightness/contrast/saturation from [max(0, 1 - v), 1 + v],
    hue shift from [-hue, hue] turns (hue <= 0.5), as torchvision; a strength of 0 skips the
    step, so all-zero strengths are the identity. Expects float images in [0, 1] (or uint8).
    """

    def __init__(
        self,
        brightness: float = 0.0,
        contrast: float = 0.0,
        saturation: float = 0.0,
        hue: float = 0.0,
        *,
        generator: torch.Generator | int,
    ) -> None:
        for name, value in [("brightness", brightness), ("contrast", contrast)]:
            if value < 0:
                raise ValueError(f"ColorJitter {name} must be >= 0, got {value}")
        if saturation < 0 or not 0 <= hue <= 0.5:
            raise ValueError(f"need saturation >= 0 and 0 <= hue <= 0.5, got {saturation}, {hue}")
        self.brightness = float(brightness)
        self.contrast = float(contrast)
        self.saturation = float(saturation)
        self.hue = float(hue)
        self.generator = _generator(generator)

    def _factor(self, strength: float) -> float:
        low, high = max(0.0, 1.0 - strength), 1.0 + strength
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        if self.brightness > 0:
            x = (x * self._factor(self.brightness)).clamp(0, 1)
        if self.contrast > 0:
            f = self._factor(self.contrast)
            mean = _gray(x).mean(dim=(-3, -2, -1), keepdim=True)  # per image
            x = (f * x + (1 - f) * mean).clamp(0, 1)
        if self.saturation > 0:
            f = self._factor(self.saturation)
            x = (f * x + (1 - f) * _gray(x)).clamp(0, 1)
        if self.hue > 0:
            shift = self.hue * (2 * float(torch.rand((), generator=self.generator)) - 1)
            hsv = rgb_to_hsv(x)
            hue = torch.remainder(hsv[..., 0:1, :, :] + shift, 1.0)
            x = hsv_to_rgb(torch.cat([hue, hsv[..., 1:, :, :]], dim=-3))
        return x

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, "ColorJitter")
        if not (self.brightness or self.contrast or self.saturation or self.hue):
            return x
        xf, was_uint8 = _to_float(x)
        return _restore(_per_sample(xf, self._jitter), was_uint8)


class Normalize:
    """(x - mean) / std per channel of float (..., 3, H, W) images (e.g. a vision tower's
    ImageNet or SigLIP constants)."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"Normalize needs 3 means and 3 positive stds, got {mean}, {std}")
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_image(x, "Normalize")
        if not x.is_floating_point():
            raise ValueError(f"Normalize expects float images (use ToFloat first), got {x.dtype}")
        mean = self.mean.to(dtype=x.dtype, device=x.device)
        std = self.std.to(dtype=x.dtype, device=x.device)
        return (x - mean) / std


def build_image_transform(
    size: Size,
    train: bool,
    seed: int = 0,
    *,
    scale: tuple[float, float] = (0.8, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.05),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Compose:
    """The per-camera image pipeline: frames (uint8 ..., H, W, 3) -> float32 (..., 3, h, w).

    train: ToFloat -> RandomResizedCrop(size, scale, ratio) -> ColorJitter(*jitter)
    [-> Normalize(mean, std)], both random steps drawing from one generator seeded by `seed`.

    inference (deterministic, `seed` unused): ToFloat -> CenterCrop(fraction=sqrt(mean scale))
    -> Resize(size) [-> Normalize]. The crop keeps sqrt((scale[0] + scale[1]) / 2) of each
    side, the side length of the training crops' mean area, centred where training crops are
    on average, with the image's aspect (the training aspect is 1 on average for a ratio range
    symmetric in log space, like the default): so a policy sees objects at the same size and
    place in training and at deployment. (Boxes that do not fit are redrawn, which makes
    training crops a little smaller on average than the mean scale when scale reaches 1.)
    """
    out_size = _pair(size)
    steps: list[Callable[[Any], Any]] = [ToFloat()]
    if train:
        generator = torch.Generator().manual_seed(int(seed))
        steps.append(RandomResizedCrop(out_size, scale, ratio, generator=generator))
        if any(jitter):
            steps.append(ColorJitter(*jitter, generator=generator))
    else:
        fraction = math.sqrt((scale[0] + scale[1]) / 2)
        steps += [CenterCrop(fraction=fraction), Resize(out_size)]
    if (mean is None) != (std is None):
        raise ValueError("pass both mean and std, or neither")
    if mean is not None and std is not None:
        steps.append(Normalize(mean, std))
    return Compose(steps)
