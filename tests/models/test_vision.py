"""Vision encoders: every registered encoder builds and trains; pretrained weights really work."""

from __future__ import annotations

import sys

import matplotlib.image as mpimg
import pytest
import torch
import torch.nn.functional as F
from matplotlib import cbook

from robofm.errors import ConfigError
from robofm.models import mobilenet
from robofm.models.vision import VISION_ENCODERS, build_vision, mobilenet_weights_path

COND_DIM = 8


def build_tiny(name: str, image_size: int = 64, **kwargs) -> torch.nn.Module:
    cond_dim = COND_DIM if name == "resnet_film" else 0
    return build_vision(
        name, image_size=image_size, width=32, cond_dim=cond_dim, pretrained=False, **kwargs
    )


def images(b: int = 2, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(b, 3, size, size, generator=torch.Generator().manual_seed(seed))


def cond_for(enc: torch.nn.Module, b: int = 2) -> torch.Tensor | None:
    return torch.randn(b, enc.cond_dim) if enc.cond_dim else None


@pytest.mark.parametrize("name", sorted(VISION_ENCODERS))
@pytest.mark.parametrize("image_size", [32, 64])
def test_every_encoder_builds_runs_and_trains(name: str, image_size: int):
    torch.manual_seed(0)
    enc = build_tiny(name, image_size).train()
    x = images(2, image_size).requires_grad_(True)
    out = enc(x, cond_for(enc))
    assert out.shape == (2, enc.num_tokens, enc.width)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    # Tokens differ across images and positions: not a constant or collapsed output.
    assert (out[0] - out[1]).abs().max() > 1e-4
    if enc.num_tokens > 1:
        assert out[0].std(dim=0).max() > 1e-4
    out.square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    first = next(p for p in enc.parameters() if p.ndim == 4)  # the input-side conv / patchify
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("name", "image_size", "tokens", "width"),
    [
        ("mobilenet_v2", 96, 9, 1280),
        ("mobilenet_v2", 100, 16, 1280),  # ceil(100 / 32) = 4 per side
        ("small_vit", 96, 64, 32),
        ("resnet_film", 96, 36, 32),
        ("siglip", 96, 144, 64),
        ("vit_hf", 96, 144, 64),  # [CLS] dropped: the 12x12 patch grid only
    ],
)
def test_token_counts(name: str, image_size: int, tokens: int, width: int):
    enc = build_tiny(name, image_size).eval()
    assert (enc.num_tokens, enc.width) == (tokens, width)
    with torch.no_grad():
        out = enc(images(1, image_size), cond_for(enc, 1))
    assert out.shape == (1, tokens, width)


# ---- MobileNetV2 ImageNet weights ----------------------------------------------------------


def load_grace_hopper(size: int = 224) -> torch.Tensor:
    """matplotlib's bundled photo of Grace Hopper in navy uniform, (1, 3, size, size) in [0, 1]."""
    img = mpimg.imread(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))  # (H, W, 3) u8
    x = torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255  # (1, 3, H, W)
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)


@pytest.fixture(scope="module")
def imagenet_classifier() -> mobilenet.MobileNetV2Classifier:
    return mobilenet.mobilenet_v2_classifier(pretrained=True).eval()


