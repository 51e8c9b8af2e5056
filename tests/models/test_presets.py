"""Model presets: sizes as documented, counted exactly on the meta device."""

from __future__ import annotations

import pytest

from robofm.config import MODEL_PRESETS
from robofm.models.params import param_report


@pytest.mark.parametrize(
    ("preset", "total_m", "trainable_m"),
    [
        ("tiny", (0.1, 5), (0.1, 5)),  # CI: under 5M parameters
        ("small", (26, 36), (5, 12)),  # CPU demo: ~7M trainable next to frozen MiniLM (22M)
        ("specialist", (2, 8), (2, 8)),  # distillation student: no MiniLM, a tenth of small
        ("smolvla-size", (380, 480), (80, 130)),  # SmolVLA: ~450M in all, ~100M trainable
        ("pi0", (3100, 3500), (3100, 3500)),  # PaliGemma 3B + ~300M expert
        ("openvla", (6900, 7700), (6900, 7700)),  # Llama 2 7B + SigLIP so400m
    ],
)
def test_preset_parameter_counts(preset, total_m, trainable_m):
    r = param_report(MODEL_PRESETS[preset])
    assert total_m[0] <= r["total"] / 1e6 <= total_m[1]
    assert trainable_m[0] <= r["trainable"] / 1e6 <= trainable_m[1]
    assert sum(r["parts"].values()) == r["total"]
    assert r["weights_gb"]["bf16"] == pytest.approx(r["total"] * 2 / 1e9)


def test_pi0_expert_is_about_300m():
    r = param_report(MODEL_PRESETS["pi0"])
    assert 250e6 <= r["parts"]["head"] <= 400e6
