"""Keypoint readout and MLP trunk: geometry, conditioning, and their place in the VLA."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from robofm.errors import ConfigError
from robofm.models.readout import KeypointReadout, MLPTrunk
from tests.models.test_vla import build, make_batch, tiny

G, C = 10, 6


def blob_map(row: int, col: int) -> torch.Tensor:
    """(1, G*G, C) tokens: zero background, one 2x2 'object' with fixed features at (row, col)."""
    torch.manual_seed(1)
    feat = torch.randn(C) * 3
    m = torch.zeros(1, C, G, G)
    m[0, :, row : row + 2, col : col + 2] = feat[:, None, None]
    return m.flatten(2).transpose(1, 2)


def readout(seed: int = 0) -> KeypointReadout:
    torch.manual_seed(seed)
    return KeypointReadout(C, G, keypoints=3, hidden=8, cond_dim=5).eval()


def test_keypoints_move_with_the_object_along_the_right_axis():
    r, cond = readout(), torch.randn(1, 5)
    with torch.no_grad():
        base = r(blob_map(3, 3), cond)[0, :, 8:10]  # (K, 2) x, y
        right = r(blob_map(3, 5), cond)[0, :, 8:10]  # object 2 cells right
        down = r(blob_map(5, 3), cond)[0, :, 8:10]  # object 2 cells down
    # the background is uniform, so x moves by (2 cells) * w, w = the object's attention
    # surplus over the background (either sign), and a shift along x leaves y exactly alone
    assert ((right[:, 0] - base[:, 0]).abs() > 1e-6).all()
    torch.testing.assert_close(right[:, 1], base[:, 1], atol=1e-5, rtol=0)  # y unchanged
    torch.testing.assert_close(down[:, 0], base[:, 0], atol=1e-5, rtol=0)
    # translation equivariance: the same shift moves x (right) and y (down) equally
    torch.testing.assert_close(right[:, 0] - base[:, 0], down[:, 1] - base[:, 1], atol=1e-5, rtol=0)
    assert base.abs().max() <= 1.0


def test_the_instruction_changes_what_the_keypoints_attend_to():
    r = readout()
    x = blob_map(3, 3) + torch.randn(1, G * G, C) * 0.5
    with torch.no_grad():
        a, b = r(x, torch.randn(1, 5)), r(x, torch.randn(1, 5))
    assert r(x, torch.zeros(1, 5)).shape == (1, 3, r.out_width)
    assert (a[..., 8:10] - b[..., 8:10]).abs().max() > 1e-3
    with pytest.raises(ValueError, match="10x10 tokens, got 9"):
        r(torch.zeros(1, 9, C), torch.zeros(1, 5))


def test_mlp_trunk_fuses_to_one_token_and_checks_the_count():
    trunk = MLPTrunk(n_tokens=5, width=16, depth=2)
    out = trunk(torch.randn(3, 5, 16))
    assert out.shape == (3, 1, 16)
    with pytest.raises(ValueError, match="expects 5 tokens, got 4"):
        trunk(torch.randn(3, 4, 16))


def keypoint_cfg(**kw):
    return tiny(
        vision="mobilenet_v2",
        vision_stride=8,
        image_readout="keypoints",
        readout_keypoints=4,
        readout_width=8,
        trunk="mlp",
        head="regression",
        **kw,
    )


def test_keypoint_vla_trains_and_cached_features_give_the_same_actions():
    cfg = keypoint_cfg()
    model = build(cfg)
    batch = make_batch(cfg)
    loss = model.compute_loss(batch)
    assert loss.shape == (batch.batch_size,) and torch.isfinite(loss).all()
    loss.mean().backward()
    assert model.readout.score.weight.grad.abs().sum() > 0  # the readout learns
    model.eval()
    obs = batch.obs
    with torch.no_grad():
        feats = {c: model.vision_features(obs.images[c]) for c in model.cameras}
        direct = model.sample_actions(obs)
        cached = model.sample_actions(dataclasses.replace(obs, image_features=feats))
    assert direct.shape == (batch.batch_size, cfg.chunk_len, model.action_dim)
    torch.testing.assert_close(direct, cached)


def test_keypoint_readout_and_mlp_trunk_refuse_what_they_cannot_read():
    with pytest.raises(ConfigError, match="image_readout='keypoints' needs a CNN"):
        build(tiny(image_readout="keypoints"))  # small_vit: ViT tokens, no square CNN map
    with pytest.raises(ConfigError, match="image_readout must be"):
        build(tiny(image_readout="pooled"))
    with pytest.raises(ConfigError, match="trunk must be"):
        build(tiny(trunk="rnn"))
