"""INT8 quantization of a real tiny sim checkpoint (`smoke_checkpoint`): actions stay close to
float in robot units, reload is bit-identical, the files are smaller and the contract files
unchanged, writes are atomic, and bad inputs fail with the file or package named."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from torch import nn

from robofm.deploy import quantize as quant
from robofm.deploy.commands import main as deploy_main
from robofm.deploy.int8 import Int8DynamicLinear, quantize_weight
from robofm.deploy.quantize import (
    QUANT_FILE,
    checkpoint_bytes,
    load_quantized,
    plan_quantization,
    quantize_checkpoint,
    quantize_model,
    read_quantization,
)
from robofm.errors import ConfigError
from robofm.models.checkpoint import CheckpointError, load_checkpoint
from robofm.policy import Policy
from tests.models.test_vla import build, tiny

# Tolerance in the sim robot's units, per action step. dx/dy/dz: 0.5 mm, 1% of the sim's
# 50 mm per-step bound and about 4x the 0.13 mm int8 deviation measured on this checkpoint;
# gripper command (0 closed .. 1 open): 0.01, 1% of its range (measured 0.002). Int8 weights
# carry at most max|w| / 255 error per row, which a stack of ~10 layers turns into ~1% of the
# output's spread (the action std: 10-20 mm, 0.5). A model with every scale 10% off lands
# outside this band (2.6 mm, 0.04), so the tolerance separates int8 noise from a wrong kernel.
# (The demo's trained small checkpoint, with larger weights, stays within 1.1 mm / 0.03.)
TOL_TRANSLATION_M = 5e-4
TOL_GRIPPER = 1e-2


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(float tiny flow-head sim checkpoint, its INT8 copy with every eligible Linear int8)."""
    from robofm.sim.record import smoke_checkpoint

    root = tmp_path_factory.mktemp("quant")
    src = smoke_checkpoint(root, image_size=32, chunk_len=4)
    # tiny layers are below the default min_weights; 0 exercises the int8 path on all of them
    return src, quantize_checkpoint(src, root / "int8", min_weights=0)


def observations(policy: Policy, n: int = 3) -> list[dict]:
    rng = np.random.default_rng(0)
    return [
        {
            "images": {
                c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in policy.cameras
            },
            "state": (rng.normal(size=policy.state_dim) * 0.05).astype(np.float32),
            "prompt": prompt,
        }
        for prompt in ("lift the red cube", "pick up the cube", "lift it")[:n]
    ]


def max_deviation(a: Policy, b: Policy) -> np.ndarray:
    """(D,) largest |actions_a - actions_b| over a few observations, robot units."""
    obs = observations(a)
    return np.max([np.abs(a.infer(o)["actions"] - b.infer(o)["actions"]).max(0) for o in obs], 0)


def within_tolerance(dev: np.ndarray) -> bool:
    return bool((dev[:3] <= TOL_TRANSLATION_M).all() and dev[3] <= TOL_GRIPPER)


def test_int8_linear_is_pytorch_quantize_dynamic_bit_for_bit():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    torch.manual_seed(0)
    lin, x = nn.Linear(96, 80), torch.randn(2, 5, 96)  # (B, T, in)
    ours = Int8DynamicLinear.from_float(lin)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao is deprecated; the reference still runs
        ref = quantize_dynamic(nn.Sequential(lin), {nn.Linear: per_channel_dynamic_qconfig})
        ref_w = ref[0].weight()
        q, scale = quantize_weight(lin.weight)
        assert torch.equal(q, ref_w.int_repr())
        assert torch.equal(scale, ref_w.q_per_channel_scales().float())
        with torch.inference_mode():
            assert torch.equal(ours(x), ref(x))  # same kernel, same packed weights
    assert (ours(x) - lin(x)).abs().max() < 0.05  # and it is still the float layer, roughly


