"""Recipes: LoRA fine-tuning exports a merged, plain checkpoint; pretraining checks weights."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from robofm.errors import ConfigError
from robofm.models.checkpoint import load_checkpoint
from robofm.policy import Policy
from robofm.train.recipes import finetune, pretrain
from tests.train.test_loop import cfg_for


def test_lora_finetune_trains_adapters_and_exports_a_merged_checkpoint(toy_dataset, tmp_path):
    cfg = cfg_for(toy_dataset, tmp_path, steps=4, lora_rank=4, freeze_vision_frac=1.0)
    with pytest.warns(UserWarning, match="outside the usual"):  # the test's lr is high
        result = finetune(cfg)
    model, _, _ = load_checkpoint(result["merged"])  # plain architecture: strict load
    assert model.transforms == {"image_crop_scale": [0.8, 1.0]}  # inference crops as training
    assert not any("lora" in k for k in model.state_dict())
    policy = Policy.from_checkpoint(result["merged"])
    obs = {
        "images": {"front": np.zeros((16, 16, 3), np.uint8)},
        "state": np.zeros(2, np.float32),
        "prompt": "go left",
    }
    assert policy.infer(obs)["actions"].shape == (4, 3)


def test_pretrain_rejects_weights_that_do_not_match_the_paths(toy_dataset, tmp_path):
    cfg = cfg_for(toy_dataset, tmp_path)
    cfg = replace(cfg, data=replace(cfg.data, weights=(1.0, 2.0)))
    with pytest.raises(ConfigError, match="weights"):
        pretrain(cfg)


def test_pretrain_on_a_two_robot_mixture_with_ema_and_retention(toy_dataset, tmp_path):
    from safetensors.torch import load_file

    from tests.train.conftest import toy_space, write_toy

    other = write_toy(tmp_path / "other", space=toy_space(robot="toy2"), n=6, seed=1)
    cfg = cfg_for(toy_dataset, tmp_path / "run", steps=6, ckpt_every=1, keep_last=2, ema_decay=0.9)
    cfg = replace(cfg, data=replace(cfg.data, paths=(toy_dataset, other), weights=(0.3, 0.7)))
    result = pretrain(cfg)
    ckpts = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    best = (tmp_path / "run" / "best.txt").read_text().strip()
    assert set(ckpts) == {"step_0000005", "step_0000006"} | {best}  # last 2 plus the best
    last = tmp_path / "run" / "checkpoints" / "step_0000006"
    raw, ema = load_file(str(last / "model.safetensors")), load_file(str(last / "ema.safetensors"))
    assert raw.keys() == ema.keys() and any(not (raw[k] == ema[k]).all() for k in raw)
    build = __import__("json").loads((last / "config.json").read_text())["build"]
    assert set(build["state_dims"]) == {"toy", "toy2"}  # one adapter per robot in the mixture
    assert result["step"] == 6
