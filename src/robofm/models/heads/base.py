"""What every action head consumes and provides.

A head sees the trunk's output, the `Prefix` (tokens plus validity mask), and works on
normalised action chunks padded to the model's action dimension D. It implements
`loss(prefix, actions, mask) -> (B,)` and `sample(prefix) -> (B, H, D)`; the VLA wraps these
into the model contract `compute_loss(batch)` / `sample_actions(obs)`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Prefix:
    """The joint vision-language(-state) representation an action head conditions on."""

    tokens: torch.Tensor  # (B, L, W) trunk output
    mask: torch.Tensor  # (B, L) bool, True for valid tokens

    def cross_mask(self, lq: int) -> torch.Tensor:
        """(B, 1, lq, L) bool: every query may attend to every valid prefix token."""
        return self.mask[:, None, None, :].expand(-1, 1, lq, -1)

    def pooled(self) -> torch.Tensor:
        """(B, W) masked mean of the prefix tokens."""
        m = self.mask.to(self.tokens.dtype)[..., None]  # (B, L, 1)
        return (self.tokens * m).sum(1) / m.sum(1).clamp_min(1.0)


def masked_mean(err: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-sample mean of `err` (B, H, D) over entries where `mask` (B, H, D) is 1 -> (B,)."""
    err = err * mask
    return err.flatten(1).sum(1) / mask.flatten(1).sum(1).clamp_min(1.0)