def test_int8_linear_state_dict_is_plain_tensors_that_round_trip():
    torch.manual_seed(0)
    layer, x = Int8DynamicLinear.from_float(nn.Linear(64, 32)), torch.randn(3, 64)
    state = layer.state_dict()
    assert {k: (v.dtype, tuple(v.shape)) for k, v in state.items()} == {
        "weight_int8": (torch.int8, (32, 64)),
        "weight_scale": (torch.float32, (32,)),
        "bias": (torch.float32, (32,)),
    }
    fresh = Int8DynamicLinear(64, 32)
    fresh.load_state_dict(state)
    assert torch.equal(fresh(x), layer(x))
    extra = fresh.load_state_dict({**state, "weight": torch.zeros(32, 64)}, strict=False)
    assert extra.unexpected_keys == ["weight"]  # a float weight left behind is reported
    with pytest.raises(RuntimeError, match="weight_int8"):
        fresh.load_state_dict({**state, "weight_int8": state["weight_int8"].float()})
    assert (
        "weight_int8"
        in fresh.load_state_dict({"weight_scale": state["weight_scale"]}, strict=False).missing_keys
    )


def test_quantized_policy_acts_like_the_float_one_in_robot_units(ckpts):
    src, dst = ckpts
    dev = max_deviation(Policy.from_checkpoint(src), Policy.from_checkpoint(dst))
    assert within_tolerance(dev), dev
    assert dev.max() > 0  # the int8 layers really ran

    broken = Policy.from_checkpoint(dst)  # every scale 10% off: must fall outside the band
    for m in broken.model.modules():
        if isinstance(m, Int8DynamicLinear):
            q, scale, bias = m.unpacked()
            m._pack(q, scale * 1.1, bias)
    assert not within_tolerance(max_deviation(Policy.from_checkpoint(src), broken))


def test_reload_gives_identical_actions(ckpts):
    src, dst = ckpts
    model, normalizer, spaces = load_checkpoint(src)
    quantize_model(model, read_quantization(dst)["quantized"])  # in memory, never saved
    in_memory = Policy(model, normalizer, spaces)
    first, second = Policy.from_checkpoint(dst), Policy(*load_quantized(dst))
    assert isinstance(first.model.trunk.blocks[0].mlp[0], Int8DynamicLinear)
    for o in observations(first):
        want = in_memory.infer(o)["actions"]
        np.testing.assert_array_equal(first.infer(o)["actions"], want)
        np.testing.assert_array_equal(second.infer(o)["actions"], want)


