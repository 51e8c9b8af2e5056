"""Language backbones: the pretrained MiniLM encoder, the hashed word encoder, tiny HF causal
LMs and VLMs built from configs, save/load round trips, and the registry."""

from __future__ import annotations

import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from robofm.errors import ConfigError
from robofm.models.language import (
    LANGUAGE_BACKBONES,
    WORD_BOS,
    build_language,
    minilm_path,
    word_ids,
)

REPO = Path(__file__).resolve().parents[2]
LMS = ["gemma", "qwen2", "llama"]
VLMS = ["paligemma", "idefics3"]
KINDS = {"minilm": "encoder", "word": "encoder", **dict.fromkeys(LMS, "lm")}
KINDS.update(dict.fromkeys(VLMS, "vlm"))
PROMPTS = ["pick up the red cube", "open"]  # the second is padded


@pytest.fixture(scope="module")
def minilm():
    return build_language("minilm")


# ---- MiniLM --------------------------------------------------------------------------------


def test_minilm_synonyms_closer_than_unrelated(minilm) -> None:
    ids = minilm.tokenize(
        ["pick up the red cube", "lift the crimson block", "the weather is sunny today"]
    )
    emb = minilm.pooled(ids["input_ids"], ids["attention_mask"])  # (3, 384)
    assert emb.shape == (3, 384) and minilm.width == 384
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3), atol=1e-5, rtol=0)
    sim = emb @ emb.T
    assert sim[0, 1] > sim[0, 2] + 0.2, sim


def test_minilm_pooling_ignores_padding(minilm) -> None:
    alone = minilm.tokenize(["open"])
    batch = minilm.tokenize(["open", "put the green sponge inside the top drawer"])
    assert batch["attention_mask"][0].sum() < batch["attention_mask"].shape[1]  # padded
    a = minilm.pooled(**alone)[0]
    b = minilm.pooled(**batch)[0]
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_minilm_frozen(minilm) -> None:
    assert minilm.kind == "encoder" and minilm.frozen
    assert not any(p.requires_grad for p in minilm.parameters())
    minilm.train()  # a VLA in training mode must not turn dropout on inside a frozen encoder
    ids = minilm.tokenize(PROMPTS)
    tokens, mask = minilm(ids["input_ids"], ids["attention_mask"])
    again, _ = minilm(ids["input_ids"], ids["attention_mask"])
    assert tokens.grad_fn is None and not tokens.requires_grad
    assert torch.equal(tokens, again)
    assert tokens.shape == (*ids["input_ids"].shape, 384)
    assert mask.dtype == torch.bool and torch.equal(mask, ids["attention_mask"].bool())
    assert (minilm_path() / "model.safetensors").is_file()


# ---- word encoder ----------------------------------------------------------------------------


def test_word_ids_are_stable_across_processes() -> None:
    texts = ["Pick up the RED cube!", "open the drawer"]
    code = (
        "from robofm.models.language import build_language;"
        f"print(build_language('word', width=32).tokenize({texts!r})['input_ids'].tolist())"
    )
    seen = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            cwd=REPO,
        )
        seen.append(out.stdout.strip())
    here = build_language("word", width=32).tokenize(texts)["input_ids"].tolist()
    assert seen[0] == seen[1] == str(here)
    # the documented scheme: BOS, then 2 + crc32(lower-cased word) % 4096
    words = ["pick", "up", "the", "red", "cube"]
    expected = [WORD_BOS] + [2 + zlib.crc32(w.encode()) % 4096 for w in words]
    assert here[0] == expected
    assert word_ids("pick  up, the red-cube") == expected


def test_word_encoder_shapes_mask_and_gradients() -> None:
    enc = build_language("word", width=48)
    assert enc.kind == "encoder" and enc.width == 48 and not enc.frozen
    ids = enc.tokenize(["pick up the red cube", "open", ""])
    assert ids["input_ids"].shape == (3, 6)
    assert ids["attention_mask"].sum(1).tolist() == [6, 2, 1]  # BOS keeps "" non-empty
    tokens, mask = enc(ids["input_ids"], ids["attention_mask"])
    assert torch.equal(mask, ids["attention_mask"].bool())
    assert tokens.shape == (3, 6, 48) and torch.isfinite(tokens).all()
    # padding is masked: "open" alone encodes the same as "open" padded in a batch
    alone, _ = enc(**enc.tokenize(["open"]))
    torch.testing.assert_close(tokens[1, :2], alone[0], atol=1e-5, rtol=0)
    enc.pooled(ids["input_ids"], ids["attention_mask"]).pow(2).sum().backward()
    assert enc.embed.weight.grad is not None and enc.embed.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.trunk.parameters())


