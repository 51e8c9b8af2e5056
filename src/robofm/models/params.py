"""Parameter counts and memory estimates of model presets; full-size ones on `meta`.

Building on `meta` allocates no storage, so a 7B preset is counted exactly in a fraction of a
second on a laptop. This backs `robofm bench --params`.
"""

from __future__ import annotations

from typing import Any

import torch

from robofm.config import MODEL_PRESETS, ModelConfig

BYTES = {"fp32": 4, "bf16": 2, "int8": 1}


def param_report(
    cfg: ModelConfig,
    *,
    cameras: tuple[str, ...] = ("front",),
    state_dim: int = 6,
    action_dim: int = 6,
) -> dict[str, Any]:
    """Parameter counts (total, trainable, per part) and weight memory of `cfg`, built on
    the meta device with random-init backbones of the configured sizes."""
    from robofm.models.vla import VLA

    # Full-size presets are built on `meta`; the CPU presets load their shipped pretrained
    # weights, which is cheap and counts them exactly as trained.
    full = bool(cfg.language_size or cfg.vision_size)
    with torch.device("meta" if full else "cpu"):
        model = VLA(
            cfg,
            cameras=cameras,
            state_dims={"robot": state_dim},
            action_dim=action_dim,
            pretrained=not full and cfg.language not in ("gemma", "qwen2", "llama"),
        )
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    parts = {}
    for name, module in model.named_children():
        n = sum(p.numel() for p in module.parameters())
        if n:
            parts[name] = n
    loose = total - sum(parts.values())  # parameters held directly by the VLA (positions)
    if loose:
        parts["other"] = loose
    return {
        "total": total,
        "trainable": trainable,
        "parts": parts,
        "weights_gb": {k: total * b / 1e9 for k, b in BYTES.items()},
        # AdamW training in fp32: weights + grads + two moments for the trainable part
        "train_fp32_gb": (total * 4 + trainable * 12) / 1e9,
    }


def params_table(names: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per preset (all presets by default), for printing."""
    rows = []
    for name in names or list(MODEL_PRESETS):
        cfg = MODEL_PRESETS[name]
        r = param_report(cfg)
        rows.append(
            {
                "preset": name,
                "vision": cfg.vision + (f"/{cfg.vision_size}" if cfg.vision_size else ""),
                "language": cfg.language + (f"/{cfg.language_size}" if cfg.language_size else ""),
                "head": cfg.head,
                "params_M": round(r["total"] / 1e6, 1),
                "trainable_M": round(r["trainable"] / 1e6, 1),
                "head_M": round(r["parts"].get("head", 0) / 1e6, 1),
                "bf16_GB": round(r["weights_gb"]["bf16"], 2),
                "train_fp32_GB": round(r["train_fp32_gb"], 1),
            }
        )
    return rows