def test_smaller_on_disk_and_contract_files_byte_identical(ckpts):
    src, dst = ckpts
    float_mb, int8_mb = ((p / "model.safetensors").stat().st_size for p in (src, dst))
    assert int8_mb < 0.6 * float_mb  # linears 4 -> ~1 byte; embeddings/norms stay float
    assert checkpoint_bytes(dst) < 0.6 * checkpoint_bytes(src)
    for name in ("action_space.json", "stats.json", "config.json"):
        digest = [hashlib.sha256((p / name).read_bytes()).hexdigest() for p in (src, dst)]
        assert digest[0] == digest[1], name
    manifest = read_quantization(dst)
    assert "trunk.blocks.0.attn.q" in manifest["quantized"]
    assert "output" in manifest["kept_float"]["linear"]["head.out"]["reason"]
    assert {"LayerNorm", "Embedding", "Conv2d"} <= set(manifest["kept_float"]["modules"])
    with safe_open(str(dst / "model.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.get_tensor("trunk.blocks.0.attn.q.weight_int8").dtype == torch.int8
    assert "trunk.blocks.0.attn.q.weight" not in keys and "head.out.weight" in keys


def test_plan_keeps_outputs_frozen_text_encoder_and_tied_weights_float():
    model = build(tiny(language="minilm", head="bins"))  # the real, frozen MiniLM
    names, kept = plan_quantization(model, min_weights=0)
    assert "head.logits" not in names and "output" in kept["linear"]["head.logits"]["reason"]
    assert not [n for n in names if n.startswith("language.")]
    assert (
        "frozen text encoder"
        in kept["linear"]["language.model.encoder.layer.0.output.dense"]["reason"]
    )
    assert "head.blocks.0.mlp.0" in names
    names, kept = plan_quantization(model, min_weights=0, keep_float=("head.blocks.0",))
    assert "head.blocks.0.mlp.0" not in names and "head.blocks.1.mlp.0" in names
    assert "request" in kept["linear"]["head.blocks.0.mlp.2"]["reason"]

    tied = nn.Module()
    tied.embed, tied.proj = nn.Embedding(300, 256), nn.Linear(256, 300, bias=False)
    tied.proj.weight = tied.embed.weight
    names, kept = plan_quantization(tied, min_weights=0)
    assert names == [] and "tied" in kept["linear"]["proj"]["reason"]
    names, kept = plan_quantization(build(tiny()))  # default threshold: tiny layers stay float
    assert names == [] and "min_weights" in kept["linear"]["trunk.blocks.0.mlp.0"]["reason"]


def test_existing_dst_is_refused_unless_overwrite(ckpts, tmp_path):
    src, _ = ckpts
    dst = tmp_path / "int8"
    dst.mkdir()
    (dst / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="already exists"):
        quantize_checkpoint(src, dst, min_weights=0)
    assert (dst / "keep.txt").read_text() == "mine"
    quantize_checkpoint(src, dst, min_weights=0, overwrite=True)
    assert not (dst / "keep.txt").exists() and (dst / QUANT_FILE).is_file()
    with pytest.raises(ConfigError, match="already quantized"):
        quantize_checkpoint(dst, tmp_path / "again", min_weights=0)
    with pytest.raises(ConfigError, match="no_such_module"):
        quantize_checkpoint(src, tmp_path / "typo", min_weights=0, keep_float=("no_such_module",))
    with pytest.raises(ConfigError, match="no Linear layer"):
        quantize_checkpoint(src, tmp_path / "default")  # every tiny layer is below 65536


def test_a_failure_mid_write_leaves_no_dst(ckpts, tmp_path, monkeypatch):
    src, _ = ckpts
    written = []

    def fail(path: Path, manifest: dict) -> None:
        written.append((path.parent / "model.safetensors").is_file())
        raise OSError("disk full")

    monkeypatch.setattr(quant, "_write_manifest", fail)
    with pytest.raises(OSError, match="disk full"):
        quantize_checkpoint(src, tmp_path / "int8", min_weights=0)
    assert written == [True]  # the weights were on disk when it failed
    assert list(tmp_path.iterdir()) == []  # no dst, no temporary sibling left behind


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        pytest.param(lambda m: "{not json", "invalid JSON", id="not-json"),
        pytest.param(lambda m: json.dumps({**m, "version": 99}), "version", id="version"),
        pytest.param(
            lambda m: json.dumps({**m, "quantized": ["trunk.no_such_layer"]}),
            "not Linear",
            id="unknown-layer",
        ),
        pytest.param(
            lambda m: json.dumps({**m, "quantized": "trunk"}), "non-empty list", id="not-a-list"
        ),
    ],
)
def test_corrupt_quantization_json_is_a_clear_error_naming_the_file(
    ckpts, tmp_path, corrupt, message
):
    src, _ = ckpts
    dst = quantize_checkpoint(src, tmp_path / "int8", min_weights=0)
    manifest = json.loads((dst / QUANT_FILE).read_text())
    (dst / QUANT_FILE).write_text(corrupt(manifest))
    with pytest.raises(CheckpointError, match=message) as err:
        Policy.from_checkpoint(dst)
    assert QUANT_FILE in str(err.value)


def test_quantized_checkpoint_is_refused_for_training_and_on_gpu(ckpts):
    src, dst = ckpts
    with pytest.raises(CheckpointError, match="float source") as err:
        load_checkpoint(dst)  # what train's init_from calls
    assert str(src.resolve()) in str(err.value)
    with pytest.raises(ConfigError, match="CPU"):
        load_quantized(dst, device="cuda")


@pytest.mark.skipif(
    any(importlib.util.find_spec(p) for p in ("torchao", "bitsandbytes")),
    reason="a weight-only package is installed",
)
@pytest.mark.parametrize(("mode", "device"), [("int4", "cpu"), ("int8", "cuda")])
def test_int4_and_gpu_modes_name_the_missing_package(ckpts, tmp_path, mode, device):
    with pytest.raises(ConfigError, match="torchao"):
        quantize_checkpoint(ckpts[0], tmp_path / "q", mode=mode, device=device)
    assert not (tmp_path / "q").exists()


def test_cli_prints_size_and_latency_table(ckpts, tmp_path, capsys):
    src, _ = ckpts
    argv = ["quantize", str(src), "--out", str(tmp_path / "q"), "--min-weights", "0"]
    assert deploy_main([*argv, "--calls", "3", "--warmup", "1"]) == 0
    out = capsys.readouterr().out
    for row in ("model.safetensors MB", "chunk latency p50 ms", "chunk latency p90 ms", "RSS"):
        assert row in out, row
    assert (tmp_path / "q" / QUANT_FILE).is_file()
