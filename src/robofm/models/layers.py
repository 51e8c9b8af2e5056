"""Transformer building blocks shared by the trunk and the action heads.

Attention goes through `torch.nn.functional.scaled_dot_product_attention` (fused kernels on
CPU and GPU). Masks are boolean with True meaning "may attend".
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """(B,) scalars (e.g. flow time in [0, 1] or a diffusion step) -> (B, dim) features."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None] * 1000.0  # (B, half); x1000 spreads t in [0, 1]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def attend_mask(
    key_mask: torch.Tensor | None, lq: int, causal: bool = False
) -> torch.Tensor | None:
    """(B, Lk) bool key validity [+ causal] -> (B, 1, Lq, Lk) bool mask for SDPA, or None."""
    if key_mask is None and not causal:
        return None
    mask = None
    if key_mask is not None:
        mask = key_mask[:, None, None, :].expand(-1, 1, lq, -1)  # (B, 1, Lq, Lk)
    if causal:
        lk = key_mask.shape[1] if key_mask is not None else lq
        tri = torch.ones(
            lq, lk, dtype=torch.bool, device=key_mask.device if key_mask is not None else None
        )
        tri = torch.tril(tri, diagonal=lk - lq)  # queries are the last lq of lk positions
        mask = tri[None, None] if mask is None else mask & tri
    return mask


class Attention(nn.Module):
    """Multi-head attention; `ctx` (cross-attention) defaults to the queries themselves."""

    def __init__(self, width: int, heads: int, kv_width: int | None = None, dropout: float = 0.0):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads, self.dropout = heads, dropout
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(kv_width or width, 2 * width)
        self.out = nn.Linear(width, width)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, w = x.shape
        return x.view(b, n, self.heads, w // self.heads).transpose(1, 2)  # (B, h, N, w/h)

    def keys_values(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, Lk, Wkv) -> keys and values, each (B, heads, Lk, W/heads); cacheable."""
        k, v = self.kv(ctx).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(
        self,
        x: torch.Tensor,
        ctx: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, Lq, W); ctx (B, Lk, Wkv) or precomputed `kv`; mask (B, 1, Lq, Lk) bool."""
        q = self.split(self.q(x))
        k, v = kv if kv is not None else self.keys_values(x if ctx is None else ctx)
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        b, h, n, d = y.shape
        return self.out(y.transpose(1, 2).reshape(b, n, h * d))  # (B, Lq, W)


class MLP(nn.Sequential):
    """Two-layer GELU feed-forward, hidden = 4 x width."""

    def __init__(self, width: int, out: int | None = None, hidden: int | None = None):
        hidden = hidden or 4 * width
        super().__init__(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, out or width))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(
        self,
        width: int,
        heads: int,
        cross_width: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, heads, dropout=dropout)
        self.cross = cross_width is not None
        if self.cross:
            self.norm_c = nn.LayerNorm(width)
            self.cross_attn = Attention(width, heads, kv_width=cross_width, dropout=dropout)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        ctx: torch.Tensor | None = None,
        ctx_mask: torch.Tensor | None = None,
        ctx_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """x (B, L, W); mask (B, 1, L, L); ctx (B, Lc, Wc) or its cached `ctx_kv`."""
        x = x + self.attn(self.norm1(x), mask=mask)
        if self.cross:
            x = x + self.cross_attn(self.norm_c(x), ctx=ctx, mask=ctx_mask, kv=ctx_kv)
        return x + self.mlp(self.norm2(x))


class Transformer(nn.Module):
    """A stack of `Block`s with a final LayerNorm."""

    def __init__(
        self,
        width: int,
        depth: int,
        heads: int,
        cross_width: int | None = None,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.blocks = nn.ModuleList(Block(width, heads, cross_width, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def context_kv(self, ctx: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-block cross-attention keys/values of `ctx`, computed once and reused."""
        return [b.cross_attn.keys_values(ctx) for b in self.blocks]

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        ctx: torch.Tensor | None = None,
        ctx_mask: torch.Tensor | None = None,
        ctx_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, mask, ctx, ctx_mask, None if ctx_kv is None else ctx_kv[i])
        return self.norm(x)
