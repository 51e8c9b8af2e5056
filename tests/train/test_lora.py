"""LoRA: only adapters (and the parts outside the targets) train, a frozen MiniLM still
passes gradients to its adapters, and merge-on-export keeps outputs and the plain
checkpoint format."""

from __future__ import annotations

import pytest
import torch

from robofm.errors import ConfigError
from robofm.models.checkpoint import load_checkpoint, save_checkpoint
from robofm.train.lora import (
    LoraSpec,
    apply_lora,
    lora_state_dict,
    lora_target_modules,
    merge_lora,
)
from tests.models.test_vla import BUILD, build, make_batch, normalizer, seeded_loss, spaces, tiny


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters by their plain name (peft moves a base weight to `<layer>.base_layer.*`)."""
    return {n.replace(".base_layer", ""): p.detach().clone() for n, p in model.named_parameters()}


def train(model, batch, steps: int = 3) -> None:
    # Every parameter goes to AdamW (weight decay on): one that got a gradient would move.
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        seeded_loss(model, batch).mean().backward()
        opt.step()


def actions(model, batch) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval().sample_actions(batch.obs, generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize(
    ("language", "targets"),
    [("llama", ("language",)), ("word", ("language",)), ("word", ("language", "vision"))],
)
def test_only_adapters_and_untargeted_parts_train(language, targets):
    cfg = tiny(language=language, head="regression")
    model = build(cfg)
    batch = make_batch(cfg)
    before = snapshot(model)
    counts = apply_lora(model, LoraSpec(rank=4, alpha=8.0, targets=targets))

    adapters = {n: p for n, p in model.named_parameters() if ".lora_" in n}
    assert adapters and all(p.requires_grad for p in adapters.values())
    assert counts["lora_params"] == sum(p.numel() for p in adapters.values())
    assert counts["targets"] == len([n for n in adapters if ".lora_B." in n])
    sd = lora_state_dict(model)
    assert set(sd) == set(adapters)
    assert all(torch.equal(sd[n], p) for n, p in adapters.items())

    loss0 = seeded_loss(model, batch).mean().item()
    train(model, batch)
    assert seeded_loss(model, batch).mean().item() < loss0

    after = snapshot(model)
    base = {n for n in after if ".lora_" not in n}
    assert base == set(before)  # adapters added, nothing renamed or removed
    in_target = {n for n in base if n.split(".", 1)[0] in targets}
    assert counts["frozen_base_params"] == sum(after[n].numel() for n in in_target)
    changed_base = [n for n in in_target if not torch.equal(after[n], before[n])]
    assert not changed_base  # bit-identical, not merely close
    for n, p in adapters.items():
        if ".lora_B." in n:
            assert p.abs().sum() > 0, n  # B starts at zero and moved
    outside = {n.split(".", 1)[0] for n in base - in_target if not torch.equal(after[n], before[n])}
    assert {"head", "img_proj", "embodiments"} <= outside
    assert ("vision" in outside) == ("vision" not in targets)


def test_frozen_minilm_passes_gradients_to_its_adapters():
    cfg = tiny(language="minilm", head="regression")
    model = build(cfg).train()
    batch = make_batch(cfg)
    keys = list(model.state_dict())
    assert model.language.frozen
    seeded_loss(model, batch)
    assert model._text_cache  # unadapted: features come from the per-prompt cache

    apply_lora(model, LoraSpec(rank=4))
    assert not model._text_cache
    seeded_loss(model, batch).mean().backward()
    adapters = {n: p for n, p in model.language.named_parameters() if ".lora_" in n}
    assert len(adapters) == 2 * len(lora_target_modules(build(cfg).language)) == 72
    assert all(p.grad is not None for p in adapters.values())
    assert all(p.grad.abs().sum() > 0 for n, p in adapters.items() if ".lora_B." in n)
    assert not model._text_cache  # the adapted encoder runs on every step
    base = [p for n, p in model.language.named_parameters() if ".lora_" not in n]
    assert all(p.grad is None and not p.requires_grad for p in base)

    merge_lora(model)
    assert list(model.state_dict()) == keys
    assert model.language.frozen and not any(p.requires_grad for p in model.language.parameters())


@pytest.mark.parametrize(
    ("language", "targets"), [("llama", ("language",)), ("word", ("language", "vision"))]
)
def test_merge_keeps_outputs_and_the_plain_checkpoint_format(language, targets, tmp_path):
    cfg = tiny(language=language, head="flow")
    model = build(cfg)
    batch = make_batch(cfg)
    plain_keys = list(build(cfg, seed=1).state_dict())
    apply_lora(model, LoraSpec(rank=4, alpha=8.0, targets=targets))
    train(model, batch)
    adapted = actions(model, batch)
    unmerged = {n: p.detach().clone() for n, p in model.named_parameters()}

    assert merge_lora(model) is model
    merged = actions(model, batch)
    torch.testing.assert_close(merged, adapted, rtol=0, atol=1e-5)
    assert list(model.state_dict()) == plain_keys
    assert not lora_state_dict(model)
    folded = [
        n
        for n, p in model.named_parameters()
        if n.split(".", 1)[0] in targets
        and n.endswith(".weight")
        and n.rsplit(".", 1)[0] + ".base_layer.weight" in unmerged
    ]
    assert folded and all(
        not torch.equal(
            model.get_parameter(n), unmerged[n.replace(".weight", ".base_layer.weight")]
        )
        for n in folded
    )  # the adapters' updates are now inside the base weights

    path = save_checkpoint(tmp_path / "ckpt", model, normalizer(), spaces(), build=BUILD)
    loaded, _, _ = load_checkpoint(path)
    torch.testing.assert_close(actions(loaded, batch), merged, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kw",
    [
        {"rank": 0},
        {"rank": -2},
        {"alpha": 0.0},
        {"dropout": 1.0},
        {"targets": ("trunk",)},
        {"targets": ()},
        {"targets": ("language", "language")},
    ],
)
def test_invalid_spec_is_refused(kw):
    with pytest.raises(ConfigError, match="LoraSpec"):
        LoraSpec(**kw)


def test_adapting_twice_or_a_missing_part_is_refused():
    cfg = tiny(head="regression")
    model = build(cfg)
    model.vision = None  # as in a VLM-backed VLA, which has no separate vision encoder
    with pytest.raises(ConfigError, match="no vision encoder"):
        apply_lora(model, LoraSpec(targets=("language", "vision")))
    assert not lora_state_dict(model)  # nothing was injected before the refusal
    apply_lora(model, LoraSpec())
    with pytest.raises(ConfigError, match="already has LoRA"):
        apply_lora(model, LoraSpec())
