"""`flow`: a pi0-style flow-matching action expert.

A smaller transformer (the expert) denoises the whole action chunk: its action tokens attend
to each other and, through cross-attention, to the prefix. Training regresses the velocity
u = noise - actions at x_t = t * noise + (1 - t) * actions, with t drawn from a Beta(1.5, 1)
that favours the noisy end (as pi0 does). Inference integrates from t = 1 (noise) to t = 0
with `steps` Euler steps. The prefix's keys/values for every expert layer are computed once
per `sample` call and reused by all integration steps (`use_cache=False` recomputes them at
every step, for testing that the cache changes nothing).
"""

from __future__ import annotations

import torch
from torch import nn

from robofm.models.heads.base import Prefix, masked_mean
from robofm.models.layers import MLP, Transformer, sinusoidal


class FlowHead(nn.Module):
    """Flow-matching action expert over (B, H, D) chunks."""

    def __init__(
        self,
        width: int,
        action_dim: int,
        chunk_len: int,
        expert_width: int = 0,
        depth: int = 2,
        heads: int = 4,
        steps: int = 10,
        dropout: float = 0.0,
    ):
        super().__init__()
        ew = expert_width or max(32, width // 2)
        self.chunk_len, self.action_dim, self.steps, self.width = chunk_len, action_dim, steps, ew
        self.action_in = nn.Linear(action_dim, ew)
        self.time_mlp = MLP(ew, ew)
        self.pos = nn.Parameter(torch.randn(chunk_len, ew) * 0.02)  # (H, We)
        self.expert = Transformer(ew, depth, heads, cross_width=width, dropout=dropout)
        self.out = nn.Linear(ew, action_dim)

    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, prefix: Prefix, kv: list | None = None
    ) -> torch.Tensor:
        """x_t (B, H, D), t (B,) -> predicted velocity (B, H, D)."""
        h = self.action_in(x_t) + self.pos[None] + self.time_mlp(sinusoidal(t, self.width))[:, None]
        if kv is None:
            kv = self.expert.context_kv(prefix.tokens)
        h = self.expert(h, ctx_mask=prefix.cross_mask(self.chunk_len), ctx_kv=kv)
        return self.out(h)

    def loss(self, prefix: Prefix, actions: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Flow-matching MSE on the velocity; (B,)."""
        b = actions.shape[0]
        beta = torch.distributions.Beta(
            actions.new_tensor(1.5), actions.new_tensor(1.0), validate_args=False
        )
        t = beta.sample((b,)) * 0.999 + 0.001  # (B,) in (0, 1], weighted to the noisy end
        noise = torch.randn_like(actions)
        x_t = t[:, None, None] * noise + (1 - t[:, None, None]) * actions
        v = self.velocity(x_t, t, prefix)
        return masked_mean((v - (noise - actions)) ** 2, mask)

    def sample(
        self,
        prefix: Prefix,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
        use_cache: bool = True,
    ) -> torch.Tensor:
        """Integrate from noise to a (B, H, D) chunk with `self.steps` Euler steps."""
        b = prefix.tokens.shape[0]
        shape = (b, self.chunk_len, self.action_dim)
        x = (
            noise
            if noise is not None
            else torch.randn(
                shape, generator=generator, device=prefix.tokens.device, dtype=prefix.tokens.dtype
            )
        )
        kv = self.expert.context_kv(prefix.tokens) if use_cache else None  # the prefix cache
        dt = -1.0 / self.steps
        for i in range(self.steps):
            t = torch.full((b,), 1.0 + i * dt, device=x.device, dtype=x.dtype)
            x = x + dt * self.velocity(x, t, prefix, kv)
        return x
