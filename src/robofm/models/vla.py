"""`VLA`: vision encoder + language backbone + action head, behind the two-method contract
`compute_loss(batch) -> (B,)` and `sample_actions(obs) -> (B, H, D)` (normalised actions).

How the prefix is built depends on the language backbone's kind:
- "encoder" (MiniLM, word): image tokens, text tokens and state/embodiment tokens are
  projected to `width` and fused by robofm's own trunk transformer (bidirectional);
- "lm" (Gemma, Qwen2, Llama): image tokens are projected into the LM's width and placed
  before the instruction's token embeddings, followed by the state/embodiment tokens; the LM
  itself is the trunk;
- "vlm" (PaliGemma, Idefics3): the VLM reads the first camera and the instruction whole; the
  state/embodiment tokens are appended to its output.
The head then conditions on the prefix. Frozen text encoders cache their output per
instruction string, so repeated prompts (every control step) cost nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

from robofm.config import ModelConfig
from robofm.errors import ConfigError
from robofm.models.embodiment import EmbodimentAdapters
from robofm.models.heads import Prefix, build_head
from robofm.models.language import build_language
from robofm.models.layers import Transformer
from robofm.models.readout import KeypointReadout, MLPTrunk
from robofm.models.vision import build_vision
from robofm.types import Batch, Observation

TEXT_CACHE_SIZE = 4096  # instructions whose frozen-encoder features are kept


def grid_position_code(n: int, width: int) -> torch.Tensor:
    """(N, W) fixed 2D sine-cosine code of a row-major square token grid (half the channels
    encode the row, half the column, at geometric frequencies, as in MAE), zeros when N is
    not a square. It starts the learned image position embedding with the geometry built in,
    so the trunk can read an attended token's place from the first step."""
    g = math.isqrt(n)
    if g * g != n or width < 4:
        return torch.zeros(n, width)
    rows, cols = torch.meshgrid(torch.arange(g), torch.arange(g), indexing="ij")

    def code(pos: torch.Tensor, d: int) -> torch.Tensor:  # (N,) -> (N, d)
        freq = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float32) / (d // 2))
        angle = pos.flatten().float()[:, None] * freq[None]
        return torch.cat([angle.sin(), angle.cos()], 1)

    half = width // 2 // 2 * 2
    out = torch.zeros(n, width)
    out[:, :half] = code(rows, half)
    out[:, half : 2 * half] = code(cols, half)
    return out


class VLA(nn.Module):
    """A Vision-Language-Action model; see the module docstring."""

    def __init__(
        self,
        cfg: ModelConfig,
        *,
        cameras: tuple[str, ...],
        state_dims: dict[str, int],
        action_dim: int,
        pretrained: bool = True,
        vision_path: str | None = None,
        language_path: str | None = None,
    ):
        super().__init__()
        self.cfg, self.cameras, self.action_dim = cfg, tuple(cameras), int(action_dim)
        self.pretrained = pretrained  # backbones from pretrained weights (else tiny configs)
        self.language = build_language(
            cfg.language,
            path=language_path,
            width=cfg.width,
            tiny=not pretrained,
            size=cfg.language_size,
        )
        self.kind = self.language.kind
        w = cfg.width if self.kind == "encoder" else self.language.width
        self.width = w
        self.vision = None  # a VLM brings its own vision tower
        self.readout = None  # keypoint readout of the vision tokens (image_readout)
        if self.kind != "vlm":
            film = cfg.vision == "resnet_film"
            self.vision = build_vision(
                cfg.vision,
                image_size=cfg.image_size,
                width=cfg.width,
                cond_dim=self.language.width if film else 0,
                pretrained=pretrained,
                path=vision_path,
                size=cfg.vision_size,
                stride=cfg.vision_stride,
            )
            n_img, img_width = self.vision.num_tokens, self.vision.width
            if cfg.image_readout == "keypoints":
                self.readout = self._build_readout(cfg)
                n_img, img_width = cfg.readout_keypoints, self.readout.out_width
            elif cfg.image_readout != "grid":
                raise ConfigError(
                    f"image_readout must be 'grid' or 'keypoints', got {cfg.image_readout!r}"
                )
            self.img_proj = nn.Linear(img_width, w)
            pos = torch.randn(len(self.cameras), cfg.n_obs_steps, n_img, w) * 0.02
            if self.kind == "encoder" and not self.vision.positional and self.readout is None:
                pos = pos + grid_position_code(n_img, w)  # CNN maps: the trunk needs the layout
            self.img_pos = nn.Parameter(pos)  # (cams, T_obs, N, W)
        if self.kind == "encoder":
            self.text_proj = nn.Linear(self.language.width, w)
            if cfg.trunk == "transformer":
                self.trunk = Transformer(w, cfg.depth, cfg.num_heads, dropout=cfg.dropout)
            elif cfg.trunk == "mlp":
                # tokens: images (cams * T_obs * N), pooled instruction (1), state (T_obs + 1)
                n_tok = len(self.cameras) * cfg.n_obs_steps * n_img + cfg.n_obs_steps + 2
                self.trunk = MLPTrunk(n_tok, w, cfg.depth, dropout=cfg.dropout)
            else:
                raise ConfigError(f"trunk must be 'transformer' or 'mlp', got {cfg.trunk!r}")
        elif cfg.trunk != "transformer":
            raise ConfigError(f"trunk {cfg.trunk!r} needs an encoder-kind language backbone")
        self.embodiments = EmbodimentAdapters(w, state_dims)
        self.head = build_head(cfg, w, self.action_dim)
        if cfg.freeze_backbones:
            for module in (self.vision, self.language):
                for p in module.parameters() if module is not None else ():
                    p.requires_grad_(False)
        self._text_cache: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def _build_readout(self, cfg: ModelConfig) -> KeypointReadout:
        """Keypoint readout over a square CNN map, FiLM-conditioned on the pooled instruction."""
        grid = math.isqrt(self.vision.num_tokens)
        square = grid * grid == self.vision.num_tokens
        if self.kind != "encoder" or self.vision.positional or not square:
            raise ConfigError(
                "image_readout='keypoints' needs a CNN vision encoder (square token map) and an "
                f"encoder-kind language backbone; got vision={cfg.vision!r}, "
                f"language={cfg.language!r}"
            )
        return KeypointReadout(
            self.vision.width, grid, cfg.readout_keypoints, cfg.readout_width, self.language.width
        )

    # ---- encoders ------------------------------------------------------------------------

    def encode_text(self, prompts: list[str], device: torch.device) -> tuple[torch.Tensor, ...]:
        """Encoder kind: (tokens (B, T, Wl), mask (B, T) bool), cached per instruction when the
        encoder is frozen, and for a trainable encoder in eval mode under
        `torch.inference_mode` (deployment: the prompt repeats every control step); `train()`
        drops those. LM/VLM kinds: (input_ids (B, T), mask (B, T) bool)."""
        lang = self.language
        if self.kind != "encoder":  # LMs and VLMs embed the ids themselves
            ids = lang.tokenize(prompts, self.cfg.max_text_tokens)
            return ids["input_ids"].to(device), ids["attention_mask"].to(device).bool()
        trainable = not getattr(lang, "frozen", False)
        if trainable and (self.training or not torch.is_inference_mode_enabled()):
            ids = lang.tokenize(prompts, self.cfg.max_text_tokens)
            return lang(ids["input_ids"].to(device), ids["attention_mask"].to(device))
        missing = [p for p in dict.fromkeys(prompts) if p not in self._text_cache]
        if missing:
            ids = lang.tokenize(missing, self.cfg.max_text_tokens)
            with torch.no_grad():
                tok, mask = lang(ids["input_ids"].to(device), ids["attention_mask"].to(device))
            for i, p in enumerate(missing):
                n = int(mask[i].sum())
                self._text_cache[p] = (tok[i, :n].detach(), mask[i, :n])
                if len(self._text_cache) > TEXT_CACHE_SIZE:
                    self._text_cache.popitem(last=False)
        items = [self._text_cache[p] for p in prompts]
        t = max(x[0].shape[0] for x in items)
        tokens = torch.zeros(len(items), t, lang.width, device=device)
        mask = torch.zeros(len(items), t, dtype=torch.bool, device=device)
        for i, (tok, _) in enumerate(items):
            tokens[i, : tok.shape[0]] = tok.to(device)
            mask[i, : tok.shape[0]] = True
        return tokens, mask

    def vision_features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, T_obs, 3, H, W) in [0, 1] -> (B, T_obs, N, Cv) raw encoder outputs, what the
        training feature cache stores while the encoder is frozen (unconditioned only)."""
        b, t = images.shape[:2]
        return self.vision(images.flatten(0, 1)).unflatten(0, (b, t))

    def encode_images(
        self,
        images: dict[str, torch.Tensor],
        cond: torch.Tensor | None = None,
        features: dict[str, torch.Tensor] | None = None,
    ):
        """camera -> (B, T_obs, 3, H, W) in [0, 1]  ->  (B, cams*T_obs*N, W) projected tokens.
        A camera in `features` (B, T_obs, N, Cv) uses those cached encoder outputs instead."""
        out = []
        features = features or {}
        for c, cam in enumerate(self.cameras):
            if cam in features:
                feats = features[cam].to(self.img_pos.dtype)
                b, t = feats.shape[:2]
                feats = feats.flatten(0, 1)  # (B*T, N, Cv)
            else:
                x = images[cam]
                b, t = x.shape[:2]
                cond_bt = None
                if cond is not None and self.vision.cond_dim:
                    cond_bt = cond.repeat_interleave(t, 0)
                feats = self.vision(x.flatten(0, 1), cond_bt)  # (B*T, N, Cv)
            if self.readout is not None:
                feats = self.readout(feats.float(), cond.repeat_interleave(t, 0))  # (B*T, K, Cr)
            feats = self.img_proj(feats).view(b, t, -1, self.width) + self.img_pos[c, :t][None]
            out.append(feats.flatten(1, 2))  # (B, T*N, W)
        return torch.cat(out, dim=1)

    def encode_prefix(self, obs: Observation) -> Prefix:
        """The joint representation the head conditions on."""
        device = obs.state.device
        b = obs.batch_size
        state_tok = self.embodiments(obs.state, obs.embodiment)  # (B, T_obs + 1, W)
        ones = lambda n: torch.ones(b, n, dtype=torch.bool, device=device)  # noqa: E731
        if self.kind == "vlm":
            ids, mask = self.encode_text(obs.prompt, device)
            first = obs.images[self.cameras[0]][:, -1]  # (B, 3, H, W), latest frame
            tokens, tmask = self.language(first, ids, mask)
            return Prefix(
                torch.cat([tokens, state_tok], 1), torch.cat([tmask, ones(state_tok.shape[1])], 1)
            )
        if self.kind == "lm":
            ids, mask = self.encode_text(obs.prompt, device)
            img = self.encode_images(obs.images, features=obs.image_features)
            seq = torch.cat([img, self.language.embed_tokens(ids), state_tok], 1)
            m = torch.cat([ones(img.shape[1]), mask, ones(state_tok.shape[1])], 1)
            return Prefix(self.language(seq, m), m)
        text, tmask = self.encode_text(obs.prompt, device)
        tm = tmask.to(text.dtype)[..., None]
        pooled = (text * tm).sum(1) / tm.sum(1).clamp_min(1.0)  # (B, Wl) mean-pooled text
        cond = pooled if self.vision.cond_dim or self.readout is not None else None
        img = self.encode_images(obs.images, cond, obs.image_features)
        if self.cfg.trunk == "mlp":
            seq = torch.cat([img, self.text_proj(pooled)[:, None], state_tok], 1)
            return Prefix(self.trunk(seq), ones(1))  # (B, 1, W)
        seq = torch.cat([img, self.text_proj(text), state_tok], 1)
        m = torch.cat([ones(img.shape[1]), tmask, ones(state_tok.shape[1])], 1)
        return Prefix(self.trunk(seq, mask=m[:, None, None, :]), m)

    def train(self, mode: bool = True) -> VLA:
        """Switch mode; entering training drops text features cached from a trainable
        encoder (its weights are about to change)."""
        lang = getattr(self, "language", None)
        if mode and lang is not None and not getattr(lang, "frozen", False):
            self._text_cache.clear()
        return super().train(mode)

    # ---- the model contract --------------------------------------------------------------

    def forward(self, batch: Batch) -> torch.Tensor:
        """`compute_loss`, so DDP/FSDP wrappers (which hook `forward`) see the training call."""
        return self.compute_loss(batch)

    def compute_loss(self, batch: Batch) -> torch.Tensor:
        """Per-sample training loss (B,) on normalised action chunks."""
        return self.head.loss(self.encode_prefix(batch.obs), batch.actions, batch.loss_mask())

    def sample_actions(
        self, obs: Observation, generator: torch.Generator | None = None, **kw
    ) -> torch.Tensor:
        """(B, H, D) normalised action chunks."""
        return self.head.sample(self.encode_prefix(obs), generator=generator, **kw)
