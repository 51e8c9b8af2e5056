"""Data types crossing module boundaries, with their shapes written down.

Two worlds meet here:

- the **robot side** speaks plain dicts and numpy (`"images"`, `"state"`, `"prompt"` in;
  `"actions"` out, in the robot's own units): this is what `Policy.infer`, the policy server
  and the client exchange, and it needs nothing but numpy;
- the **model side** speaks batched, normalised torch tensors (`Observation`, `Batch`), made by
  the data pipeline for training and by the policy's input transforms for inference.

Shape letters: B batch, T_obs observation history, H action chunk length, D action dims,
S state dims (D and S are padded to the mixture's largest embodiment), 3 x Hpx x Wpx images.
torch is imported only for type checking, so the robot side can import this module cheaply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from robofm.errors import RobofmError

if TYPE_CHECKING:
    import torch

# Keys of the plain observation / result dicts (the wire and Policy.infer contract).
OBS_IMAGES = "images"  # {camera name: uint8 (Hpx, Wpx, 3)}
OBS_STATE = "state"  # float32 (S,) in robot units
OBS_PROMPT = "prompt"  # the instruction string
RESULT_ACTIONS = "actions"  # float32 (H, D) in robot units


class ObservationError(RobofmError, ValueError):
    """An observation dict does not match what the policy expects; the message names the key."""


@dataclass
class Observation:
    """A batch of model inputs, already transformed and normalised."""

    images: dict[str, torch.Tensor]  # camera -> (B, T_obs, 3, Hpx, Wpx) float32 in [0, 1]
    image_mask: dict[str, torch.Tensor]  # camera -> (B,) bool, False where a sample lacks it
    state: torch.Tensor  # (B, T_obs, S) float32, normalised, zero in padded dims
    state_mask: torch.Tensor  # (B, S) bool, True for the embodiment's real state dims
    prompt: list[str]  # B instruction strings
    embodiment: list[str]  # B robot names (ActionSpace.robot), picks per-embodiment adapters
    # camera -> (B, T_obs, N, C) cached outputs of a frozen vision encoder; a camera listed
    # here is not run through the encoder again (its `images` entry may then be absent)
    image_features: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        """B."""
        return len(self.prompt)

    def to(self, device: Any) -> Observation:
        """Copy of this observation with every tensor moved to `device`."""
        return Observation(
            images={k: v.to(device) for k, v in self.images.items()},
            image_mask={k: v.to(device) for k, v in self.image_mask.items()},
            state=self.state.to(device),
            state_mask=self.state_mask.to(device),
            prompt=list(self.prompt),
            embodiment=list(self.embodiment),
            image_features={k: v.to(device) for k, v in self.image_features.items()},
        )


@dataclass
class Batch:
    """A training batch: observations plus the target action chunks and their masks."""

    obs: Observation  # inputs at the chunk's first step
    actions: torch.Tensor  # (B, H, D) float32, normalised, zero in padded dims
    action_is_pad: torch.Tensor  # (B, H) bool, True where the chunk runs past the episode end
    action_mask: torch.Tensor  # (B, D) bool, True for the embodiment's real action dims
    episode_index: torch.Tensor  # (B,) int64 episode id within its dataset, for error reports
    dataset_index: torch.Tensor  # (B,) int64 index of the source dataset in the mixture

    @property
    def batch_size(self) -> int:
        """B."""
        return int(self.actions.shape[0])

    def loss_mask(self) -> torch.Tensor:
        """(B, H, D) float32: 1 where a target is real (inside the episode, unpadded dim)."""
        valid = ~self.action_is_pad[:, :, None] & self.action_mask[:, None, :]  # (B, H, D)
        return valid.to(self.actions.dtype)

    def to(self, device: Any) -> Batch:
        """Copy of this batch with every tensor moved to `device`."""
        moved = {f.name: getattr(self, f.name).to(device) for f in fields(self) if f.name != "obs"}
        return Batch(obs=self.obs.to(device), **moved)


@dataclass
class ActionChunk:
    """H actions for the robot, in its own units, as a policy or server returns them."""

    actions: np.ndarray  # (H, D) float32, robot units
    obs_time_s: float = 0.0  # time.monotonic() when the observation behind it was taken
    infer_ms: float = 0.0  # time the policy spent computing it, ms
    info: dict[str, Any] = field(default_factory=dict)  # extra timing/debug values

    @property
    def chunk_len(self) -> int:
        """H."""
        return int(self.actions.shape[0])


def validate_obs_dict(
    obs: Any,
    *,
    cameras: Mapping[str, tuple[int, int]] | None = None,
    state_dim: int | None = None,
    require_prompt: bool = True,
) -> None:
    """Check a plain observation dict against what a policy expects.

    `cameras` maps each expected camera name to its (Hpx, Wpx); None skips image checks.
    `state_dim` is S; None skips the state check. Images must be uint8 (Hpx, Wpx, 3); state
    must be finite float (S,). Raises `ObservationError` naming the key and what was wrong.
    """
    if not isinstance(obs, Mapping):
        raise ObservationError(f"observation must be a dict, got {type(obs).__name__}")
    if require_prompt:
        prompt = obs.get(OBS_PROMPT)
        if not isinstance(prompt, str):
            raise ObservationError(
                f"observation key '{OBS_PROMPT}' must be a string, got {type(prompt).__name__}"
            )
    if cameras is not None:
        images = obs.get(OBS_IMAGES)
        if not isinstance(images, Mapping):
            raise ObservationError(
                f"observation key '{OBS_IMAGES}' must be a dict of camera name -> uint8 "
                f"(H, W, 3) array, got {type(images).__name__}"
            )
        missing = sorted(set(cameras) - set(images))
        extra = sorted(set(images) - set(cameras))
        if missing or extra:
            raise ObservationError(
                f"observation cameras do not match: missing {missing}, unexpected {extra}; "
                f"the policy expects {sorted(cameras)}"
            )
        for cam, (h, w) in cameras.items():
            img = images[cam]
            where = f"'{OBS_IMAGES}.{cam}'"
            if not isinstance(img, np.ndarray):
                raise ObservationError(f"{where} must be a numpy array, got {type(img).__name__}")
            if img.dtype != np.uint8:
                raise ObservationError(f"{where} must be uint8, got {img.dtype}")
            if img.shape != (h, w, 3):
                raise ObservationError(f"{where} has shape {img.shape}, expected {(h, w, 3)}")
    if state_dim is not None:
        state = obs.get(OBS_STATE)
        if not isinstance(state, np.ndarray):
            raise ObservationError(
                f"observation key '{OBS_STATE}' must be a numpy array, got {type(state).__name__}"
            )
        if state.shape != (state_dim,):
            raise ObservationError(
                f"'{OBS_STATE}' has shape {state.shape}, expected ({state_dim},)"
            )
        if not np.issubdtype(state.dtype, np.floating):
            raise ObservationError(f"'{OBS_STATE}' must be float, got {state.dtype}")
        bad = np.flatnonzero(~np.isfinite(state))
        if bad.size:
            raise ObservationError(f"'{OBS_STATE}' has non-finite values at indices {bad.tolist()}")
