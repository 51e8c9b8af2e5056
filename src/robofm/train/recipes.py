"""The two training recipes on the one loop; each is a `TrainConfig` preset plus checks.

- `finetune`: 50-500 demonstrations of the target robot, low lr (default 2e-5, documented
  range 1e-5..5e-5), vision frozen for the first `freeze_vision_frac` of the steps and then
  trained at lr * `vision_lr_scale`; optional head-only or LoRA (`lora_rank`), merged into
  the weights on export. Starts from `init_from` (a robofm checkpoint; a new robot gets a
  new adapter) or from the pretrained backbones.
- `pretrain`: weighted mixtures of several robots' datasets from the pretrained backbones.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from robofm.config import TrainConfig
from robofm.errors import ConfigError
from robofm.train.loop import train

FINETUNE_LR_RANGE = (1e-5, 5e-5)


def finetune(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune; warns when the lr leaves the documented range. With LoRA, the adapters are
    merged into the final checkpoint's weights (a plain checkpoint any Policy loads)."""
    lo, hi = FINETUNE_LR_RANGE
    if not lo <= cfg.optim.lr <= hi:
        warnings.warn(
            f"fine-tuning lr {cfg.optim.lr:g} is outside the usual {lo:g}..{hi:g}",
            stacklevel=2,
        )
    result = train(cfg)
    if cfg.lora_rank > 0 and result["checkpoint"]:
        result["merged"] = str(export_merged(result["checkpoint"], cfg))
    return result


def pretrain(cfg: TrainConfig) -> dict[str, Any]:
    """Pretrain on a mixture; `data.weights` (if given) must match `data.paths`."""
    if cfg.data.weights and len(cfg.data.weights) != len(cfg.data.paths):
        raise ConfigError(
            f"data.weights has {len(cfg.data.weights)} entries for {len(cfg.data.paths)} paths"
        )
    return train(cfg)


def export_merged(checkpoint: str, cfg: TrainConfig):
    """Load a LoRA training checkpoint, merge the adapters, save `<checkpoint>_merged`."""
    from pathlib import Path

    import torch
    from safetensors.torch import load_file

    from robofm.data.stats import load_normalizer
    from robofm.models.checkpoint import read_checkpoint_meta, read_transforms, save_checkpoint
    from robofm.models.vla import VLA
    from robofm.spaces import load_spaces
    from robofm.train.lora import apply_lora, merge_lora, spec_from_config

    path = Path(checkpoint)
    mcfg, build = read_checkpoint_meta(path)
    model = VLA(mcfg, **build)
    apply_lora(model, spec_from_config(cfg))
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    merge_lora(model)
    out = path.with_name(path.name + "_merged")
    with torch.no_grad():
        save_checkpoint(
            out,
            model,
            load_normalizer(path / "stats.json"),
            load_spaces(path / "action_space.json"),
            build=build,
            transforms=read_transforms(path),  # the merged policy crops as training did
        )
    return out


RECIPES: dict[str, Callable[[TrainConfig], dict[str, Any]]] = {
    "finetune": finetune,
    "pretrain": pretrain,
}


def with_model(cfg: TrainConfig, model_preset: str) -> TrainConfig:
    """`cfg` with its model replaced by the named model preset."""
    from robofm.config import MODEL_PRESETS, get_preset

    return replace(cfg, model=get_preset(MODEL_PRESETS, model_preset, "model preset"))
