"""The training loop on the tiny preset: resume (also after SIGKILL), freeze schedule,
learning, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch

from robofm.config import MODEL_PRESETS, DataConfig, OptimConfig, TrainConfig
from robofm.errors import SpaceError
from robofm.train.loop import (
    TRAIN_STATE_FILE,
    TrainingError,
    apply_phase,
    initial_trainable,
    latest_checkpoint,
    train,
)
from tests.train.conftest import toy_space, write_toy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def cfg_for(data: str, out, **kw) -> TrainConfig:
    base = TrainConfig(
        model=replace(MODEL_PRESETS["tiny"], image_size=16, chunk_len=4),
        data=DataConfig(paths=(data,), batch_size=8, val_episodes=2, image_aug=True),
        optim=OptimConfig(lr=2e-3, warmup_steps=2),
        steps=8,
        ckpt_every=2,
        keep_last=2,
        out_dir=str(out),
        model_pretrained=False,
        freeze_vision_frac=0.25,
        val_batches=1,
    )
    return replace(base, **kw)


def losses(result) -> list[float]:
    return [h["loss"] for h in result["history"]]


def test_two_steps_then_resume(toy_dataset, tmp_path):
    first = train(cfg_for(toy_dataset, tmp_path, steps=2))
    ckpt = latest_checkpoint(tmp_path)
    assert first["step"] == 2 and ckpt is not None and ckpt.name == "step_0000002"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == sorted(
        ["action_space.json", "config.json", "model.safetensors", "stats.json", TRAIN_STATE_FILE]
    )
    state = torch.load(ckpt / TRAIN_STATE_FILE, weights_only=False)
    assert {"optimizer", "scheduler", "sampler", "rng", "step", "config"} <= set(state)
    more = train(cfg_for(toy_dataset, tmp_path, steps=4))
    assert more["step"] == 4 and len(more["history"]) == 4
    assert losses(more)[:2] == losses(first)  # the first two steps are the restored ones
    events = [json.loads(x)["event"] for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert events.count("train.start") == 2 and (tmp_path / "training_curves.png").exists()


def test_kill_and_resume_gives_identical_losses(toy_dataset, tmp_path):
    steps = 16
    reference = losses(train(cfg_for(toy_dataset, tmp_path / "ref", steps=steps)))
    out = tmp_path / "killed"
    code = (
        f"import sys; sys.path.insert(0, {REPO!r})\n"
        "from tests.train.test_loop import cfg_for\n"
        "from robofm.train.loop import train\n"
        f"train(cfg_for({toy_dataset!r}, {str(out)!r}, steps={steps}))\n"
    )
    env = {**os.environ, "ROBOFM_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env)
    deadline = time.time() + 120
    while latest_checkpoint(out) is None or latest_checkpoint(out).name < "step_0000004":
        assert proc.poll() is None, "training process ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # at whatever point it has reached
    proc.wait()
    killed_at = latest_checkpoint(out)
    assert int(killed_at.name.split("_")[1]) < steps
    resumed = train(cfg_for(toy_dataset, out, steps=steps))
    assert losses(resumed) == reference  # bit-identical on CPU


def test_freeze_schedule_switches_vision_at_the_right_step(toy_dataset, tmp_path):
    from robofm.models.vla import VLA

    cfg = cfg_for(toy_dataset, tmp_path, steps=8, freeze_vision_frac=0.5)
    model = VLA(
        cfg.model, cameras=("front",), state_dims={"toy": 2}, action_dim=3, pretrained=False
    )
    base = initial_trainable(model)
    vision = list(model.vision.parameters())
    for step in range(8):
        phase = apply_phase(model, cfg, step, base)
        assert all(p.requires_grad == (step >= 4) for p in vision)
        assert phase == ("vision frozen" if step < 4 else "vision trainable")
    assert all(p.requires_grad for p in model.head.parameters())
    train(cfg)
    phases = [
        json.loads(x)
        for x in (tmp_path / "log.jsonl").read_text().splitlines()
        if '"train.phase"' in x
    ]
    assert [(p["step"], p["phase"]) for p in phases] == [
        (0, "vision frozen"),
        (4, "vision trainable"),
    ]
    assert phases[0]["trainable"]["vision"] == 0 and phases[1]["trainable"]["vision"] > 0


def test_head_only_trains_only_the_head(toy_dataset, tmp_path):
    from safetensors.torch import load_file

    train(cfg_for(toy_dataset, tmp_path / "a", steps=2, ckpt_every=1, keep_last=5))
    w1 = load_file(str(tmp_path / "a/checkpoints/step_0000001/model.safetensors"))
    cfg = cfg_for(toy_dataset, tmp_path / "b", steps=3, head_only=True, ckpt_every=1, keep_last=5)
    train(cfg)
    a = load_file(str(tmp_path / "b/checkpoints/step_0000001/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step_0000003/model.safetensors"))
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all(k.startswith("head.") for k in changed)
    assert set(w1) == set(a)


def test_loss_falls_on_a_learnable_task(toy_dataset, tmp_path):
    model = replace(MODEL_PRESETS["tiny"], image_size=16, chunk_len=4, head="regression")
    cfg = cfg_for(
        toy_dataset,
        tmp_path,
        steps=80,
        ckpt_every=80,
        val_batches=4,
        model=model,
        optim=OptimConfig(lr=3e-3, warmup_steps=5),
    )
    result = train(cfg)
    ls = losses(result)
    assert sum(ls[-10:]) / 10 < 0.6 * sum(ls[:10]) / 10
    assert result["val"]["val_mae"] < 0.35  # open-loop error on held-out episodes, robot units


def test_incompatible_action_space_fails_before_step_one(toy_dataset, tmp_path):
    first = train(cfg_for(toy_dataset, tmp_path / "base", steps=2))
    other = write_toy(tmp_path / "other", space=toy_space(high=2.0))  # same robot, new bounds
    cfg = cfg_for(other, tmp_path / "ft", steps=2, init_from=first["checkpoint"])
    with pytest.raises(SpaceError, match="high"):
        train(cfg)
    assert latest_checkpoint(tmp_path / "ft") is None


def test_new_embodiment_is_added_when_fine_tuning(toy_dataset, tmp_path):
    first = train(cfg_for(toy_dataset, tmp_path / "base", steps=2))
    other = write_toy(tmp_path / "other", space=toy_space(robot="toy2"))
    result = train(cfg_for(other, tmp_path / "ft", steps=2, init_from=first["checkpoint"]))
    cfgj = json.loads((latest_checkpoint(tmp_path / "ft") / "config.json").read_text())
    assert set(cfgj["build"]["state_dims"]) == {"toy", "toy2"} and result["step"] == 2


def test_non_finite_loss_names_the_episodes_and_keeps_the_last_checkpoint(toy_dataset, tmp_path):
    from robofm.data.mixture import MixtureSampler
    from robofm.train.data import augment_and_batch, build_data, make_loader
    from robofm.train.loop import TrainState, make_optimizer, train_step

    cfg = cfg_for(toy_dataset, tmp_path)
    data = build_data(cfg.data, cfg.model)
    from robofm.models.vla import VLA

    model = VLA(
        cfg.model, cameras=("front",), state_dims=data.state_dims, action_dim=3, pretrained=False
    )
    opt = make_optimizer(model, cfg)
    state = TrainState(model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0))
    loader = make_loader(data.mixture, MixtureSampler(data.mixture, seed=0), 8, 0)
    batch = augment_and_batch(next(iter(loader)), cfg.model, train=False, seed=0, step=0)
    batch.actions[2, 0, 0] = float("nan")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TrainingError, match=rf"episode.*\(0, {int(batch.episode_index[2])}\)"):
        train_step(state, batch, cfg)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_tracker_is_refused_before_training(toy_dataset, tmp_path):
    with pytest.raises(TrainingError, match="unknown tracker 'nope'"):
        train(cfg_for(toy_dataset, tmp_path, trackers=("nope",)))
    assert latest_checkpoint(tmp_path) is None


def test_policy_applies_the_deterministic_variant_of_the_training_crop(toy_dataset, tmp_path):
    import numpy as np

    from robofm.policy import Policy
    from robofm.train.data import augment_and_batch

    result = train(cfg_for(toy_dataset, tmp_path, steps=2))
    policy = Policy.from_checkpoint(result["checkpoint"])
    assert policy.model.transforms == {"image_crop_scale": [0.8, 1.0]}
    frame = np.random.default_rng(0).integers(0, 255, (24, 40, 3), dtype=np.uint8)
    seen = policy._images({"images": {"front": frame}})["front"][0]  # (3, 16, 16)
    collated = {
        "images": {"front": torch.from_numpy(frame)[None, None]},
        "actions": torch.zeros(1, 4, 3),
        "state": torch.zeros(1, 1, 2),
        "action_is_pad": torch.zeros(1, 4, dtype=torch.bool),
        "task": ["go left"],
        "episode_index": torch.zeros(1, dtype=torch.long),
    }
    model_cfg = policy.model.cfg
    val = augment_and_batch(collated, model_cfg, train=False, seed=0, step=0).obs.images
    torch.testing.assert_close(seen, val["front"][0, 0])  # what validation saw