# ---- causal LMs ------------------------------------------------------------------------------


def _lm_inputs(lm, seed: int = 0):
    """[3 image tokens ; text ; 1 state token] as the VLA builds it, and the mask."""
    g = torch.Generator().manual_seed(seed)
    ids = lm.tokenize(PROMPTS)
    text = lm.embed_tokens(ids["input_ids"])  # (B, T, W)
    b, _, w = text.shape
    img = torch.randn(b, 3, w, generator=g)
    state = torch.randn(b, 1, w, generator=g)
    seq = torch.cat([img, text, state], 1).detach()  # (B, L, W)
    mask = torch.cat(
        [torch.ones(b, 3), ids["attention_mask"], torch.ones(b, 1)], 1
    ).bool()  # (B, L)
    return ids, seq, mask


@pytest.mark.parametrize("name", LMS)
def test_lm_shapes_and_padding(name: str) -> None:
    lm = build_language(name, tiny=True)
    assert lm.kind == "lm" and lm.width == 64
    ids, seq, mask = _lm_inputs(lm)
    assert lm.embed_tokens(ids["input_ids"]).shape == (*ids["input_ids"].shape, 64)
    out = lm(seq, mask)
    assert out.shape == seq.shape and torch.isfinite(out).all()

    pad = int((~mask[1]).nonzero()[0])  # first padded position of the short prompt
    changed = seq.clone()
    changed[1, pad] += 5.0
    out2 = lm(changed, mask)
    valid = mask[1]
    # masked: no valid position (before or after the pad) sees the padded embedding
    torch.testing.assert_close(out2[1, valid], out[1, valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(out2[0], out[0], atol=1e-5, rtol=0)
    # unmasked: causal, so positions before the pad still agree but the state token after it moves
    ones = torch.ones_like(mask)
    a, b = lm(seq, ones), lm(changed, ones)
    torch.testing.assert_close(a[1, :pad], b[1, :pad], atol=1e-5, rtol=0)
    assert (a[1, -1] - b[1, -1]).abs().max() > 1e-3


@pytest.mark.parametrize("name", LMS)
def test_lm_save_load_round_trip(name: str, tmp_path: Path) -> None:
    lm = build_language(name, tiny=True).eval()
    ids, seq, mask = _lm_inputs(lm)
    lm.save_pretrained(tmp_path)
    back = build_language(name, path=str(tmp_path)).eval()
    assert back.width == lm.width
    ids2 = back.tokenize(PROMPTS)
    assert torch.equal(ids2["input_ids"], ids["input_ids"])
    assert torch.equal(ids2["attention_mask"], ids["attention_mask"])
    torch.testing.assert_close(
        back.embed_tokens(ids2["input_ids"]), lm.embed_tokens(ids["input_ids"])
    )
    with torch.no_grad():
        torch.testing.assert_close(back(seq, mask), lm(seq, mask), atol=0, rtol=0)


@pytest.mark.parametrize("name", LMS)
def test_lm_loads_causal_lm_checkpoint(name: str, tmp_path: Path) -> None:
    """Hub LMs are saved as *ForCausalLM; the backbone keeps their trunk and drops the head."""
    from transformers import AutoModelForCausalLM

    lm = build_language(name, tiny=True)
    full = AutoModelForCausalLM.from_config(lm.model.config).eval()
    full.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    back = build_language(name, path=str(tmp_path), trainable=False)
    assert back.frozen and not any(p.requires_grad for p in back.parameters())
    _, seq, mask = _lm_inputs(back)
    with torch.no_grad():
        want = full.model(inputs_embeds=seq, attention_mask=mask.long()).last_hidden_state
        torch.testing.assert_close(back(seq, mask), want)
    other = "qwen2" if name != "qwen2" else "llama"
    with pytest.raises(ConfigError, match="model_type"):
        build_language(other, path=str(tmp_path))


# ---- VLMs ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", VLMS)
def test_vlm_shapes_image_use_and_padding(name: str) -> None:
    vlm = build_language(name, tiny=True).eval()
    assert vlm.kind == "vlm" and vlm.width == 64 and vlm.image_size == 32
    ids = vlm.tokenize(PROMPTS)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 48, 40, generator=g)  # resized inside
    with torch.no_grad():
        tokens, mask = vlm(images, ids["input_ids"], ids["attention_mask"])
        n, t = vlm.num_image_tokens, ids["input_ids"].shape[1]
        assert tokens.shape == (2, n + t, 64) and torch.isfinite(tokens).all()
        assert mask.dtype == torch.bool and mask[:, :n].all()
        assert torch.equal(mask[:, n:], ids["attention_mask"].bool())
        # the image is read: another image moves the text positions' features
        other, _ = vlm(1.0 - images, ids["input_ids"], ids["attention_mask"])
        assert (other[:, n:] - tokens[:, n:]).abs().max() > 1e-4
        # a uniform mid-grey frame is a real image, not dropped as padding
        grey, _ = vlm(torch.full_like(images, 0.5), ids["input_ids"], ids["attention_mask"])
        assert grey.shape == tokens.shape and torch.isfinite(grey).all()
        # padding is masked: a different token at a padded position changes no valid output
        pad = int((~ids["attention_mask"][1].bool()).nonzero()[0])
        ids2 = ids["input_ids"].clone()
        ids2[1, pad] = 100
        moved, _ = vlm(images, ids2, ids["attention_mask"])
        torch.testing.assert_close(moved[mask], tokens[mask], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", VLMS)
def test_vlm_save_load_round_trip(name: str, tmp_path: Path) -> None:
    vlm = build_language(name, tiny=True).eval()
    ids = vlm.tokenize(PROMPTS)
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    vlm.save_pretrained(tmp_path)
    back = build_language(name, path=str(tmp_path), trainable=False).eval()
    assert back.frozen and back.num_image_tokens == vlm.num_image_tokens
    assert torch.equal(back.tokenize(PROMPTS)["input_ids"], ids["input_ids"])
    with torch.no_grad():
        want, want_mask = vlm(images, ids["input_ids"], ids["attention_mask"])
    got, got_mask = back(images, ids["input_ids"], ids["attention_mask"])
    assert got.grad_fn is None  # frozen VLMs run under no_grad
    assert torch.equal(got_mask, want_mask)
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("name", [*LMS, *VLMS])
def test_every_parameter_trains(name: str) -> None:
    """No dead weights (DDP rejects parameters that get no gradient)."""
    backbone = build_language(name, tiny=True)
    ids = backbone.tokenize(PROMPTS)
    if backbone.kind == "vlm":
        tokens, mask = backbone(torch.rand(2, 3, 32, 32), ids["input_ids"], ids["attention_mask"])
    else:
        _, seq, mask = _lm_inputs(backbone)
        text = backbone.embed_tokens(ids["input_ids"])  # through the embeddings too
        seq = torch.cat([seq[:, :3], text, seq[:, -1:]], 1)
        tokens = backbone(seq, mask)
    F.mse_loss(tokens[mask], torch.zeros_like(tokens[mask])).backward()
    dead = [n for n, p in backbone.named_parameters() if p.grad is None or not p.grad.any()]
    assert not dead, dead


# ---- registry --------------------------------------------------------------------------------


def test_registry_kinds() -> None:
    assert set(LANGUAGE_BACKBONES) == set(KINDS)
    for name, kind in KINDS.items():
        if name == "minilm":
            continue  # loaded by the fixture above
        backbone = build_language(name, tiny=True, width=32)
        assert backbone.kind == kind, name
        assert isinstance(backbone.width, int) and backbone.width > 0


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as err:
        build_language("bert-large")
    assert all(name in str(err.value) for name in LANGUAGE_BACKBONES)
    with pytest.raises(ConfigError, match="no `path`"):
        build_language("word", path="/nonexistent")
