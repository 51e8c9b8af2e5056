"""Hugging Face language trunks: causal LMs (Gemma, Qwen2, Llama/SmolLM) and whole VLMs
(PaliGemma, Idefics3/SmolVLM), wrapped behind the small interface `VLA` needs.

Two ways to build each:
- from a local checkpoint directory (`from_pretrained(path, local_files_only=True)`, float32);
  never from a hub, so nothing is downloaded at run time;
- from a small config with random init (tests, from-scratch baselines). Those come with a
  byte-level tokenizer built in code (256 byte tokens + 7 specials, see `byte_tokenizer`), so
  they need no files at all and every build gives the same ids.

`transformers` and `tokenizers` are imported inside the functions: importing this module only
needs torch, and a missing extra is a clear `NotAvailableError`.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from robofm.errors import ConfigError, NotAvailableError
from robofm.models.sizes import LANGUAGE_SIZES, VLM_SIZES, lookup

HF_HINT = "pip install 'robofm[hf]' (transformers)"
# Special tokens of the built-in byte tokenizer; ids are their positions (pad=0, bos=1, ...).
BYTE_SPECIALS = (
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    "<image>",
    "<fake_token_around_image>",
    "<global-img>",
)
IMAGE_TOKEN = "<image>"
# model_type values in a checkpoint's config.json that each registry name accepts.
LM_FAMILIES = {
    "gemma": ("gemma", "gemma2", "gemma3_text"),
    "qwen2": ("qwen2", "qwen3"),
    "llama": ("llama",),
}
VLM_FAMILIES = {"paligemma": ("paligemma",), "idefics3": ("idefics3",)}
# SigLIP towers (PaliGemma and SmolVLM) are trained on pixels scaled to [-1, 1].
IMAGE_MEAN, IMAGE_STD = 0.5, 0.5


def require_transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the install
        raise NotAvailableError(f"HF language backbones need transformers: {HF_HINT}") from e
    transformers.utils.logging.disable_progress_bar()  # robofm shows its own progress
    return transformers


def byte_tokenizer():
    """A byte-level tokenizer built in code: every UTF-8 byte is one token, `<bos>` is
    prepended, vocabulary = 7 specials + 256 bytes = 263. Deterministic and offline, for
    models built from a config; saved with `save_pretrained` like any HF tokenizer."""
    require_transformers()
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(BYTE_SPECIALS)}
    for ch in sorted(pre_tokenizers.ByteLevel.alphabet()):  # the 256 byte symbols
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        additional_special_tokens=list(BYTE_SPECIALS[4:]),
    )


def load_tokenizer(path: str | Path):
    """The tokenizer saved in a local checkpoint directory, padding and truncating on the right."""
    tok = require_transformers().AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tok.pad_token is None:
        if tok.eos_token is None:
            raise ConfigError(f"tokenizer in {path} has neither a pad nor an eos token")
        tok.pad_token = tok.eos_token
    return tok


def _prepare_tokenizer(tok):
    tok.padding_side = "right"
    tok.truncation_side = "right"
    return tok


def _tokenize(tok, texts: list[str], max_len: int) -> dict[str, torch.Tensor]:
    enc = tok(
        list(texts), padding="longest", truncation=True, max_length=max_len, return_tensors="pt"
    )
    return {
        "input_ids": enc["input_ids"].long(),  # (B, T)
        "attention_mask": enc["attention_mask"].long(),  # (B, T)
    }


def text_dims(tiny: bool, width: int) -> dict[str, int]:
    """Decoder sizes for a model built from a config: tiny (64 wide, 2 layers, 2 heads) for
    tests, otherwise `width` wide with 4 layers and 64-wide heads."""
    hidden, layers = (64, 2) if tiny else (width, 4)
    heads = 2 if tiny else max(1, width // 64)
    if hidden % heads:
        raise ConfigError(f"width {hidden} is not divisible by {heads} heads")
    return {
        "vocab_size": len(BYTE_SPECIALS) + 256,
        "hidden_size": hidden,
        "intermediate_size": 4 * hidden,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "head_dim": hidden // heads,
        "max_position_embeddings": 2048,
        "pad_token_id": 0,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


def _check_family(name: str, model_type: str, families: dict[str, tuple[str, ...]], path) -> None:
    if model_type not in families[name]:
        raise ConfigError(
            f"{path} holds a {model_type!r} model, not {name!r} (expected model_type in "
            f"{list(families[name])}); pick the matching language backbone"
        )


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


class CausalLMBackbone(nn.Module):
    """A HF decoder-only LM used as the VLA trunk (kind "lm").

    The caller builds the prefix `[image tokens projected to W ; embed_tokens(instruction) ;
    state tokens]` and `forward` runs the LM over it. Attention is the model's default:
    causal (left to right) plus the padding mask, so a position sees the valid positions up
    to itself; bidirectional attention over the prefix is not used. Gemma's sqrt(W)
    embedding scale lives inside its `embed_tokens` (transformers 5), so only text
    embeddings are scaled; the image projection learns its own scale.
    Only the base model is held (no LM head): every parameter takes part in the forward,
    which DDP needs. A frozen LM (`trainable=False`) has requires_grad=False parameters but
    still lets gradients flow to `inputs_embeds` (the image projection before it trains).
    """

    kind = "lm"

    def __init__(self, model: nn.Module, tokenizer: Any, trainable: bool = True):
        super().__init__()
        self.model = model  # e.g. GemmaModel / Qwen2Model / LlamaModel
        self.tokenizer = _prepare_tokenizer(tokenizer)
        self.width = int(model.config.hidden_size)
        self.frozen = not trainable
        _set_trainable(self.model, trainable)

    def tokenize(self, texts: list[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """Instructions -> {"input_ids": (B, T) long, "attention_mask": (B, T) long}, T <= max_len,
        right-padded."""
        return _tokenize(self.tokenizer, texts, max_len)

    def embed_tokens(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, W) the LM's own input embeddings."""
        return self.model.get_input_embeddings()(input_ids)

    def forward(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """inputs_embeds (B, L, W), attention_mask (B, L) bool/long (True/1 = valid) ->
        last hidden states (B, L, W), final norm applied. Causal attention; see the class."""
        out = self.model(
            inputs_embeds=inputs_embeds.to(self.model.dtype),
            attention_mask=attention_mask.long(),
            use_cache=False,
        )
        return out.last_hidden_state  # (B, L, W)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model + tokenizer as a HF checkpoint directory (loadable with `path=`)."""
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


def build_causal_lm(
    name: str,
    *,
    path: str | None = None,
    width: int = 256,
    tiny: bool = False,
    trainable: bool | None = None,
    size: str = "",
) -> CausalLMBackbone:
    """`name` in LM_FAMILIES. With `path`: the base model of a local checkpoint (a
    `*ForCausalLM` checkpoint loads too; its LM head is dropped). Without: a random-init model
    of `text_dims(tiny, width)` with the byte tokenizer. Trainable unless `trainable=False`."""
    tf = require_transformers()
    trainable = True if trainable is None else trainable
    if path is not None:
        cfg = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        _check_family(name, cfg.model_type, LM_FAMILIES, path)
        model = tf.AutoModel.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return CausalLMBackbone(model, load_tokenizer(path), trainable)
    dims = {**text_dims(tiny, width), **(lookup(LANGUAGE_SIZES, name, size) if size else {})}
    cfg = tf.AutoConfig.for_model(name, **dims)
    return CausalLMBackbone(tf.AutoModel.from_config(cfg), byte_tokenizer(), trainable)


class VLMBackbone(nn.Module):
    """A HF vision-language model used whole (kind "vlm"): it reads one camera image and the
    instruction and returns its last hidden states as the prefix.

    The image placeholder tokens are inserted by `forward` (no HF processor):
    - PaliGemma: `<image> x (S/p)^2` then the instruction (with `<bos>` and a trailing "\\n",
      as PaliGemma's processor and openpi do); the whole prefix attends bidirectionally
      (token_type_ids = 0, PaliGemma's prefix-LM mask) with padding masked.
    - Idefics3/SmolVLM: `<fake_token_around_image> <global-img> <image> x (S/p)^2/s^2
      <fake_token_around_image>` (wrappers only if the tokenizer has them) then the
      instruction; causal attention, as the model does. Only the global image is used (no
      tile splitting) and the chat template is not applied. Image features are computed by
      the vision tower + connector here rather than inside the HF forward, which would drop
      an image whose normalised pixels are all 0 (a uniform mid-grey frame) as padding.
    Images are resized to `image_size` (bilinear, antialiased) and scaled to [-1, 1].
    A frozen VLM (`trainable=False`) runs under no_grad: nothing upstream of it trains.
    """

    kind = "vlm"

    def __init__(self, model: nn.Module, tokenizer: Any, family: str, trainable: bool = True):
        super().__init__()
        if family not in VLM_FAMILIES:
            raise ConfigError(f"unknown VLM family {family!r}; valid: {sorted(VLM_FAMILIES)}")
        self.model, self.family = model, family  # PaliGemmaModel / Idefics3Model
        self.tokenizer = _prepare_tokenizer(tokenizer)
        cfg = model.config
        self.width = int(cfg.text_config.hidden_size)
        self.image_size = int(cfg.vision_config.image_size)
        self.image_token_id = int(cfg.image_token_id)
        n_patches = (self.image_size // cfg.vision_config.patch_size) ** 2
        n_image = n_patches if family == "paligemma" else n_patches // cfg.scale_factor**2
        ids = [self.image_token_id] * n_image
        wrap = [self._special_id(t) for t in ("<fake_token_around_image>", "<global-img>")]
        if family == "idefics3" and None not in wrap:
            ids = [*wrap, *ids, wrap[0]]
        self.register_buffer("image_ids", torch.tensor(ids, dtype=torch.long), persistent=False)
        self.frozen = not trainable
        _set_trainable(self.model, trainable)

    def _special_id(self, token: str) -> int | None:
        i = self.tokenizer.convert_tokens_to_ids(token)
        return None if i is None or i == self.tokenizer.unk_token_id else int(i)

    @property
    def num_image_tokens(self) -> int:
        """Prefix positions taken by the image (placeholders + wrappers)."""
        return int(self.image_ids.numel())

    def tokenize(self, texts: list[str], max_len: int = 32) -> dict[str, torch.Tensor]:
        """Text-only ids {"input_ids": (B, T), "attention_mask": (B, T)}; image tokens are
        added by `forward`."""
        if self.family == "paligemma":
            texts = [t + "\n" for t in texts]
        return _tokenize(self.tokenizer, texts, max_len)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, 3, S, S) resized and scaled to [-1, 1]."""
        x = images.to(self.model.dtype)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(
                x,
                size=(self.image_size,) * 2,
                mode="bilinear",
                antialias=True,
                align_corners=False,
            )
        return (x - IMAGE_MEAN) / IMAGE_STD

    def forward(
        self, images: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """images (B, 3, H, W) float in [0, 1]; input_ids, attention_mask (B, T) from
        `tokenize` -> (prefix tokens (B, L, W), mask (B, L) bool), L = num_image_tokens + T."""
        b = images.shape[0]
        ids = torch.cat([self.image_ids.expand(b, -1), input_ids], 1)  # (B, L)
        ones = torch.ones(b, self.num_image_tokens, dtype=torch.bool, device=ids.device)
        mask = torch.cat([ones, attention_mask.bool()], 1)  # (B, L)
        px = self.pixels(images)  # (B, 3, S, S)
        with torch.no_grad() if self.frozen else nullcontext():
            if self.family == "paligemma":
                out = self.model(
                    input_ids=ids,
                    pixel_values=px,
                    attention_mask=mask.long(),
                    token_type_ids=torch.zeros_like(ids),
                    use_cache=False,
                )
            else:
                feats = self.model.vision_model(pixel_values=px).last_hidden_state  # (B, P, Cv)
                feats = self.model.connector(feats)  # (B, P / s^2, W)
                emb = self.model.get_input_embeddings()(ids)  # (B, L, W)
                slots = (ids == self.image_token_id)[..., None]  # (B, L, 1)
                emb = emb.masked_scatter(slots, feats.to(emb.dtype))
                out = self.model.text_model(
                    inputs_embeds=emb, attention_mask=mask.long(), use_cache=False
                )
        return out.last_hidden_state, mask  # (B, L, W), (B, L)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write model + tokenizer as a HF checkpoint directory (loadable with `path=`)."""
        self.model.save_pretrained(str(directory))
        self.tokenizer.save_pretrained(str(directory))


def _tiny_vlm_config(name: str, tiny: bool, width: int, size: str = ""):
    tf = require_transformers()
    text = text_dims(tiny, width)
    hidden = text["hidden_size"]
    vis_w = 32 if tiny else max(64, hidden // 2)
    vision = {
        "hidden_size": vis_w,
        "intermediate_size": 2 * vis_w,
        "num_hidden_layers": 2 if tiny else 4,
        "num_attention_heads": 2 if tiny else max(1, vis_w // 64),
        "image_size": 32 if tiny else 64,
        "patch_size": 8,
    }
    if size:  # a named full size: (vision dims at 224 px, text dims)
        vis_dims, text_dims_full = lookup(VLM_SIZES, name, size)
        vision = {**vis_dims, "image_size": 224}
        text = {**text, **text_dims_full}
        hidden = text["hidden_size"]
    image_id = BYTE_SPECIALS.index(IMAGE_TOKEN)
    if name == "paligemma":
        return tf.PaliGemmaConfig(
            # PaliGemma reads SigLIP's patch tokens, not its pooled head: leave the head out
            vision_config={"model_type": "siglip_vision_model", "vision_use_head": False, **vision},
            text_config={"model_type": "gemma", **text},
            image_token_index=image_id,
            vocab_size=text["vocab_size"],
            projection_dim=hidden,
            hidden_size=hidden,
        )
    return tf.Idefics3Config(
        vision_config=vision,
        text_config={"model_type": "llama", **text},
        image_token_id=image_id,
        scale_factor=2,
        pad_token_id=0,
    )


def build_vlm(
    name: str,
    *,
    path: str | None = None,
    width: int = 256,
    tiny: bool = False,
    trainable: bool | None = None,
    size: str = "",
) -> VLMBackbone:
    """`name` in VLM_FAMILIES. With `path`: the base model of a local checkpoint (a
    `*ForConditionalGeneration` checkpoint loads too). Without: random init from a small
    config (tiny: SigLIP 32 px / patch 8 / 32 wide, text as `text_dims(tiny, width)`) with the
    byte tokenizer. Trainable unless `trainable=False`."""
    tf = require_transformers()
    trainable = True if trainable is None else trainable
    cls = tf.PaliGemmaModel if name == "paligemma" else tf.Idefics3Model
    if path is not None:
        cfg = tf.AutoConfig.from_pretrained(path, local_files_only=True)
        _check_family(name, cfg.model_type, VLM_FAMILIES, path)
        model = cls.from_pretrained(path, local_files_only=True, dtype=torch.float32)
        return VLMBackbone(model, load_tokenizer(path), name, trainable)
    model = cls(_tiny_vlm_config(name, tiny, width, size))
    return VLMBackbone(model, byte_tokenizer(), name, trainable)
