"""Checkpoints: a directory with `model.safetensors`, `config.json`, `stats.json` and
`action_space.json`, written atomically (temporary sibling, then rename).

`config.json` holds the ModelConfig plus what else rebuilds the exact architecture: cameras,
per-embodiment state dims, action dim, and whether the backbones were built from their
pretrained weights or from tiny configs. `stats.json` is the saved `Normalizer` (mode, masks,
stats); `action_space.json` carries the ActionSpace/StateSpace with the stats' SHA-256, so a
checkpoint whose stats were swapped is caught at load time.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from robofm.atomic import atomic_dir
from robofm.config import ModelConfig, config_from_dict, config_to_dict
from robofm.data.stats import Normalizer, load_normalizer, save_stats
from robofm.errors import ConfigError
from robofm.spaces import SpacesFile, load_spaces, save_spaces

CHECKPOINT_FORMAT = "robofm.checkpoint"
CHECKPOINT_VERSION = 1
FILES = ("model.safetensors", "config.json", "stats.json", "action_space.json")


class CheckpointError(ConfigError):
    """A checkpoint directory is incomplete or inconsistent; the message names the file."""


def save_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    normalizer: Normalizer,
    spaces: SpacesFile,
    *,
    build: dict[str, Any],
    transforms: dict[str, Any] | None = None,
    extra_files: dict[str, bytes] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `model` (a VLA), its normaliser and contract to `path` atomically.

    `build` holds the VLA constructor arguments besides the config (cameras, state_dims,
    action_dim, pretrained, vision_path, language_path). `transforms` records the input
    transforms the policy must apply (e.g. {"image_crop_scale": [0.8, 1.0]}, the training
    crop whose deterministic centre-crop variant inference uses). `extra_files` (name -> bytes) adds
    training state such as optimizer.pt. Returns the final path.
    """
    path = Path(path)
    spaces = SpacesFile(spaces.action, spaces.state, stats_sha256=normalizer.stats_sha256)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        config = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "model": config_to_dict(model.cfg),
            "build": {**build, "cameras": list(build["cameras"])},
            "transforms": dict(transforms or getattr(model, "transforms", {}) or {}),
        }
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        save_stats(tmp / "stats.json", normalizer)
        save_spaces(tmp / "action_space.json", spaces)
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
    return path


def read_checkpoint_meta(path: str | Path) -> tuple[ModelConfig, dict[str, Any]]:
    """(ModelConfig, build arguments) from `path/config.json`, with clear errors."""
    path = Path(path)
    missing = [f for f in FILES if not (path / f).exists()]
    if missing:
        raise CheckpointError(f"{path}: not a complete checkpoint, missing {', '.join(missing)}")
    try:
        body = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path / 'config.json'}: invalid JSON: {e.msg}") from None
    if body.get("format") != CHECKPOINT_FORMAT or body.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path / 'config.json'}: format {body.get('format')!r} version "
            f"{body.get('version')!r}; expected {CHECKPOINT_FORMAT!r} version {CHECKPOINT_VERSION}"
        )
    cfg = config_from_dict(ModelConfig, body.get("model"), f"{path / 'config.json'}: model")
    build = dict(body.get("build") or {})
    build["cameras"] = tuple(build.get("cameras", ()))
    return cfg, build


def read_transforms(path: str | Path) -> dict[str, Any]:
    """The input transforms recorded in `path/config.json` ({} when none)."""
    body = json.loads((Path(path) / "config.json").read_text())
    return dict(body.get("transforms") or {})


def load_checkpoint(path: str | Path, device: str = "cpu", *, allow_quantized: bool = False):
    """(VLA in eval mode, Normalizer, SpacesFile) from a checkpoint directory.

    Every weight must match the rebuilt architecture (strict), and the stats must hash to
    the value recorded in action_space.json. An INT8 checkpoint (`quantization.json`, see
    `robofm.deploy.quantize`) loads only with `allow_quantized` (inference, not training).
    """
    from robofm.models.vla import VLA

    path = Path(path)
    cfg, build = read_checkpoint_meta(path)
    model = VLA(cfg, **build)
    if (path / "quantization.json").exists():
        from robofm.deploy.quantize import prepare_quantized

        prepare_quantized(model, path, device=device, inference=allow_quantized)
    state = load_file(str(path / "model.safetensors"), device=device)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(
            f"{path / 'model.safetensors'}: weights do not match the architecture in "
            f"config.json (missing {result.missing_keys[:5]}, unexpected "
            f"{result.unexpected_keys[:5]})"
        )
    normalizer = load_normalizer(path / "stats.json")
    spaces = load_spaces(path / "action_space.json")
    if spaces.stats_sha256 and spaces.stats_sha256 != normalizer.stats_sha256:
        raise CheckpointError(
            f"{path}: stats.json does not match the stats hash in action_space.json "
            f"({normalizer.stats_sha256[:12]} vs {spaces.stats_sha256[:12]})"
        )
    model.transforms = read_transforms(path)  # what Policy applies to camera frames
    del state
    release_freed_memory()  # the replaced initial weights (and float Linears of INT8 copies)
    return model.to(device).eval(), normalizer, spaces


def release_freed_memory() -> None:
    """Hand memory freed by the allocator back to the OS (glibc `malloc_trim`), so a loaded
    policy's resident size is what it holds, not what building it once took. No-op where
    glibc is absent."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
