"""The VLA contract on every (language backbone x action head) pair at tiny size: training
lowers the loss, sampling gives finite (B, H, D) chunks, checkpoints round-trip exactly;
plus golden values, the flow head's prefix cache, and embodiment padding."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from robofm.config import MODEL_PRESETS
from robofm.data.stats import Normalizer
from robofm.errors import ConfigError
from robofm.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from robofm.models.heads import HEADS, FlowHead
from robofm.models.language import LANGUAGE_BACKBONES
from robofm.models.vision import VISION_ENCODERS
from robofm.models.vla import VLA
from robofm.spaces import ActionSpace, SpacesFile, StateSpace
from robofm.types import Batch, Observation

CAMS = ("front", "wrist")
STATE_DIMS = {"sim": 4, "arm7": 7}
ACTION_DIM = 7  # the larger embodiment's; "sim" uses the first 4 dims
GOLDEN = Path(__file__).parent / "golden_tiny.json"


def tiny(**kw) -> dataclasses.dataclass:
    return dataclasses.replace(MODEL_PRESETS["tiny"], **kw)


def build(cfg, seed: int = 0) -> VLA:
    torch.manual_seed(seed)
    return VLA(cfg, cameras=CAMS, state_dims=STATE_DIMS, action_dim=ACTION_DIM, pretrained=False)


def make_batch(cfg, b: int = 4, seed: int = 0) -> Batch:
    """Half the samples from the 4-dim robot (padded to 7 with masks), half from the 7-dim."""
    g = torch.Generator().manual_seed(seed)
    t, h, s = cfg.n_obs_steps, cfg.chunk_len, cfg.image_size
    emb = ["sim" if i % 2 == 0 else "arm7" for i in range(b)]
    action_mask = torch.tensor([[j < (4 if e == "sim" else 7) for j in range(7)] for e in emb])
    actions = (torch.rand(b, h, ACTION_DIM, generator=g) * 2 - 1) * action_mask[:, None]
    is_pad = torch.zeros(b, h, dtype=torch.bool)
    is_pad[0, -1] = True  # one chunk runs past its episode's end
    obs = Observation(
        images={c: torch.rand(b, t, 3, s, s, generator=g) for c in CAMS},
        image_mask={c: torch.ones(b, dtype=torch.bool) for c in CAMS},
        state=torch.randn(b, t, 7, generator=g) * action_mask[:, None, :].float(),
        state_mask=action_mask.clone(),
        prompt=["pick up the red cube", "lift the blue ball", "push the can", "stack it"][:b],
        embodiment=emb,
    )
    zeros = torch.zeros(b, dtype=torch.long)
    return Batch(obs, actions, is_pad, action_mask, zeros, zeros)


def seeded_loss(model: VLA, batch: Batch) -> torch.Tensor:
    torch.manual_seed(123)  # the same flow times / diffusion steps / noise every call
    return model.compute_loss(batch)


def normalizer() -> Normalizer:
    rng = np.random.default_rng(0)
    stats = {}
    for key, d in (("action", 4), ("observation.state", 4)):
        x = rng.normal(size=(100, d))
        stats[key] = {
            "mean": x.mean(0),
            "std": x.std(0),
            "min": x.min(0),
            "max": x.max(0),
            "q01": np.quantile(x, 0.01, 0),
            "q99": np.quantile(x, 0.99, 0),
            "count": np.array([100]),
        }
    return Normalizer(stats, "mean_std")


def spaces() -> SpacesFile:
    action = ActionSpace(
        robot="sim",
        names=("dx", "dy", "dz", "gripper"),
        units=("m", "m", "m", "1"),
        mode=("delta", "delta", "delta", "absolute"),
        frame="end_effector",
        low=(-0.05, -0.05, -0.05, 0.0),
        high=(0.05, 0.05, 0.05, 1.0),
        control_hz=10.0,
        chunk_len=4,
        gripper_dims=(3,),
    )
    return SpacesFile(action, StateSpace("sim", ("x", "y", "z", "w"), ("m", "m", "m", "m")))


BUILD = {"cameras": CAMS, "state_dims": STATE_DIMS, "action_dim": ACTION_DIM, "pretrained": False}


@pytest.mark.parametrize("head", list(HEADS))
@pytest.mark.parametrize("language", list(LANGUAGE_BACKBONES))
def test_every_backbone_head_pair_trains_samples_and_round_trips(language, head, tmp_path):
    cfg = tiny(language=language, head=head)
    model = build(cfg)
    batch = make_batch(cfg)
    before = seeded_loss(model, batch)
    assert before.shape == (4,) and torch.isfinite(before).all()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-3)
    for _ in range(3):
        opt.zero_grad()
        seeded_loss(model, batch).mean().backward()
        opt.step()
    after = seeded_loss(model, batch)
    assert after.mean() < before.mean(), (language, head, before.mean(), after.mean())

    model.eval()
    with torch.inference_mode():
        a1 = model.sample_actions(batch.obs, generator=torch.Generator().manual_seed(7))
    assert a1.shape == (4, cfg.chunk_len, ACTION_DIM) and torch.isfinite(a1).all()

    path = save_checkpoint(tmp_path / "ckpt", model, normalizer(), spaces(), build=BUILD)
    loaded, norm, sp = load_checkpoint(path)
    with torch.inference_mode():
        a2 = loaded.sample_actions(batch.obs, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a1, a2, rtol=0, atol=0)
    assert sp.action.robot == "sim" and sp.stats_sha256 == norm.stats_sha256


@pytest.mark.parametrize("vision", list(VISION_ENCODERS))
def test_every_vision_encoder_drives_the_vla(vision):
    cfg = tiny(vision=vision, head="regression")
    model = build(cfg)
    batch = make_batch(cfg)
    loss = seeded_loss(model, batch).mean()
    loss.backward()
    first = next(p for n, p in model.vision.named_parameters() if p.requires_grad)
    assert first.grad is not None and first.grad.abs().sum() > 0  # gradients reach the encoder
    with torch.inference_mode():
        out = model.eval().sample_actions(batch.obs)
    assert out.shape == (4, cfg.chunk_len, ACTION_DIM) and torch.isfinite(out).all()


def test_padded_action_dims_and_steps_do_not_affect_the_loss():
    cfg = tiny(head="regression")
    model = build(cfg)
    batch = make_batch(cfg)
    base = seeded_loss(model, batch)
    batch.actions[0, :, 4:] = 50.0  # sample 0 is the 4-dim robot: dims 4..6 are padding
    batch.actions[0, -1] = -50.0  # and its last step runs past the episode end
    torch.testing.assert_close(seeded_loss(model, batch), base)
    batch.actions[1, 0, 5] = 50.0  # sample 1 is the 7-dim robot: dim 5 is real
    assert seeded_loss(model, batch)[1] > base[1] + 1.0


def test_flow_prefix_cache_gives_the_same_actions_as_recomputing():
    cfg = tiny(head="flow", flow_steps=6)
    model = build(cfg).eval()
    batch = make_batch(cfg)
    assert isinstance(model.head, FlowHead)
    noise = torch.randn(4, cfg.chunk_len, ACTION_DIM, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        prefix = model.encode_prefix(batch.obs)
        cached = model.head.sample(prefix, noise=noise.clone(), use_cache=True)
        fresh = model.head.sample(prefix, noise=noise.clone(), use_cache=False)
    torch.testing.assert_close(cached, fresh, rtol=1e-6, atol=1e-6)


def test_new_embodiment_is_added_without_touching_the_trunk():
    cfg = tiny(head="regression")
    model = build(cfg)
    trunk = {k: v.clone() for k, v in model.trunk.state_dict().items()}
    model.embodiments.add("gripper2", 2)
    with pytest.raises(ConfigError, match="already registered"):
        model.embodiments.add("gripper2", 2)
    batch = make_batch(cfg)
    batch.obs.embodiment = ["gripper2"] * 4
    seeded_loss(model, batch).mean().backward()
    assert model.embodiments.stems["gripper2"].weight.grad is not None
    assert all(torch.equal(trunk[k], v) for k, v in model.trunk.state_dict().items())
    batch.obs.embodiment = ["unknown"] * 4
    with pytest.raises(ConfigError, match="unknown embodiment"):
        model.compute_loss(batch)


def golden_values() -> dict[str, dict[str, list[float]]]:
    """Loss and first sampled chunk of each head on the fixed-init tiny model."""
    out = {}
    for head in HEADS:
        cfg = tiny(head=head)
        model = build(cfg, seed=0)
        batch = make_batch(cfg, seed=0)
        loss = seeded_loss(model, batch)
        with torch.inference_mode():
            acts = model.eval().sample_actions(
                batch.obs, generator=torch.Generator().manual_seed(0)
            )
        out[head] = {"loss": loss.tolist(), "actions": acts[0, 0].tolist()}
    return out


def test_golden_values_of_the_tiny_model():
    """Refactors must not silently change the maths. Regenerate deliberately with
    `python -c "from tests.models.test_vla import write_golden; write_golden()"`."""
    want = json.loads(GOLDEN.read_text())
    got = golden_values()
    assert set(got) == set(want)
    for head in want:
        np.testing.assert_allclose(got[head]["loss"], want[head]["loss"], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(
            got[head]["actions"], want[head]["actions"], rtol=1e-4, atol=1e-4
        )


def write_golden() -> None:
    GOLDEN.write_text(json.dumps(golden_values(), indent=1) + "\n")


def test_incomplete_or_tampered_checkpoint_is_refused(tmp_path):
    cfg = tiny(head="regression")
    path = save_checkpoint(tmp_path / "ckpt", build(cfg), normalizer(), spaces(), build=BUILD)
    assert sorted(p.name for p in path.iterdir()) == [
        "action_space.json",
        "config.json",
        "model.safetensors",
        "stats.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name != "ckpt"]  # no temporary left behind
    body = json.loads((path / "stats.json").read_text())
    body["stats"]["action"]["mean"][0] += 1.0
    (path / "stats.json").write_text(json.dumps(body))
    with pytest.raises(CheckpointError, match="stats hash"):
        load_checkpoint(path)
    (path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"missing model\.safetensors"):
        load_checkpoint(path)


def test_grid_position_code_starts_cnn_token_positions_with_the_layout():
    from robofm.models.vla import grid_position_code

    code = grid_position_code(36, 64)  # a 6x6 map
    assert code.shape == (36, 64)
    assert not torch.equal(code[0, :32], code[6, :32])  # rows differ in the row half
    assert torch.equal(code[0, :32], code[5, :32])  # same row, same row code
    assert torch.equal(code[0, 32:], code[30, 32:])  # same column, same column code
    assert len({tuple(r.tolist()) for r in code}) == 36  # every cell distinct
    assert torch.count_nonzero(grid_position_code(10, 64)) == 0  # not a square grid
    cnn = VLA(tiny(vision="resnet_film"), **BUILD)
    vit = VLA(tiny(), **BUILD)  # small_vit adds its own position embeddings
    assert cnn.img_pos.abs().max() > 0.5 and vit.img_pos.abs().max() < 0.5


def test_trainable_text_encoder_is_cached_only_for_inference():
    model = build(tiny(language="word", head="regression"))
    obs = make_batch(model.cfg).obs
    model.eval()
    with torch.no_grad():
        plain = model.sample_actions(obs)
    assert not model._text_cache  # eval without inference_mode (validation): no cache
    with torch.inference_mode():
        cached = model.sample_actions(obs)
        again = model.sample_actions(obs)
    assert set(model._text_cache) == set(obs.prompt)
    torch.testing.assert_close(cached, plain)
    torch.testing.assert_close(again, plain)
    model.train()
    assert not model._text_cache  # the encoder's weights may change from here
    with torch.no_grad():
        model.language.embed.weight.mul_(2.0)
    model.eval()
    with torch.inference_mode():
        changed = model.sample_actions(obs)
    assert not torch.allclose(changed, plain)  # fresh features, not stale cached ones
