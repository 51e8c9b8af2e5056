"""`diffusion`: an Octo-style diffusion head.

A readout embedding (one learned query attending to the prefix, as Octo's readout tokens do)
conditions a residual-MLP denoiser over the flattened chunk. Training is DDPM (predict the
noise at a uniformly drawn step of a `train_steps`-step cosine schedule); inference is DDIM
(deterministic, eta = 0) with `steps` evenly spaced steps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from robofm.models.heads.base import Prefix, masked_mean
from robofm.models.layers import Attention, sinusoidal


def cosine_alpha_bar(train_steps: int) -> torch.Tensor:
    """(train_steps,) cumulative signal fractions of the cosine schedule (Nichol & Dhariwal)."""
    s = 0.008
    t = torch.arange(train_steps + 1, dtype=torch.float64) / train_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


class _ResBlock(nn.Module):
    def __init__(self, width: int, dropout: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 4 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(4 * width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class DiffusionHead(nn.Module):
    """Readout-conditioned MLP denoiser over (B, H, D) chunks."""

    def __init__(
        self,
        width: int,
        action_dim: int,
        chunk_len: int,
        hidden: int = 256,
        blocks: int = 3,
        heads: int = 4,
        steps: int = 10,
        train_steps: int = 100,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.chunk_len, self.action_dim = chunk_len, action_dim
        self.steps, self.train_steps = steps, train_steps
        # DDIM visits these training steps, high to low (a plain list, built on the CPU even
        # when the model is built on `meta`)
        ks = torch.linspace(train_steps - 1, 0, steps, device="cpu").round().long()
        self.ddim_steps: list[int] = ks.tolist()
        self.readout = nn.Parameter(torch.randn(1, 1, width) * 0.02)  # (1, 1, W)
        self.pool = Attention(width, heads)
        flat = chunk_len * action_dim
        self.inp = nn.Linear(flat + width + hidden, hidden)
        self.blocks = nn.Sequential(*[_ResBlock(hidden, dropout) for _ in range(blocks)])
        self.out = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, flat))
        self.hidden = hidden
        self.register_buffer("alpha_bar", cosine_alpha_bar(train_steps), persistent=False)

    def embed(self, prefix: Prefix) -> torch.Tensor:
        """(B, W) readout embedding of the prefix."""
        b = prefix.tokens.shape[0]
        q = self.readout.expand(b, -1, -1)
        return self.pool(q, ctx=prefix.tokens, mask=prefix.cross_mask(1))[:, 0]

    def eps(self, x_t: torch.Tensor, k: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Predicted noise for x_t (B, H, D) at integer steps k (B,)."""
        b = x_t.shape[0]
        h = torch.cat([x_t.reshape(b, -1), cond, sinusoidal(k / self.train_steps, self.hidden)], -1)
        return self.out(self.blocks(self.inp(h))).view(b, self.chunk_len, self.action_dim)

    def loss(self, prefix: Prefix, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DDPM noise-prediction MSE; (B,)."""
        b = actions.shape[0]
        k = torch.randint(0, self.train_steps, (b,), device=actions.device)
        ab = self.alpha_bar[k][:, None, None]
        noise = torch.randn_like(actions)
        x_t = ab.sqrt() * actions + (1 - ab).sqrt() * noise
        return masked_mean((self.eps(x_t, k.float(), self.embed(prefix)) - noise) ** 2, mask)

    def sample(
        self,
        prefix: Prefix,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """DDIM (eta = 0) from noise to a (B, H, D) chunk in `self.steps` steps."""
        b = prefix.tokens.shape[0]
        cond = self.embed(prefix)  # computed once, reused by every step
        shape = (b, self.chunk_len, self.action_dim)
        x = (
            noise
            if noise is not None
            else torch.randn(shape, generator=generator, device=cond.device, dtype=cond.dtype)
        )
        ks = self.ddim_steps  # a plain list: the loop unrolls under torch.export
        for i, k in enumerate(ks):
            ab = self.alpha_bar[k]
            ab_prev = self.alpha_bar[ks[i + 1]] if i + 1 < len(ks) else torch.tensor(1.0)
            eps = self.eps(x, torch.full((b,), float(k), device=x.device), cond)
            x0 = ((x - (1 - ab).sqrt() * eps) / ab.sqrt()).clamp(-5.0, 5.0)
            x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        return x
