"""`Policy`: what a robot (or the sim, or the server) calls.

`infer({"images": {cam: uint8 (Hpx, Wpx, 3)}, "state": float32 (S,), "prompt": str})` returns
`{"actions": float32 (H, D)}` in the robot's own units. Input transforms: check the dict
against the checkpoint (cameras, state dim), resize images to the model's size in plain torch,
normalise state with the checkpoint's stats, keep the last T_obs observations. Output
transforms: unnormalise actions, clip to the ActionSpace bounds. The client never normalises.
"""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import torch

from robofm.data.stats import Normalizer
from robofm.data.transforms import build_image_transform
from robofm.spaces import SpacesFile
from robofm.types import (
    OBS_IMAGES,
    OBS_PROMPT,
    OBS_STATE,
    RESULT_ACTIONS,
    Observation,
    ObservationError,
    validate_obs_dict,
)

STATE_KEY = "observation.state"
ACTION_KEY = "action"


class Policy:
    """A VLA with its normaliser and action contract, for one robot."""

    def __init__(
        self,
        model,
        normalizer: Normalizer,
        spaces: SpacesFile,
        *,
        seed: int = 0,
        device: str = "cpu",
        compile: bool = False,
    ):
        """`compile`: run the model's prefix encoder and head under `torch.compile`
        (`robofm.deploy.export.CompiledSampler`; the first call compiles, which takes seconds
        to a minute). Off by default; the actions match eager within float rounding."""
        self.model = model.eval()
        self.normalizer = normalizer
        self.spaces = spaces
        self.device = torch.device(device)
        self.robot = spaces.action.robot
        self.cameras = tuple(model.cameras)
        self.state_dim = model.embodiments.state_dims.get(self.robot)
        if self.state_dim is None:
            raise ObservationError(
                f"checkpoint has no adapter for robot '{self.robot}'; it knows "
                f"{sorted(model.embodiments.state_dims)}"
            )
        self.seed = seed
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.history: deque = deque(maxlen=model.cfg.n_obs_steps)
        scale = tuple(getattr(model, "transforms", {}).get("image_crop_scale", (1.0, 1.0)))
        self._transform = build_image_transform(model.cfg.image_size, train=False, scale=scale)
        self._compiled = None  # CompiledSampler when compile=True
        if compile:
            from robofm.deploy.export import CompiledSampler

            self._compiled = CompiledSampler(self.model)

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kw) -> Policy:
        """Load a checkpoint directory written by `save_checkpoint` (or its INT8 copy from
        `robofm.deploy.quantize_checkpoint`)."""
        from robofm.models.checkpoint import load_checkpoint

        device = kw.get("device", "cpu")
        model, normalizer, spaces = load_checkpoint(path, device=device, allow_quantized=True)
        return cls(model, normalizer, spaces, **kw)

    @property
    def metadata(self) -> dict[str, Any]:
        """What a server tells a client on connect: contract and expected inputs."""
        return {
            "action_space": self.spaces.action.to_dict(),
            "state_space": None if self.spaces.state is None else self.spaces.state.to_dict(),
            "cameras": list(self.cameras),
            "image_size": self.model.cfg.image_size,
            "state_dim": self.state_dim,
            "chunk_len": self.model.cfg.chunk_len,
        }

    def reset(self) -> None:
        """Forget the observation history and restart the sampling noise (new episode)."""
        self.history.clear()
        self.generator.manual_seed(self.seed)

    def _images(self, obs: dict) -> dict[str, torch.Tensor]:
        """Each camera through the deterministic variant of the training image transform:
        centre crop (when training used random crops) and resize, in plain torch."""
        out = {}
        for cam in self.cameras:
            img = torch.from_numpy(np.ascontiguousarray(obs[OBS_IMAGES][cam]))
            out[cam] = self._transform(img)[None]  # (1, 3, size, size) in [0, 1]
        return out

    @torch.inference_mode()
    def infer(self, obs: dict) -> dict[str, Any]:
        """One action chunk: {"actions": float32 (H, D) robot units, "infer_ms": float}."""
        t0 = time.perf_counter()
        validate_obs_dict(obs, cameras=None, state_dim=self.state_dim)
        images = obs.get(OBS_IMAGES)
        if not isinstance(images, dict):
            raise ObservationError(f"observation key '{OBS_IMAGES}' must be a dict of cameras")
        missing = sorted(set(self.cameras) - set(images))
        if missing:
            raise ObservationError(
                f"observation lacks camera(s) {missing}; this policy needs {list(self.cameras)}"
                f" and got {sorted(images)}"
            )
        for cam in self.cameras:
            a = np.asarray(images[cam])
            if a.dtype != np.uint8 or a.ndim != 3 or a.shape[-1] != 3:
                raise ObservationError(
                    f"camera '{cam}' must be uint8 (H, W, 3), got {a.dtype} {a.shape}"
                )
        state = np.asarray(obs[OBS_STATE], dtype=np.float32)
        norm_state = self.normalizer.normalize(state[None], STATE_KEY)  # (1, S)
        step = {"images": self._images(obs), "state": torch.as_tensor(norm_state)}
        self.history.append(step)
        while len(self.history) < self.history.maxlen:
            self.history.appendleft(self.history[0])  # repeat the first frame at episode start
        hist = list(self.history)
        o = Observation(
            images={
                c: torch.stack([h["images"][c] for h in hist], 1).to(self.device)
                for c in self.cameras
            },  # (1, T_obs, 3, H, W)
            image_mask={c: torch.ones(1, dtype=torch.bool) for c in self.cameras},
            state=torch.stack([h["state"] for h in hist], 1).float().to(self.device),
            state_mask=torch.ones(1, self.state_dim, dtype=torch.bool),
            prompt=[obs[OBS_PROMPT]],
            embodiment=[self.robot],
        )
        sample = self._compiled or self.model.sample_actions
        actions = sample(o, generator=self.generator)[0]  # (H, D_model)
        d = self.spaces.action.dim
        actions = self.normalizer.unnormalize(actions[:, :d].float().cpu().numpy(), ACTION_KEY)
        actions = self.spaces.action.clip(actions.astype(np.float32))
        return {RESULT_ACTIONS: actions, "infer_ms": (time.perf_counter() - t0) * 1000.0}
