"""Action heads: one registry, one contract (`loss(prefix, actions, mask) -> (B,)`,
`sample(prefix) -> (B, H, D)`), four ways of producing a chunk."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from robofm.config import ModelConfig
from robofm.errors import ConfigError
from robofm.models.heads.base import Prefix, masked_mean
from robofm.models.heads.bins import BinsHead
from robofm.models.heads.diffusion import DiffusionHead
from robofm.models.heads.flow import FlowHead
from robofm.models.heads.regression import RegressionHead


def _decoder_args(cfg: ModelConfig) -> dict:
    """The transformer sizes every head's decoder/expert shares."""
    return {"depth": cfg.head_depth, "heads": cfg.num_heads, "dropout": cfg.dropout}


def _bins(cfg: ModelConfig, width: int, action_dim: int) -> nn.Module:
    return BinsHead(width, action_dim, cfg.chunk_len, **_decoder_args(cfg))


def _regression(cfg: ModelConfig, width: int, action_dim: int) -> nn.Module:
    return RegressionHead(width, action_dim, cfg.chunk_len, **_decoder_args(cfg))


def _flow(cfg: ModelConfig, width: int, action_dim: int) -> nn.Module:
    return FlowHead(
        width,
        action_dim,
        cfg.chunk_len,
        expert_width=cfg.expert_width,
        steps=cfg.flow_steps,
        **_decoder_args(cfg),
    )


def _diffusion(cfg: ModelConfig, width: int, action_dim: int) -> nn.Module:
    return DiffusionHead(
        width,
        action_dim,
        cfg.chunk_len,
        hidden=max(64, width),
        heads=cfg.num_heads,
        steps=cfg.diffusion_steps,
        dropout=cfg.dropout,
    )


HEADS: dict[str, Callable[[ModelConfig, int, int], nn.Module]] = {
    "bins": _bins,
    "regression": _regression,
    "flow": _flow,
    "diffusion": _diffusion,
}


def build_head(cfg: ModelConfig, width: int, action_dim: int) -> nn.Module:
    """The head `cfg.head` over a prefix of `width`, for `action_dim`-dim chunks."""
    if cfg.head not in HEADS:
        raise ConfigError(f"unknown head {cfg.head!r}; valid heads: {', '.join(HEADS)}")
    return HEADS[cfg.head](cfg, width, action_dim)


__all__ = [
    "HEADS",
    "BinsHead",
    "DiffusionHead",
    "FlowHead",
    "Prefix",
    "RegressionHead",
    "build_head",
    "masked_mean",
]
