"""`torch.export` of the inference computation: the saved-and-reloaded program gives the same
normalised chunk as `VLA.sample_actions` on the same inputs and noise, for every head and for
instructions of any length; the exported artifact behind a `Policy` acts like the checkpoint;
the CLI writes the directory atomically; INT8 and ONNX fail with clear errors."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from robofm.cli import main as cli_main
from robofm.config import MODEL_PRESETS
from robofm.deploy.export import (
    ActionCore,
    example_inputs,
    export_checkpoint,
    export_model,
    input_names,
    load_exported,
)
from robofm.errors import ConfigError, NotAvailableError
from robofm.models.checkpoint import save_checkpoint
from robofm.models.vla import VLA
from robofm.policy import Policy
from robofm.types import Observation
from tests.models.test_vla import CAMS, build, normalizer, spaces, tiny

ROBOT = "arm7"  # the 7-dim embodiment of the two-robot tiny test model
PROMPTS = ("pick up the red cube", "lift it", "push the green cylinder to the yellow pad now")


@pytest.fixture(scope="module")
def sim_ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real tiny flow-head sim checkpoint (front + wrist, 32 px, chunk 4)."""
    from robofm.sim.record import smoke_checkpoint

    return smoke_checkpoint(tmp_path_factory.mktemp("export"), image_size=32, chunk_len=4)


def observation(model: VLA, args: tuple, prompt: str) -> Observation:
    """The Observation `sample_actions` sees for the program's tensor inputs."""
    n = len(model.cameras)
    return Observation(
        images=dict(zip(model.cameras, args[:n], strict=True)),
        image_mask={c: torch.ones(1, dtype=torch.bool) for c in model.cameras},
        state=args[n],
        state_mask=torch.ones(1, args[n].shape[-1], dtype=torch.bool),
        prompt=[prompt],
        embodiment=[ROBOT],
    )


@pytest.mark.parametrize("head", ["regression", "flow", "diffusion", "bins"])
def test_reloaded_program_matches_sample_actions(head, tmp_path):
    model = build(tiny(head=head)).eval()
    if head == "bins":  # H*D tokens decoded one by one, unrolled in the program: keep it short
        model = VLA(tiny(head=head, chunk_len=2), cameras=CAMS, state_dims={ROBOT: 7}, action_dim=2)
    program = export_model(model, ROBOT, PROMPTS[0])
    torch.export.save(program, str(tmp_path / "p.pt2"))
    run = torch.export.load(str(tmp_path / "p.pt2")).module()
    outs = []
    with torch.inference_mode():
        for seed, prompt in enumerate(PROMPTS):  # 6, 3 and 10 tokens: the text length is dynamic
            args = example_inputs(model, ROBOT, prompt, seed=seed)
            kw = {"noise": args[-1]} if head in ("flow", "diffusion") else {}
            want = model.sample_actions(observation(model, args, prompt), **kw)
            got = run(*args)
            assert got.shape == (1, model.cfg.chunk_len, model.action_dim)
            assert (got - want).abs().max() <= 1e-5, (head, prompt)
            outs.append(got)
        if head != "bins":  # (an untrained bins head often picks the same bins for all)
            assert not torch.equal(outs[0], outs[1])  # the inputs reach the output
        if head in ("flow", "diffusion"):  # the noise is an input, not drawn inside
            args = example_inputs(model, ROBOT, PROMPTS[0], seed=0)
            again = run(*args[:-1], torch.zeros_like(args[-1]))
            assert (again - outs[0]).abs().max() > 1e-3
            assert torch.equal(run(*args), outs[0])  # and with it the program is deterministic


def test_input_names_follow_cameras_and_head():
    assert input_names(build(tiny(head="flow"))) == [
        "image_front",
        "image_wrist",
        "state",
        "input_ids",
        "attention_mask",
        "noise",
    ]
    assert input_names(build(tiny(head="regression")))[-1] == "attention_mask"


def policy_obs(policy: Policy, prompt: str, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "images": {c: rng.integers(0, 256, (48, 48, 3), dtype=np.uint8) for c in policy.cameras},
        "state": (rng.normal(size=policy.state_dim) * 0.05).astype(np.float32),
        "prompt": prompt,
    }


