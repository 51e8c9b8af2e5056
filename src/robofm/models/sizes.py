"""Named full-size dimensions of the HF backbones, for building real-sized models.

Used with `ModelConfig.vision_size` / `language_size`. Built on the `meta` device these give
exact parameter counts and memory estimates without allocating; with a `path` to a local
checkpoint, the checkpoint's own config wins and these are not used.
"""

from __future__ import annotations

from typing import Any

from robofm.errors import ConfigError

# SigLIP / ViT towers (transformers SiglipVisionConfig / ViTConfig keyword arguments).
VISION_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "siglip": {
        # SigLIP so400m/14: PaliGemma's and OpenVLA's tower (~400M)
        "so400m": dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            patch_size=14,
        ),
        # SigLIP base/16: SmolVLM2-500M's tower (~86M)
        "base16": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            patch_size=16,
        ),
    },
    "vit_hf": {
        "base16": dict(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            patch_size=16,
        ),
    },
}

# Decoder-only LMs (transformers config keyword arguments for the family's model_type).
LANGUAGE_SIZES: dict[str, dict[str, dict[str, Any]]] = {
    "gemma": {
        # Gemma 2B: PaliGemma's language model
        "2b": dict(
            hidden_size=2048,
            intermediate_size=16384,
            num_hidden_layers=18,
            num_attention_heads=8,
            num_key_value_heads=1,
            head_dim=256,
            vocab_size=257152,
        ),
    },
    "llama": {
        # Llama 2 7B: OpenVLA's language model
        "7b": dict(
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            head_dim=128,
            vocab_size=32000,
        ),
        # SmolLM2-360M (SmolVLM2-500M's LM) truncated to 16 layers, as SmolVLA does
        "smollm2_360m_16l": dict(
            hidden_size=960,
            intermediate_size=2560,
            num_hidden_layers=16,
            num_attention_heads=15,
            num_key_value_heads=5,
            head_dim=64,
            vocab_size=49280,
        ),
    },
    "qwen2": {
        "0.5b": dict(
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            head_dim=64,
            vocab_size=151936,
        ),
    },
}
# PaliGemma 3B = SigLIP so400m/14 at 224 px + Gemma 2B.
VLM_SIZES: dict[str, dict[str, tuple[dict[str, Any], dict[str, Any]]]] = {
    "paligemma": {"3b": (VISION_SIZES["siglip"]["so400m"], LANGUAGE_SIZES["gemma"]["2b"])},
}


def lookup(table: dict[str, dict[str, Any]], name: str, size: str) -> Any:
    """`table[name][size]`, or `ConfigError` listing the sizes `name` has."""
    sizes = table.get(name, {})
    if size not in sizes:
        raise ConfigError(f"no size {size!r} for {name!r}; known sizes: {sorted(sizes) or 'none'}")
    return sizes[size]
