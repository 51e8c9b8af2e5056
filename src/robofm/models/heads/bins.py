"""`bins`: RT-2 / OpenVLA-style discretised actions.

Each normalised action value is clipped to [low, high] (default [-1, 1]: use min-max or
quantile normalisation with this head) and mapped to one of 256 uniform bins. A small causal
decoder, cross-attending to the prefix, emits the H x D bin tokens one after another (time
major: all D dims of step 0, then step 1, ...). Its output layer holds only the 256 action
bins (the "separate output layer" variant), so decoding is constrained to valid action tokens
by construction. Cross-entropy loss; greedy decoding at inference with the decoder's keys and
values of earlier tokens and the prefix's cross-attention keys/values cached.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from robofm.models.heads.base import Prefix
from robofm.models.layers import MLP, Attention

N_BINS = 256


class _DecoderBlock(nn.Module):
    def __init__(self, width: int, heads: int, ctx_width: int, dropout: float):
        super().__init__()
        self.n1, self.n2, self.n3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = Attention(width, heads, dropout=dropout)
        self.cross_attn = Attention(width, heads, kv_width=ctx_width, dropout=dropout)
        self.mlp = MLP(width)


class BinsHead(nn.Module):
    """Autoregressive 256-bin action tokens."""

    def __init__(
        self,
        width: int,
        action_dim: int,
        chunk_len: int,
        depth: int = 2,
        heads: int = 4,
        low: float = -1.0,
        high: float = 1.0,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.chunk_len, self.action_dim, self.low, self.high = chunk_len, action_dim, low, high
        self.n_tokens = chunk_len * action_dim
        self.bos = N_BINS  # index of the start token
        self.embed = nn.Embedding(N_BINS + 1, width)
        self.pos = nn.Parameter(torch.randn(self.n_tokens, width) * 0.02)
        self.blocks = nn.ModuleList(
            _DecoderBlock(width, heads, width, dropout) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(width)
        self.logits = nn.Linear(width, N_BINS)

    # ---- discretisation ------------------------------------------------------------------

    def to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """Normalised (..., D) -> long bin indices in [0, 255]."""
        x = (actions.clamp(self.low, self.high) - self.low) / (self.high - self.low)
        return (x * N_BINS).long().clamp(0, N_BINS - 1)

    def from_bins(self, bins: torch.Tensor) -> torch.Tensor:
        """Bin indices -> bin-centre values in [low, high]."""
        return self.low + (bins.float() + 0.5) / N_BINS * (self.high - self.low)

    # ---- decoder -------------------------------------------------------------------------

    def _run(self, tokens: torch.Tensor, start: int, prefix: Prefix, cache: dict) -> torch.Tensor:
        """Decode input tokens (B, n) at positions start..start+n-1; updates `cache`."""
        h = self.embed(tokens) + self.pos[start : start + tokens.shape[1]][None]
        n = tokens.shape[1]
        for i, blk in enumerate(self.blocks):
            x = blk.n1(h)
            k, v = blk.self_attn.keys_values(x)
            if f"k{i}" in cache:
                k = torch.cat([cache[f"k{i}"], k], dim=2)
                v = torch.cat([cache[f"v{i}"], v], dim=2)
            cache[f"k{i}"], cache[f"v{i}"] = k, v
            lk = k.shape[2]
            causal = torch.ones(n, lk, dtype=torch.bool, device=h.device).tril(lk - n)
            h = h + blk.self_attn(x, mask=causal[None, None], kv=(k, v))
            if f"c{i}" not in cache:
                cache[f"c{i}"] = blk.cross_attn.keys_values(prefix.tokens)
            h = h + blk.cross_attn(blk.n2(h), mask=prefix.cross_mask(n), kv=cache[f"c{i}"])
            h = h + blk.mlp(blk.n3(h))
        return self.logits(self.norm(h))  # (B, n, 256)

    def loss(self, prefix: Prefix, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Teacher-forced cross-entropy over the H x D tokens; (B,)."""
        b = actions.shape[0]
        target = self.to_bins(actions).reshape(b, -1)  # (B, H*D) time-major
        bos = torch.full((b, 1), self.bos, dtype=torch.long, device=actions.device)
        inputs = torch.cat([bos, target[:, :-1]], dim=1)
        logits = self._run(inputs, 0, prefix, {})
        ce = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")  # (B, H*D)
        m = mask.reshape(b, -1)
        return (ce * m).sum(1) / m.sum(1).clamp_min(1.0)

    @torch.no_grad()
    def sample(self, prefix: Prefix, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy autoregressive decoding -> (B, H, D) bin-centre values."""
        b = prefix.tokens.shape[0]
        cache: dict = {}
        tok = torch.full((b, 1), self.bos, dtype=torch.long, device=prefix.tokens.device)
        out = []
        for j in range(self.n_tokens):
            tok = self._run(tok, j, prefix, cache)[:, -1].argmax(-1, keepdim=True)  # (B, 1)
            out.append(tok)
        bins = torch.cat(out, 1).view(b, self.chunk_len, self.action_dim)
        return self.from_bins(bins)
