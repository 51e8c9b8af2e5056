"""Training samples from any `EpisodeSource`: observation history plus an action chunk.

A sample is anchored at one step t of one episode. It holds the last T_obs observations
(steps t - T_obs + 1 .. t) and the next H actions (steps t .. t + H - 1), the way ACT, Diffusion
Policy, Octo and pi0 train. Near the episode's edges the windows are padded and flagged:

- history before step 0 repeats step 0 and is flagged in `obs_is_pad`;
- actions past the last step repeat the last action (`pad_mode="repeat_last"`, LeRobot's
  behaviour) or are zero (`pad_mode="zero"`), and are flagged in `action_is_pad` so the loss
  ignores them.

Low-dimensional arrays (actions, states, timestamps) are small: they are read once at
construction into contiguous arrays (shared copy-on-write by forked DataLoader workers).
Camera frames are large: each sample fetches only its T_obs frames through
`source.frames`, which readers implement by seeking, so a pass over the data holds no frames
beyond the current batch.

Shape letters: T_obs history length, H chunk length, D action dims, S state dims,
Hpx x Wpx x 3 uint8 frames, B batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from robofm.data.episode import DatasetError, EpisodeSource
from robofm.spaces import ActionSpace

PAD_MODES = ("repeat_last", "zero")  # how actions past an episode's end are filled

ImageTransform = Callable[[np.ndarray], Any]  # uint8 (T_obs, Hpx, Wpx, 3) -> array or tensor


def locate_segment(ends: np.ndarray, idx: int) -> tuple[int, int]:
    """(k, j): segment k and offset j of global index `idx` (negative counts from the end),
    given the cumulative segment ends (K,). O(log K)."""
    n = int(ends[-1])
    if idx < 0:
        idx += n
    if not 0 <= idx < n:
        raise IndexError(f"index {idx} out of range for {n} samples")
    k = int(np.searchsorted(ends, idx, side="right"))
    return k, int(idx - (ends[k - 1] if k else 0))


class WindowDataset(torch.utils.data.Dataset):
    """Map-style dataset with one sample per (episode, step) of the selected episodes.

    Global index i maps to (episode, step) through the cumulative episode lengths with a
    binary search, so random access is O(log n_episodes). Samples are dicts:

    - `images`: {cam: uint8 (T_obs, Hpx, Wpx, 3)}, or whatever `image_transform` returns;
      replaced by `image_features`: {cam: (T_obs, N, C)} while `features` is attached;
    - `state`: float32 (T_obs, S) robot units ((T_obs, 0) when the source has no state);
    - `actions`: float32 (H, D) robot units;
    - `action_is_pad`: bool (H,), True where step t + k is past the episode's last step;
    - `obs_is_pad`: bool (T_obs,), True where the history step is before step 0;
    - `task`: str; `episode_index`: int (`Episode.index`); `frame_index`: int (t);
      `timestamp`: float seconds of step t.

    The dataset is picklable and opens nothing itself; the source opens its files lazily in
    each process, so it is safe with `DataLoader(num_workers > 0)` under fork or spawn.
    """

    def __init__(
        self,
        source: EpisodeSource,
        *,
        n_obs_steps: int = 1,
        chunk_len: int = 50,
        cameras: Sequence[str] | None = None,
        episodes: Sequence[int] | None = None,
        image_transform: ImageTransform | None = None,
        pad_mode: str = "repeat_last",
    ) -> None:
        """
        Args:
            source: any dataset reader (LeRobot, RLDS, HDF5, in memory).
            n_obs_steps: T_obs, observation history length (>= 1).
            chunk_len: H, actions per sample (>= 1).
            cameras: camera names to load, in order; None loads all of `source.cameras`,
                an empty list loads none.
            episodes: positions in `source` to use (e.g. a train or val split); None uses all.
            image_transform: callable applied to each camera's uint8 (T_obs, Hpx, Wpx, 3).
            pad_mode: "repeat_last" or "zero", how actions past the episode end are filled.
        """
        if n_obs_steps < 1:
            raise ValueError(f"n_obs_steps must be >= 1, got {n_obs_steps}")
        if chunk_len < 1:
            raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
        self.source = source
        self.name: str = source.name
        self.n_obs_steps = int(n_obs_steps)  # T_obs
        self.chunk_len = int(chunk_len)  # H
        self.pad_mode = pad_mode
        self.image_transform = image_transform
        self.cameras: list[str] = list(source.cameras) if cameras is None else list(cameras)
        unknown = [c for c in self.cameras if c not in source.cameras]
        if unknown:
            raise DatasetError(
                f"{source.name}: unknown camera(s) {unknown}; the dataset has "
                f"{sorted(source.cameras)}"
            )
        n_src = len(source)
        positions = list(range(n_src)) if episodes is None else [int(i) for i in episodes]
        if not positions:
            raise DatasetError(f"{source.name}: no episodes selected")
        bad = [i for i in positions if not 0 <= i < n_src]
        if bad:
            raise DatasetError(
                f"{source.name}: episode position(s) {bad} out of range for {n_src} episodes"
            )
        self._load_lowdim(positions)
        # cam -> (rows, N, C) per-frame encoder outputs, row = episode_starts[k] + step; set
        # by robofm.train.features while the vision encoder is frozen, None otherwise
        self.features: dict[str, torch.Tensor] | None = None

    # -----------------------------------------------------------------------------------------
    # Construction: low-dim arrays once, concatenated.

    def _load_lowdim(self, positions: list[int]) -> None:
        actions, states, times, lengths, indices, tasks = [], [], [], [], [], []
        for pos in positions:
            ep = self.source.episode(pos, images=False)
            where = f"{self.name}: episode {ep.index}"
            if ep.length == 0:
                raise DatasetError(f"{where}: has zero steps")
            if actions and ep.actions.shape[1] != actions[0].shape[1]:
                raise DatasetError(
                    f"{where}: has {ep.actions.shape[1]} action dims, earlier episodes "
                    f"have {actions[0].shape[1]}"
                )
            if states and ep.states.shape[1] != states[0].shape[1]:
                raise DatasetError(
                    f"{where}: has {ep.states.shape[1]} state dims, earlier episodes "
                    f"have {states[0].shape[1]}"
                )
            actions.append(np.asarray(ep.actions, dtype=np.float32))  # (T, D)
            states.append(np.asarray(ep.states, dtype=np.float32))  # (T, S)
            times.append(np.asarray(ep.timestamps, dtype=np.float64))  # (T,)
            lengths.append(ep.length)
            indices.append(int(ep.index))
            tasks.append(ep.task)
        self.source_positions = np.asarray(positions, dtype=np.int64)  # (E,) position in source
        self.episode_indices = np.asarray(indices, dtype=np.int64)  # (E,) Episode.index
        self.episode_lengths = np.asarray(lengths, dtype=np.int64)  # (E,) T per episode
        self.episode_starts = np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]])  # (E,)
        self._cum_lengths = np.cumsum(self.episode_lengths)  # (E,) end offset of each episode
        self.tasks = tasks  # E instruction strings
        self.actions = np.concatenate(actions)  # (N, D) all steps of all selected episodes
        self.states = np.concatenate(states)  # (N, S)
        self.timestamps = np.concatenate(times)  # (N,)

    # -----------------------------------------------------------------------------------------
    # Properties.

    @property
    def action_dim(self) -> int:
        """D."""
        return int(self.actions.shape[1])

    @property
    def state_dim(self) -> int:
        """S (0 when the source has no state)."""
        return int(self.states.shape[1])

    @property
    def num_episodes(self) -> int:
        """E, the number of selected episodes."""
        return len(self.episode_lengths)

    @property
    def action_space(self) -> ActionSpace | None:
        """The source's action contract, None if it has none."""
        return self.source.action_space

    @property
    def image_sizes(self) -> dict[str, tuple[int, int]]:
        """Camera name -> (Hpx, Wpx) of the raw frames, for the selected cameras."""
        sizes = self.source.cameras
        return {cam: (int(sizes[cam][0]), int(sizes[cam][1])) for cam in self.cameras}

    def __len__(self) -> int:
        return int(self._cum_lengths[-1])

    def locate(self, idx: int) -> tuple[int, int]:
        """(k, t): the k-th selected episode and step t that global index `idx` points at."""
        return locate_segment(self._cum_lengths, idx)

    # -----------------------------------------------------------------------------------------
    # Samples.

    def __getitem__(self, idx: int) -> dict[str, Any]:
        k, t = self.locate(int(idx))
        length = int(self.episode_lengths[k])
        start = int(self.episode_starts[k])

        obs_steps = np.arange(t - self.n_obs_steps + 1, t + 1)  # (T_obs,) may be < 0
        obs_is_pad = obs_steps < 0
        obs_steps = np.maximum(obs_steps, 0)

        act_steps = np.arange(t, t + self.chunk_len)  # (H,) may run past the end
        action_is_pad = act_steps >= length
        actions = self.actions[start + np.minimum(act_steps, length - 1)]  # (H, D) copy
        if self.pad_mode == "zero":
            actions[action_is_pad] = 0.0

        out: dict[str, Any] = {}
        if self.features is not None:  # cached encoder outputs instead of decoded frames
            rows = start + obs_steps
            out["image_features"] = {cam: f[rows] for cam, f in self.features.items()}
        else:
            out["images"] = {cam: self._frames(k, cam, obs_steps) for cam in self.cameras}
        return {
            **out,  # images: cam -> (T_obs, Hpx, Wpx, 3) uint8 (or transformed); or
            # image_features: cam -> (T_obs, N, C) when features are attached
            "state": self.states[start + obs_steps],  # (T_obs, S)
            "actions": actions,  # (H, D)
            "action_is_pad": action_is_pad,  # (H,)
            "obs_is_pad": obs_is_pad,  # (T_obs,)
            "task": self.tasks[k],
            "episode_index": int(self.episode_indices[k]),
            "frame_index": t,
            "timestamp": float(self.timestamps[start + t]),
        }

    def _frames(self, k: int, cam: str, steps: np.ndarray) -> Any:
        """Frames of camera `cam` at `steps` of the k-th episode; each distinct step decoded
        once, in increasing order (what a seeking video reader handles best)."""
        unique, inverse = np.unique(steps, return_inverse=True)
        frames = self.source.frames(int(self.source_positions[k]), cam, unique)  # (K, h, w, 3)
        frames = np.asarray(frames)
        if len(unique) != len(steps):
            frames = frames[inverse.reshape(-1)]  # (T_obs, Hpx, Wpx, 3)
        if self.image_transform is not None:
            return self.image_transform(frames)
        return frames

    def __repr__(self) -> str:
        return (
            f"WindowDataset({self.name!r}, episodes={self.num_episodes}, samples={len(self)}, "
            f"T_obs={self.n_obs_steps}, H={self.chunk_len}, D={self.action_dim}, "
            f"S={self.state_dim}, cameras={self.cameras})"
        )


