"""Plain-torch image transforms: geometry, colour, determinism under seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from robofm.data.transforms import (
    CenterCrop,
    ColorJitter,
    Compose,
    Normalize,
    RandomResizedCrop,
    Resize,
    ToFloat,
    build_image_transform,
    hsv_to_rgb,
    resize,
    rgb_to_hsv,
)


def frames(*lead: int, h: int = 24, w: int = 32, seed: int = 0) -> np.ndarray:
    """(*lead, h, w, 3) uint8 frames as a dataset reader returns them."""
    return np.random.default_rng(seed).integers(0, 256, (*lead, h, w, 3), dtype=np.uint8)


def checkerboard(n: int, square: int) -> torch.Tensor:
    """(3, n, n) float image of 0/1 squares of `square` pixels."""
    i = torch.arange(n) // square
    board = ((i[:, None] + i[None, :]) % 2).to(torch.float32)
    return board.expand(3, n, n).clone()


def test_to_float_layouts_and_range():
    hwc = frames(h=8, w=6)
    out = ToFloat()(hwc)
    assert out.shape == (3, 8, 6) and out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), hwc.transpose(2, 0, 1) / 255.0, rtol=1e-6)
    assert torch.equal(ToFloat()(torch.from_numpy(hwc).permute(2, 0, 1)), out)  # CHW input
    assert ToFloat()(frames(2, 4, h=8, w=6)).shape == (2, 4, 3, 8, 6)
    assert ToFloat()(out.double()).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        ToFloat()(np.zeros((8, 6, 4), dtype=np.uint8))


def test_resize_shapes_dtypes_and_aspect():
    x = torch.from_numpy(frames(2, h=24, w=32)).permute(0, 3, 1, 2)  # (2, 3, 24, 32) uint8
    out = Resize((12, 10))(x)
    assert out.shape == (2, 3, 12, 10) and out.dtype == torch.uint8
    assert Resize(12)(x.float()).shape == (2, 3, 12, 16)  # shorter side, aspect kept
    assert Resize(12)(x[..., :20].float()).shape == (2, 3, 14, 12)


@pytest.mark.parametrize("size", [(7, 9), (48, 40)])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_resize_of_constant_image_stays_constant(size, dtype):
    value = 173 if dtype == torch.uint8 else 0.37
    x = torch.full((3, 24, 32), value, dtype=dtype)
    out = Resize(size)(x)
    assert out.dtype == dtype
    torch.testing.assert_close(out, torch.full((3, *size), value, dtype=dtype))


def test_resize_of_checkerboard_matches_expected_values():
    out = Resize((32, 32))(checkerboard(64, 8))  # 8 px squares -> 4 px squares
    expected = checkerboard(32, 4)
    inner = torch.tensor([1, 2])  # pixels whose filter support stays inside one square
    rows = (torch.arange(8)[:, None] * 4 + inner).ravel()
    torch.testing.assert_close(out[:, rows][:, :, rows], expected[:, rows][:, :, rows])
    assert (out - expected).abs().mean() < 0.15


def test_resize_antialiases_fine_detail():
    board = checkerboard(63, 1)  # a 1 px checkerboard has nothing representable at 1/3 size
    out = resize(board, (21, 21))
    assert (out[:, 1:-1, 1:-1] - 0.5).abs().max() < 0.02
    aliased = resize(board, (21, 21), antialias=False)
    assert (aliased - 0.5).abs().min() > 0.4  # point-sampled: still pure black / white


def test_center_crop_takes_the_middle():
    x = torch.arange(3 * 6 * 8, dtype=torch.float32).reshape(3, 6, 8)
    assert torch.equal(CenterCrop((2, 4))(x), x[:, 2:4, 2:6])
    assert torch.equal(CenterCrop(fraction=0.5)(x), x[:, 2:5, 2:6])
    with pytest.raises(ValueError, match="does not fit"):
        CenterCrop(7)(x)


def test_random_resized_crop_is_deterministic_under_a_seed():
    x = ToFloat()(frames(h=40, w=48))
    a = RandomResizedCrop(16, generator=0)
    b = RandomResizedCrop(16, generator=torch.Generator().manual_seed(0))
    first = a(x)
    assert first.shape == (3, 16, 16) and first.dtype == torch.float32
    assert torch.equal(first, b(x))
    assert torch.equal(a(x), b(x))  # the second draws agree too
    assert not torch.equal(RandomResizedCrop(16, generator=1)(x), first)
    assert not torch.equal(a(x), first)  # later draws differ from the first


def test_random_resized_crop_boxes_follow_scale_and_ratio():
    crop = RandomResizedCrop(8, scale=(0.5, 0.7), ratio=(0.9, 1.1), generator=3)
    for _ in range(200):
        top, left, h, w = crop.sample_box(100, 120)
        assert 0 <= top <= 100 - h and 0 <= left <= 120 - w
        assert 0.48 <= h * w / (100 * 120) <= 0.72
        assert 0.85 <= (w / 120) / (h / 100) <= 1.15  # relative to the image's aspect


def test_full_scale_crop_is_a_plain_resize():
    x = ToFloat()(frames(h=20, w=30))
    crop = RandomResizedCrop((10, 15), scale=(1.0, 1.0), ratio=(1.0, 1.0), generator=0)
    torch.testing.assert_close(crop(x), resize(x, (10, 15)))


def test_batched_crops_differ_per_sample_but_not_across_history():
    image = ToFloat()(frames(h=40, w=40))
    batch = image.expand(4, 2, 3, 40, 40)  # (B, T, 3, H, W): same image everywhere
    out = RandomResizedCrop(12, scale=(0.3, 0.5), generator=0)(batch)
    assert out.shape == (4, 2, 3, 12, 12)
    assert torch.equal(out[:, 0], out[:, 1])  # a sample's frames share one crop
    assert not torch.equal(out[0], out[1])


def test_color_jitter_with_zero_strength_is_identity():
    x = ToFloat()(frames(2, h=8, w=8))
    assert torch.equal(ColorJitter(generator=0)(x), x)
    u8 = torch.from_numpy(frames(h=8, w=8)).permute(2, 0, 1)
    assert torch.equal(ColorJitter(generator=0)(u8), u8)


def test_color_jitter_is_seeded_and_in_range():
    x = ToFloat()(frames(3, h=8, w=8))
    jitter = dict(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1)
    out = ColorJitter(**jitter, generator=5)(x)
    assert torch.equal(out, ColorJitter(**jitter, generator=5)(x))
    assert not torch.equal(out, ColorJitter(**jitter, generator=6)(x))
    assert not torch.equal(out, x) and out.min() >= 0 and out.max() <= 1
    u8 = ColorJitter(**jitter, generator=5)((x * 255).round().to(torch.uint8))
    assert u8.dtype == torch.uint8


def test_hue_jitter_rotates_hue_only():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(2))
    out = ColorJitter(hue=0.3, generator=0)(x)
    assert (out - x).abs().max() > 1e-3
    # a hue rotation keeps each pixel's value (max channel) and saturation, hence its min
    torch.testing.assert_close(out.amax(0), x.amax(0), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.amin(0), x.amin(0), atol=1e-5, rtol=0)


def test_brightness_scales_pixels_by_one_factor():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    out = ColorJitter(brightness=0.5, generator=1)(x)
    factor = out / x
    torch.testing.assert_close(factor, torch.full_like(factor, float(factor[0, 0, 0])))
    assert 0.5 <= float(factor[0, 0, 0]) <= 1.5 and float(factor[0, 0, 0]) != 1.0


def test_rgb_hsv_round_trip_and_known_colours():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=g)
    x[0, :, 0, :] = x[0, 0:1, 0, :]  # grays (equal channels)
    x[0, :, 1, :] = 0.0
    x[0, :, 2, :] = 1.0
    torch.testing.assert_close(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5, rtol=0)
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [0.5, 0.5, 0.5]])
    hsv = rgb_to_hsv(colours.T.reshape(3, 1, 5)).reshape(3, 5).T
    expected = [[0, 1, 1], [1 / 3, 1, 1], [2 / 3, 1, 1], [1 / 6, 1, 1], [0, 0, 0.5]]
    torch.testing.assert_close(hsv, torch.tensor(expected), atol=1e-6, rtol=0)


def test_hue_shift_by_zero_is_identity_and_a_third_turn_maps_red_to_green():
    x = torch.rand(3, 8, 8, generator=torch.Generator().manual_seed(1))
    hsv = rgb_to_hsv(x)
    torch.testing.assert_close(hsv_to_rgb(hsv + torch.tensor([0.0, 0, 0]).view(3, 1, 1)), x)
    red = torch.tensor([1.0, 0.0, 0.0]).view(3, 1, 1)
    shifted = rgb_to_hsv(red) + torch.tensor([1 / 3, 0, 0]).view(3, 1, 1)
    torch.testing.assert_close(hsv_to_rgb(shifted), torch.tensor([0.0, 1, 0]).view(3, 1, 1))


def test_normalize_per_channel():
    x = torch.ones(2, 3, 4, 4)
    out = Normalize((0.5, 0.25, 0.0), (0.5, 0.25, 2.0))(x)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 3.0, 0.5]))
    with pytest.raises(ValueError, match="ToFloat"):
        Normalize((0, 0, 0), (1, 1, 1))(torch.zeros(3, 2, 2, dtype=torch.uint8))


def test_compose_applies_in_order():
    calls: list[str] = []
    pipeline = Compose([lambda x: calls.append("a") or x + 1, lambda x: calls.append("b") or x * 2])
    assert pipeline(1) == 4 and calls == ["a", "b"]


def test_inference_transform_is_deterministic():
    x = frames(2, h=48, w=64)
    first = build_image_transform(32, train=False, seed=0)(x)
    assert first.shape == (2, 3, 32, 32) and first.dtype == torch.float32
    assert torch.equal(first, build_image_transform(32, train=False, seed=9)(x))
    transform = build_image_transform(32, train=False)
    assert torch.equal(transform(x), transform(x))


def test_inference_framing_matches_the_mean_training_crop():
    x = frames(h=100, w=100)
    scale = (0.5, 0.78)
    out = build_image_transform(20, train=False, scale=scale)(x)
    side = round(100 * math.sqrt(sum(scale) / 2))  # 80 px: the mean training crop's side
    top = (100 - side) // 2
    expected = resize(ToFloat()(x)[:, top : top + side, top : top + side], (20, 20))
    torch.testing.assert_close(out, expected)
    crop = RandomResizedCrop(20, scale=scale, ratio=(1.0, 1.0), generator=0)
    areas = [np.prod(crop.sample_box(100, 100)[2:]) for _ in range(2_000)]
    assert np.mean(areas) == pytest.approx(side * side, rel=0.02)


def test_train_transform_is_seeded():
    x = frames(4, h=48, w=48)
    out = build_image_transform(24, train=True, seed=0)(x)
    assert out.shape == (4, 3, 24, 24) and out.dtype == torch.float32
    assert torch.equal(out, build_image_transform(24, train=True, seed=0)(x))
    assert not torch.equal(out, build_image_transform(24, train=True, seed=1)(x))
    assert not torch.equal(out, build_image_transform(24, train=False)(x))
    normalised = build_image_transform(24, train=True, seed=0, mean=(0.5,) * 3, std=(0.5,) * 3)
    torch.testing.assert_close(normalised(x), out * 2 - 1)