def test_cli_export_round_trip_acts_like_the_checkpoint(sim_ckpt, tmp_path, capsys):
    out = tmp_path / "exported"
    assert cli_main(["deploy", "export", str(sim_ckpt), "--out", str(out), "--calls", "3"]) == 0
    text = capsys.readouterr().out
    diff = float(re.search(r"max \|exported - eager\| = (\S+)", text).group(1))
    assert diff <= 1e-5
    assert re.search(r"eager [\d.]+ ms, exported [\d.]+ ms", text)
    assert sorted(p.name for p in out.iterdir()) == [
        "action_space.json",
        "export.json",
        "policy.pt2",
        "stats.json",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["exported"]  # no temporary left behind
    meta = json.loads((out / "export.json").read_text())
    ckpt_cfg = json.loads((sim_ckpt / "config.json").read_text())
    assert meta["cameras"] == ckpt_cfg["build"]["cameras"]
    assert meta["chunk_len"] == 4 and meta["image_size"] == 32 and meta["head"] == "flow"
    assert [i["name"] for i in meta["inputs"]][-4:] == [
        "state",
        "input_ids",
        "attention_mask",
        "noise",
    ]
    assert meta["tokenizer"]["kind"] == "word"
    assert (out / "stats.json").read_bytes() == (sim_ckpt / "stats.json").read_bytes()
    assert (
        meta["action_space"] == json.loads((sim_ckpt / "action_space.json").read_text())["action"]
    )

    # behind a Policy (tokenisation, normalisation, noise from the seed, clipping outside the
    # program), the artifact gives the checkpoint's actions, step after step
    eager = Policy.from_checkpoint(sim_ckpt, seed=3)
    exported = load_exported(out).policy(seed=3)
    for step, prompt in enumerate([*PROMPTS, "123"]):  # "123": no words, the BOS token only
        obs = policy_obs(eager, prompt, step)
        a, b = eager.infer(obs)["actions"], exported.infer(obs)["actions"]
        assert a.shape == b.shape == (4, eager.spaces.action.dim)
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)

    # an existing directory is refused (exit 2 with one line), --overwrite replaces it
    assert cli_main(["deploy", "export", str(sim_ckpt), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err


def test_minilm_checkpoint_exports_with_its_tokenizer(tmp_path):
    """The `small` preset's backbones (pretrained MobileNetV2 + frozen MiniLM, keypoint
    readout, MLP trunk): the HF tokenizer is saved and used outside the program."""
    cfg = dataclasses.replace(MODEL_PRESETS["small"], image_size=32, head="flow", flow_steps=2)
    torch.manual_seed(0)
    build_args = {"cameras": CAMS, "state_dims": {"sim": 4}, "action_dim": 4, "pretrained": True}
    model = VLA(cfg, **build_args)
    ckpt = save_checkpoint(tmp_path / "ckpt", model, normalizer(), spaces(), build=build_args)
    meta = export_checkpoint(ckpt, tmp_path / "out")
    assert meta["tokenizer"]["kind"] == "hf"
    assert (tmp_path / "out" / "tokenizer" / "tokenizer_config.json").is_file()
    eager = Policy.from_checkpoint(ckpt, seed=1)
    exported = load_exported(tmp_path / "out").policy(seed=1)
    for step, prompt in enumerate(PROMPTS[:2]):
        obs = policy_obs(eager, prompt, step)
        np.testing.assert_allclose(
            eager.infer(obs)["actions"], exported.infer(obs)["actions"], rtol=0, atol=1e-5
        )


def test_int8_checkpoint_is_a_clear_config_error(sim_ckpt, tmp_path):
    from robofm.deploy.quantize import load_quantized, quantize_checkpoint

    int8 = quantize_checkpoint(sim_ckpt, tmp_path / "int8", min_weights=0)
    with pytest.raises(ConfigError, match=r"INT8 .* torch\.export cannot serialise"):
        export_checkpoint(int8, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model, _, sp = load_quantized(int8)
    with pytest.raises(ConfigError, match=r"head 'flow'.*INT8"):
        export_model(model, sp.action.robot)


def test_onnx_names_the_missing_package(sim_ckpt, tmp_path):
    with pytest.raises(NotAvailableError, match="onnx"):
        export_checkpoint(sim_ckpt, tmp_path / "out", fmt="onnx")


def test_core_without_export_is_the_model():
    """ActionCore, the traced module, is itself equal to sample_actions in eager mode and
    leaves the model's own text path untouched afterwards."""
    model = build(tiny(head="flow")).eval()
    core = ActionCore(model, ROBOT)
    args = example_inputs(model, ROBOT, PROMPTS[2], seed=4)
    with torch.inference_mode():
        want = model.sample_actions(observation(model, args, PROMPTS[2]), noise=args[-1])
        assert torch.equal(core(*args), want)
        assert "encode_text" not in vars(model)  # the stand-in is gone
        again = model.sample_actions(observation(model, args, PROMPTS[2]), noise=args[-1])
    assert torch.equal(again, want)
