"""The in-memory episode schema shared by every dataset reader and writer.

A reader (LeRobot v3, RLDS, HDF5) exposes an `EpisodeSource`: the number of episodes, their
low-dimensional arrays (actions, states, timestamps: small, loaded whole), and random access
to camera frames by index (large: decoded on demand, with seeking). `Episode` is one
demonstration with its arrays; its `images` are filled only when asked for.

Shapes: T steps, D action dims, S state dims, Hpx x Wpx x 3 uint8 images.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from robofm.errors import RobofmError
from robofm.spaces import ActionSpace, StateSpace


class DatasetError(RobofmError, ValueError):
    """A dataset file or episode is malformed; the message names the file and episode."""


@dataclass
class Episode:
    """One demonstration. Arrays are aligned on the step axis T."""

    index: int  # episode index within its dataset
    task: str  # natural-language instruction ("" when the source has none)
    actions: np.ndarray  # (T, D) float32, robot units
    states: np.ndarray  # (T, S) float32, robot units; (T, 0) when the source has no state
    timestamps: np.ndarray  # (T,) float64 seconds since the episode's first step
    images: dict[str, np.ndarray] = field(default_factory=dict)  # cam -> (T, Hpx, Wpx, 3) uint8
    extras: dict[str, np.ndarray] = field(default_factory=dict)  # other per-step fields, (T, ...)
    meta: dict[str, Any] = field(default_factory=dict)  # source file, split, robot, ...

    @property
    def length(self) -> int:
        """T, the number of steps."""
        return int(self.actions.shape[0])

    def validate(self, where: str = "") -> None:
        """Raise `DatasetError` (prefixed with `where`) if arrays disagree on T or hold NaN
        where a reader must never produce it (timestamps)."""
        at = f"{where}episode {self.index}"
        t = self.length
        if t == 0:
            raise DatasetError(f"{at}: has zero steps")
        if self.actions.ndim != 2:
            raise DatasetError(f"{at}: 'actions' must be (T, D), got shape {self.actions.shape}")
        if self.states.ndim != 2 or self.states.shape[0] != t:
            raise DatasetError(f"{at}: 'states' has shape {self.states.shape}, expected ({t}, S)")
        if self.timestamps.shape != (t,):
            raise DatasetError(
                f"{at}: 'timestamps' has shape {self.timestamps.shape}, expected ({t},)"
            )
        for cam, frames in self.images.items():
            if frames.shape[0] != t or frames.ndim != 4 or frames.shape[-1] != 3:
                raise DatasetError(
                    f"{at}: camera '{cam}' has {frames.shape} frames, expected ({t}, H, W, 3)"
                )
        for key, value in self.extras.items():
            if len(value) != t:
                raise DatasetError(f"{at}: field '{key}' has {len(value)} steps, expected {t}")


@runtime_checkable
class EpisodeSource(Protocol):
    """What every dataset reader provides. Implementations must be safe to use after fork:
    open file handles lazily per process, never share them across DataLoader workers."""

    name: str  # human-readable dataset name (directory or file stem)
    fps: float  # recording rate, Hz
    cameras: dict[str, tuple[int, int]]  # camera name -> (Hpx, Wpx)
    action_space: ActionSpace | None  # the dataset's action contract, None if it has none
    skipped: list[str]  # "<file>: <episode>: <reason>" per episode dropped by skip_bad; the
    # episode is named in its format's own terms: LeRobot "episode 3", HDF5 "demo_3",
    # RLDS "record 3" (of that shard), so a person can find it with the format's own tools

    def __len__(self) -> int:
        """Number of episodes."""
        ...

    def episode(self, i: int, *, images: bool = False) -> Episode:
        """Episode `i` with its low-dim arrays; camera frames too when `images`."""
        ...

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        """(K, Hpx, Wpx, 3) uint8 frames of camera `cam` at the K step indices of episode `i`."""
        ...


def iter_episodes(source: EpisodeSource, *, images: bool = False) -> Iterator[Episode]:
    """Yield every episode of `source` in order."""
    for i in range(len(source)):
        yield source.episode(i, images=images)


class InMemorySource:
    """An `EpisodeSource` over episodes already in memory (with their images).

    Used to write episodes produced by a recorder or converter, and by tools that take
    any source.
    """

    def __init__(
        self,
        episodes: list[Episode],
        *,
        fps: float,
        name: str = "memory",
        action_space: ActionSpace | None = None,
        state_space: StateSpace | None = None,
    ) -> None:
        if not episodes:
            raise DatasetError(f"{name}: no episodes")
        self.episodes = episodes
        self.name = name
        self.fps = float(fps)
        self.action_space = action_space
        self.state_space = state_space  # optional proprio contract, names the state dims
        self.skipped: list[str] = []
        first = episodes[0]
        self.cameras = {cam: (int(v.shape[1]), int(v.shape[2])) for cam, v in first.images.items()}
        for ep in episodes:
            ep.validate(f"{name}: ")
            if set(ep.images) != set(self.cameras):
                raise DatasetError(
                    f"{name}: episode {ep.index} has cameras {sorted(ep.images)}, "
                    f"expected {sorted(self.cameras)}"
                )

    def __len__(self) -> int:
        return len(self.episodes)

    def episode(self, i: int, *, images: bool = False) -> Episode:
        ep = self.episodes[i]
        if images:
            return ep
        return Episode(
            ep.index, ep.task, ep.actions, ep.states, ep.timestamps, {}, ep.extras, ep.meta
        )

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        return self.episodes[i].images[cam][np.asarray(steps)]
