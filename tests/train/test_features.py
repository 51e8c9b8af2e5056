"""The frozen-encoder feature cache: same losses as encoding every frame, dropped on unfreeze."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from robofm.models.vla import VLA
from robofm.train.data import build_data
from robofm.train.features import cache_blocker, compute_features
from robofm.train.loop import train
from tests.train.test_loop import cfg_for, losses


def _phases(out) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"train.phase"' in x]


def _no_aug(cfg, cache: bool):
    return replace(cfg, data=replace(cfg.data, image_aug=False, cache_features=cache))


@pytest.mark.parametrize("frac", [1.0, 0.5])
def test_cached_training_matches_encoding_every_frame(toy_dataset, tmp_path, frac):
    runs = {}
    for cache in (True, False):
        cfg = _no_aug(
            cfg_for(toy_dataset, tmp_path / str(cache), steps=6, freeze_vision_frac=frac), cache
        )
        runs[cache] = train(cfg)
        phases = _phases(tmp_path / str(cache))
        frozen_steps = int(frac * 6)
        expect = [(0, cache)] + ([(frozen_steps, False)] if frozen_steps < 6 else [])
        assert [(p["step"], p["cached_features"]) for p in phases] == expect
    assert losses(runs[True]) == pytest.approx(losses(runs[False]), rel=1e-4, abs=1e-6)
    assert runs[True]["val"]["val_mae"] == pytest.approx(runs[False]["val"]["val_mae"], rel=1e-4)


def test_random_augmentation_blocks_the_cache(toy_dataset, tmp_path):
    cfg = cfg_for(toy_dataset, tmp_path, steps=2, freeze_vision_frac=1.0)
    assert cfg.data.image_aug
    model = VLA(
        cfg.model, cameras=("front",), state_dims={"toy": 2}, action_dim=3, pretrained=False
    )
    assert "augmentation" in cache_blocker(model, cfg)
    train(cfg)
    assert [p["cached_features"] for p in _phases(tmp_path)] == [False]


def test_cached_rows_are_the_encoder_outputs_of_each_frame(toy_dataset):
    cfg = cfg_for(toy_dataset, "unused")
    data = build_data(cfg.data, cfg.model)
    model = VLA(
        cfg.model, cameras=("front",), state_dims=data.state_dims, action_dim=3, pretrained=False
    ).eval()
    ds = data.mixture.datasets[0]
    feats = compute_features(model, ds, cfg.model.image_size)["front"]
    assert feats.shape == (
        int(ds.episode_lengths.sum()),
        model.vision.num_tokens,
        model.vision.width,
    )
    k, t = 3, 7  # a frame in the middle of the 4th episode
    frame = ds.source.frames(int(ds.source_positions[k]), "front", [t])  # (1, H, W, 3)
    x = torch.as_tensor(frame).permute(0, 3, 1, 2).float().div(255.0)
    x = torch.nn.functional.interpolate(
        x, size=cfg.model.image_size, mode="bilinear", antialias=True, align_corners=False
    )
    with torch.no_grad():
        want = model.vision(x)[0]
    got = feats[int(ds.episode_starts[k]) + t].float()
    assert torch.allclose(got, want, atol=2e-2 * float(want.abs().max()))
