"""Per-embodiment adapters (HPT-style stems) around the shared trunk.

Each robot, keyed by its `ActionSpace.robot` name, has its own state stem (a linear map from
its S_e real state dims to one trunk token) and a learned embodiment token that tells the
trunk and head which robot they serve. Actions of every robot share the head's padded
D = max D_e dimensions; padded dimensions carry zero targets and are masked out of the loss
by `Batch.loss_mask()`. A new robot is added at fine-tuning time with `add()`, leaving the
trunk untouched.
"""

from __future__ import annotations

import torch
from torch import nn

from robofm.errors import ConfigError


class EmbodimentAdapters(nn.Module):
    """robot name -> (state stem, embodiment token)."""

    def __init__(self, width: int, state_dims: dict[str, int]):
        super().__init__()
        self.width = width
        self.state_dims: dict[str, int] = {}
        self.stems = nn.ModuleDict()
        self.tokens = nn.ParameterDict()
        for robot, s in state_dims.items():
            self.add(robot, s)

    def add(self, robot: str, state_dim: int) -> None:
        """Register a new embodiment with `state_dim` real state dimensions."""
        if robot in self.stems:
            raise ConfigError(f"embodiment '{robot}' is already registered")
        self.state_dims[robot] = int(state_dim)
        self.stems[robot] = nn.Linear(max(1, state_dim), self.width)
        self.tokens[robot] = nn.Parameter(torch.randn(self.width) * 0.02)

    def forward(self, state: torch.Tensor, embodiment: list[str]) -> torch.Tensor:
        """state (B, T_obs, S_max) normalised, padded -> (B, T_obs + 1, W) tokens: one state
        token per observation step, then the embodiment token."""
        unknown = sorted(set(embodiment) - set(self.stems))
        if unknown:
            raise ConfigError(
                f"unknown embodiment(s) {unknown}; this model knows {sorted(self.stems)}"
            )
        b, t, _ = state.shape
        out = state.new_zeros(b, t + 1, self.width)
        for robot in sorted(set(embodiment)):
            idx = torch.tensor(
                [i for i, e in enumerate(embodiment) if e == robot], device=state.device
            )
            s = self.state_dims[robot]
            x = state[idx, :, :s] if s > 0 else state.new_zeros(len(idx), t, 1)
            out[idx, :t] = self.stems[robot](x)  # (b_e, T_obs, W)
            out[idx, t] = self.tokens[robot]
        return out