def imagenet_probs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(mobilenet.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(mobilenet.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return model((x - mean) / std).softmax(-1)[0]  # (1000,)


def test_mobilenet_weights_match_every_key():
    path = mobilenet_weights_path()
    # Located without importing the package (its __init__ imports outdated dependencies).
    assert mobilenet.WEIGHTS_PACKAGE not in sys.modules
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = mobilenet.MobileNetV2Classifier()
    result = model.load_state_dict(state, strict=False)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert len(state) == len(model.state_dict()) == 314
    assert torch.equal(model.features[18][0].weight, state["features.18.0.weight"])


def test_mobilenet_classifies_grace_hopper(imagenet_classifier):
    probs = imagenet_probs(imagenet_classifier, load_grace_hopper())
    top5 = probs.topk(5).indices.tolist()
    # Measured: 652 military uniform 0.37, 457 bow tie 0.16, 834 suit 0.12.
    assert top5[0] == 652, top5
    assert probs[652] > 0.25
    assert {457, 834} <= set(top5)
    grey = imagenet_probs(imagenet_classifier, torch.full((1, 3, 224, 224), 0.5))
    assert grey.argmax() != 652
    assert grey.max() < 0.2  # no confident class for a blank image


def test_mobilenet_encoder_uses_pretrained_features(imagenet_classifier):
    enc = build_vision("mobilenet_v2", image_size=224, pretrained=True).eval()
    assert not any(k.startswith("classifier") for k in enc.state_dict())
    x = load_grace_hopper()
    with torch.no_grad():
        tokens = enc(x)  # (1, 49, 1280)
        pooled_logits = imagenet_classifier.classifier(tokens.mean(dim=1))  # (1, 1000)
    assert tokens.shape == (1, 49, 1280)
    # The encoder normalises internally: its pooled tokens reproduce the classifier's decision.
    assert pooled_logits.argmax().item() == 652
    torch.testing.assert_close(
        pooled_logits.softmax(-1)[0], imagenet_probs(imagenet_classifier, x), atol=1e-4, rtol=0
    )


# ---- transformers towers: save / load round trip -------------------------------------------


@pytest.mark.parametrize("name", ["siglip", "vit_hf"])
def test_hf_tower_round_trip(name: str, tmp_path):
    torch.manual_seed(0)
    enc = build_tiny(name, 32).eval()
    enc.model.save_pretrained(tmp_path)
    loaded = build_vision(name, image_size=32, path=str(tmp_path)).eval()
    assert (loaded.num_tokens, loaded.width) == (enc.num_tokens, enc.width)
    x = images(2, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), enc(x), rtol=0, atol=0)
        # A fresh random tower is different, so the equality above is the loaded weights.
        assert not torch.allclose(build_tiny(name, 32).eval()(x), enc(x))
        # Built at another resolution than saved: position embeddings are interpolated.
        bigger = build_vision(name, image_size=64, path=str(tmp_path)).eval()
        assert bigger(images(1, 64)).shape == (1, 64, 64) == (1, bigger.num_tokens, 64)


def test_hf_tower_missing_directory_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        build_vision("siglip", image_size=32, path=str(tmp_path / "nope"))


# ---- resnet_film ---------------------------------------------------------------------------


def test_film_is_identity_at_init_and_conditions_once_trained():
    torch.manual_seed(0)
    enc = build_tiny("resnet_film").eval()
    x = images(2)
    c1, c2 = torch.randn(2, COND_DIM), torch.randn(2, COND_DIM)
    with torch.no_grad():
        base = enc(x, torch.zeros(2, COND_DIM))
        torch.testing.assert_close(enc(x, c1), base, rtol=0, atol=0)
        for film in enc.films:
            torch.nn.init.normal_(film.proj.weight, std=0.1)
        o1, o2 = enc(x, c1), enc(x, c2)
    assert (o1 - o2).abs().max() > 1e-2
    assert (o1 - base).abs().max() > 1e-2


def test_film_requires_conditioning():
    with pytest.raises(ConfigError, match="cond_dim"):
        build_vision("resnet_film", image_size=32, cond_dim=0, pretrained=False)
    enc = build_tiny("resnet_film", 32)
    with pytest.raises(ValueError, match="conditioning"):
        enc(images(1, 32))


def test_unconditioned_encoder_refuses_cond_dim():
    with pytest.raises(ConfigError, match="no conditioning"):
        build_vision("small_vit", image_size=32, cond_dim=4)


def test_unknown_name_lists_valid_names():
    with pytest.raises(ConfigError) as info:
        build_vision("resnet_9000", image_size=32)
    for name in VISION_ENCODERS:
        assert name in str(info.value)


def test_mobilenet_stride16_tokens_are_block13_of_the_pretrained_trunk(imagenet_classifier):
    enc = build_vision("mobilenet_v2", image_size=96, pretrained=True, stride=16).eval()
    assert (enc.num_tokens, enc.width) == (36, 96) and len(enc.features) == 14
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        tokens = enc(x)  # (2, 36, 96)
        want = imagenet_classifier.features[:14](enc.normalise(x))  # (2, 96, 6, 6)
    assert tokens.shape == (2, 36, 96)
    torch.testing.assert_close(tokens, want.flatten(2).transpose(1, 2))


def test_pretrained_mobilenet_keeps_batchnorm_statistics_in_train_mode():
    enc = build_vision("mobilenet_v2", image_size=64, pretrained=True).train()
    bn = enc.features[1].conv[0][1]  # a BatchNorm2d
    before = bn.running_mean.clone()
    x = torch.rand(4, 3, 64, 64)
    out = enc(x)
    assert torch.equal(bn.running_mean, before) and not bn.training
    torch.testing.assert_close(out, enc.eval()(x))  # train mode computes what eval mode does
    scratch = build_vision("mobilenet_v2", image_size=64, pretrained=False).train()
    assert scratch.features[1].conv[0][1].training  # random init learns its statistics


def test_stride_is_refused_where_it_means_nothing():
    with pytest.raises(ConfigError, match="stride"):
        build_vision("mobilenet_v2", image_size=96, pretrained=False, stride=4)
    with pytest.raises(ConfigError, match="vision_stride"):
        build_vision("small_vit", image_size=32, pretrained=False, stride=16)
