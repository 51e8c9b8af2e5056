"""`regression`: OpenVLA-OFT-style parallel decoding. H learned action-query tokens attend to
the prefix (and to each other) in one non-causal pass and are read out to H x D actions,
trained with an L1 loss. One forward pass per chunk: the fastest head at inference."""

from __future__ import annotations

import torch
from torch import nn

from robofm.models.heads.base import Prefix, masked_mean
from robofm.models.layers import Transformer


class RegressionHead(nn.Module):
    """Learned action queries -> (B, H, D) in one pass."""

    def __init__(
        self,
        width: int,
        action_dim: int,
        chunk_len: int,
        depth: int = 2,
        heads: int = 4,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.chunk_len, self.action_dim = chunk_len, action_dim
        self.queries = nn.Parameter(torch.randn(chunk_len, width) * 0.02)  # (H, W)
        self.decoder = Transformer(width, depth, heads, cross_width=width, dropout=dropout)
        self.out = nn.Linear(width, action_dim)

    def forward(self, prefix: Prefix) -> torch.Tensor:
        b = prefix.tokens.shape[0]
        q = self.queries[None].expand(b, -1, -1)  # (B, H, W)
        h = self.decoder(q, ctx=prefix.tokens, ctx_mask=prefix.cross_mask(self.chunk_len))
        return self.out(h)  # (B, H, D)

    def loss(self, prefix: Prefix, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """L1 between predicted and target normalised chunks; (B,)."""
        return masked_mean((self(prefix) - actions).abs(), mask)

    def sample(self, prefix: Prefix, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, H, D) normalised actions; deterministic."""
        return self(prefix)