# ---------------------------------------------------------------------------------------------
# Collation.


def collate_windows(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack a list of samples (from `WindowDataset` or `Mixture`) into a batch dict.

    Arrays and tensors are stacked on a new leading axis B (numpy becomes torch, sharing
    nothing with the samples); nested dicts (`images`, `image_mask`) are collated per key;
    strings become lists; bools become bool tensors, ints int64 tensors, floats float64
    tensors. For example `actions` (H, D) becomes (B, H, D), `images[cam]` (T_obs, Hpx,
    Wpx, 3) becomes (B, T_obs, Hpx, Wpx, 3).
    """
    if not samples:
        raise ValueError("collate_windows needs at least one sample")
    return {key: _collate([s[key] for s in samples], key) for key in samples[0]}


def _collate(values: list[Any], key: str) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _collate([v[k] for v in values], f"{key}.{k}") for k in first}
    if isinstance(first, str):
        return list(values)
    if isinstance(first, (bool, np.bool_)):
        return torch.tensor([bool(v) for v in values], dtype=torch.bool)
    if isinstance(first, (int, np.integer)):
        return torch.tensor([int(v) for v in values], dtype=torch.int64)
    if isinstance(first, (float, np.floating)):
        return torch.tensor([float(v) for v in values], dtype=torch.float64)
    if isinstance(first, (np.ndarray, torch.Tensor)):
        tensors = [torch.as_tensor(v) for v in values]
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise ValueError(f"cannot stack '{key}': samples have shapes {sorted(shapes)}")
        return torch.stack(tensors)  # (B, ...)
    raise TypeError(f"cannot collate '{key}' of type {type(first).__name__}")
