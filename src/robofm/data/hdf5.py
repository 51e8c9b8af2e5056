"""Reader for robomimic / LIBERO-style HDF5 demonstration files (h5py).

Layout (robomimic's, which LIBERO reuses)::

    data/                      attrs: env_args (JSON), total; LIBERO adds problem_info (JSON with
                               language_instruction, ...), bddl_file_name, env_name,
                               macros_image_convention, num_demos
      demo_<k>/                attrs: num_samples (= T); optionally language_instruction or lang
        actions                (T, D) float
        obs/<key>              (T, Hpx, Wpx, 3) uint8 images (agentview_rgb, agentview_image, ...)
                               or (T,) / (T, k) low-dim values (ee_pos, robot0_eef_pos, ...)
        states, rewards, dones, robot_states, ...   (T, ...) per-step extras, all optional
        next_obs/              ignored (it repeats obs shifted by one step)
    mask/<filter_key>          (N,) bytes demo names, robomimic's train / valid splits

Conventions:

- Demos are the `demo_<k>` groups sorted numerically by k (demo_2 before demo_10), restricted to
  `mask/<filter_key>` when a filter key is given. Episode `i` is the i-th demo in that order that
  was not skipped; its name is in `Episode.meta["demo"]`.
- Cameras: by default every obs key holding uint8 (T, Hpx, Wpx, 3) data. A camera is named after
  its key with one `_rgb` / `_image` suffix removed (`agentview_rgb` -> `agentview`,
  `robot0_eye_in_hand_image` -> `robot0_eye_in_hand`); keys that would collide keep their full
  names. Pass a mapping {camera name: obs key} to choose names yourself.
- State: the concatenation of `state_keys` in the order given, cast to float32. By default all
  low-dimensional obs keys ((T,) or (T, k), numeric) in sorted order, which can repeat
  information (LIBERO's `ee_states` is `ee_pos` + `ee_ori`); pass `state_keys` to choose.
  `Episode.meta["state_keys"]` maps each key to its (start, stop) columns of the state.
- Language, first found: the demo's `language_instruction` or `lang` attribute; the
  `language_instruction` in `data.attrs["problem_info"]` (LIBERO) or a `language_instruction`
  attribute of `data`; the `task` argument; finally the file name (see `task_from_file_name`).
  `Episode.meta["task_source"]` says which one was used.
- Time: the files store no timestamps. Steps are `1 / fps` seconds apart; robosuite (robomimic
  and LIBERO) records at its 20 Hz control rate, hence the default.
- Images are returned as stored. LIBERO files written with `macros_image_convention == "opengl"`
  hold frames bottom row first (upside down); `flip_images=True` reverses the rows (a vertical
  flip, the exact inverse of OpenGL row order). Nothing is flipped automatically: the attribute
  is exposed as `image_convention` for you to decide. Note that OpenVLA's and openpi's LIBERO
  conversions rotate frames by 180 degrees (`[::-1, ::-1]`), which also mirrors them left-right.

Validation: shapes, dtypes and step counts of every demo are checked when the source is built,
reading metadata only. A malformed demo raises `DatasetError` naming the file and the demo, or,
with `skip_bad=True`, is dropped and described in `skipped`. Corrupt data chunks can only be
found while reading; they raise `DatasetError` from `episode` / `frames` whatever `skip_bad` says.

Processes: the h5py file is opened lazily in each process (it remembers the pid and reopens
after a fork), so a source can be handed to forked DataLoader workers or pickled to spawned
ones. Nothing is cached: images are read from the file on every call.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from robofm.data.episode import DatasetError, Episode
from robofm.spaces import ActionSpace

_DEMO_NAME = re.compile(r"demo_(\d+)")  # robomimic demo group names
_CAMERA_SUFFIXES = ("_rgb", "_image")  # stripped from obs keys to name cameras
_NOT_EXTRAS = ("obs", "next_obs")  # members of a demo group that are not per-step extras
_FILE_LANGUAGE_ATTR = "language_instruction"  # in problem_info, or directly on `data`
_DEMO_LANGUAGE_ATTRS = ("language_instruction", "lang")  # per-demo attributes, in priority order
# What h5py raises for unreadable or corrupt objects (HDF5 errors surface as OSError/KeyError).
_READ_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)


@dataclass(frozen=True)
class _Demo:
    """What the source keeps per usable demo: names and sizes only, no arrays."""

    name: str  # group name under data/, e.g. "demo_10"
    length: int  # T, steps
    task: str  # instruction
    task_source: str  # where the instruction came from
    extras: tuple[str, ...]  # per-step datasets beside actions/obs, e.g. ("dones", "rewards")


@dataclass
class _Info:
    """Metadata of one demo group, gathered without reading arrays."""

    length: int  # T
    action_dim: int  # D
    obs: dict[str, tuple[tuple[int, ...], np.dtype]]  # key -> (shape, dtype)
    extras: tuple[str, ...]  # per-step extras
    attrs: dict[str, Any]  # the demo group's attributes that name its language


class HDF5Source:
    """An `EpisodeSource` over one robomimic / LIBERO HDF5 file (see the module docstring).

    Args:
        path: the `.hdf5` file.
        camera_keys: obs keys to expose as cameras: a sequence of keys (named by stripping
            `_rgb` / `_image`) or a mapping {camera name: obs key}. None: every uint8
            (T, Hpx, Wpx, 3) obs key.
        state_keys: obs keys concatenated, in this order, into the (T, S) state. None: every
            low-dim obs key, sorted. An empty sequence gives (T, 0) states.
        action_key: dataset in each demo group holding the (T, D) actions.
        filter_key: name of a `mask/` dataset listing the demos to use (e.g. "train", "valid").
        fps: recording rate in Hz; timestamps are `arange(T) / fps` seconds.
        task: instruction for demos whose file stores none (before the file-name fallback).
        skip_bad: drop malformed demos (listed in `skipped`) instead of raising.
        flip_images: reverse image rows (vertical flip), for files that store frames upside
            down in OpenGL order (LIBERO: `image_convention == "opengl"`).

    Raises:
        DatasetError: the file cannot be opened, has no `data` group or no usable demos, or
            (without `skip_bad`) a demo is malformed; the message names the file and demo.

    Attributes (besides the `EpisodeSource` ones: name, fps, cameras, action_space, skipped):
        camera_keys: {camera name: obs key}.
        state_keys: obs keys making up the state, in order.
        state_slices: {obs key: (start, stop)} columns of the (T, S) state.
        demo_names: demo group name of each episode.
        env_args, problem_info: the parsed JSON attributes of `data` (None when absent).
        image_convention: `data.attrs["macros_image_convention"]` (LIBERO), or None.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        camera_keys: Sequence[str] | Mapping[str, str] | None = None,
        state_keys: Sequence[str] | None = None,
        action_key: str = "actions",
        filter_key: str | None = None,
        fps: float = 20.0,
        task: str | None = None,
        skip_bad: bool = False,
        flip_images: bool = False,
    ) -> None:
        self.path = Path(path)
        self.name = self.path.stem  # file stem, e.g. "KITCHEN_SCENE1_put_..._demo"
        if not (np.isfinite(fps) and fps > 0):
            raise DatasetError(f"{self.path}: fps must be > 0, got {fps}")
        self.fps = float(fps)
        self.action_space: ActionSpace | None = None  # robomimic/LIBERO files carry none
        self.action_key = action_key
        self.filter_key = filter_key
        self.flip_images = bool(flip_images)
        self.skipped: list[str] = []  # "<file>: demo_<k>: <reason>" per dropped demo
        self._task_arg = task
        self._file: h5py.File | None = None  # this process's handle, opened lazily
        self._pid: int | None = None  # process that opened `_file`

        file = self._h5()
        try:
            data = file.get("data")
            if not isinstance(data, h5py.Group):
                raise DatasetError(
                    f"{self.path}: no 'data' group; not a robomimic/LIBERO file "
                    f"(top-level keys: {sorted(file.keys())})"
                )
            self.env_args = self._json_attr(data, "env_args")  # parsed data.attrs["env_args"]
            self.problem_info = self._json_attr(data, "problem_info")  # LIBERO task metadata
            convention = data.attrs.get("macros_image_convention")
            self.image_convention = None if convention is None else _text(convention)
            self._file_task = self._file_language(data)
            names = self._demo_names(file, data)
            infos = {name: self._inspect(data, name) for name in names}
        except DatasetError:
            raise
        except _READ_ERRORS as e:
            raise DatasetError(f"{self.path}: cannot read file structure ({e})") from e

        self.camera_keys, self.state_keys = self._choose_keys(camera_keys, state_keys, infos)
        self.cameras, self.state_slices, self._action_dim = self._expected_shapes(infos)
        self._demos: list[_Demo] = []
        bad: list[tuple[str, str]] = []
        for name, info in infos.items():
            reason = info if isinstance(info, str) else self._check(info)
            if reason is not None:
                bad.append((name, reason))
                continue
            assert isinstance(info, _Info)
            task_text, source = self._demo_language(info.attrs)
            self._demos.append(_Demo(name, info.length, task_text, source, info.extras))
        if bad and not skip_bad:
            name, reason = bad[0]
            more = f" (and {len(bad) - 1} more bad demo(s))" if len(bad) > 1 else ""
            raise DatasetError(
                f"{self.path}: {name}: {reason}{more}; pass skip_bad=True to skip bad demos"
            )
        self.skipped = [f"{self.path}: {name}: {reason}" for name, reason in bad]
        if not self._demos:
            detail = "; ".join(self.skipped) if self.skipped else "no demo_<k> groups"
            split = f" in mask/{filter_key}" if filter_key is not None else ""
            raise DatasetError(f"{self.path}: no usable demos{split} ({detail})")

    # -- EpisodeSource ------------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of usable demos (after `filter_key` and `skip_bad`)."""
        return len(self._demos)

    @property
    def demo_names(self) -> list[str]:
        """Group names of the episodes, in episode order (e.g. ["demo_0", "demo_2", ...])."""
        return [d.name for d in self._demos]

    def episode(self, i: int, *, images: bool = False) -> Episode:
        """Episode `i`: (T, D) float32 actions, (T, S) float32 states, (T,) timestamps in
        seconds, per-step extras (rewards, dones, MuJoCo `states`, ...) as stored, and, when
        `images`, every camera's (T, Hpx, Wpx, 3) uint8 frames (read now, not cached)."""
        demo = self._demo(i)
        where = f"{self.path}: {demo.name}"
        t = demo.length
        try:
            group = self._h5()["data"][demo.name]
            actions = np.asarray(group[self.action_key][()], dtype=np.float32)  # (T, D)
            parts = [_as_columns(group["obs"][key][()]) for key in self.state_keys]  # (T, k)
            if parts:
                states = np.concatenate(parts, axis=1).astype(np.float32, copy=False)  # (T, S)
            else:
                states = np.zeros((t, 0), dtype=np.float32)
            extras = {key: np.asarray(group[key][()]) for key in demo.extras}
            frames = {}
            if images:
                for cam, key in self.camera_keys.items():
                    frames[cam] = self._orient(group["obs"][key][()])  # (T, Hpx, Wpx, 3)
        except DatasetError:
            raise
        except _READ_ERRORS as e:
            raise DatasetError(f"{where}: cannot read ({e})") from e
        episode = Episode(
            index=i,
            task=demo.task,
            actions=actions,
            states=states,
            timestamps=np.arange(t, dtype=np.float64) / self.fps,
            images=frames,
            extras=extras,
            meta={
                "file": str(self.path),
                "demo": demo.name,
                "task_source": demo.task_source,
                "state_keys": dict(self.state_slices),
                "camera_keys": dict(self.camera_keys),
                "filter_key": self.filter_key,
            },
        )
        episode.validate(f"{where}: ")  # the file changed since it was opened
        return episode

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        """(K, Hpx, Wpx, 3) uint8 frames of camera `cam` at the K step indices `steps` of
        episode `i`, in the order given; indices may repeat, be unsorted, or be negative
        (counted from the end, as in numpy). Only the needed frames are read."""
        demo = self._demo(i)
        if cam not in self.camera_keys:
            raise KeyError(f"{self.path}: no camera {cam!r}; cameras: {sorted(self.camera_keys)}")
        idx = _step_indices(steps, demo.length, f"{self.path}: {demo.name}")  # (K,)
        height, width = self.cameras[cam]
        uniq, inverse = np.unique(idx, return_inverse=True)  # increasing, as h5py requires
        if uniq.size == 0:
            return np.zeros((0, height, width, 3), dtype=np.uint8)
        try:
            dataset = self._h5()["data"][demo.name]["obs"][self.camera_keys[cam]]
            lo, hi = int(uniq[0]), int(uniq[-1]) + 1
            # Dense: one contiguous read of at most 2K frames; sparse: a point selection.
            dense = hi - lo <= 2 * uniq.size
            block = dataset[lo:hi][uniq - lo] if dense else dataset[uniq]  # (U, Hpx, Wpx, 3)
        except _READ_ERRORS as e:
            raise DatasetError(f"{self.path}: {demo.name}: cannot read camera {cam!r} ({e})") from e
        return self._orient(block[inverse.reshape(-1)])  # (K, Hpx, Wpx, 3)

    # -- process-local file handle ------------------------------------------------------------

    def close(self) -> None:
        """Close this process's file handle; the next read reopens it."""
        if self._file is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                self._file.close()
        self._file = None
        self._pid = None

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the file handle (spawned workers open their own)."""
        state = self.__dict__.copy()
        state["_file"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"HDF5Source({str(self.path)!r}, demos={len(self)}, cameras={self.cameras}, "
            f"state_dim={self.state_dim}, skipped={len(self.skipped)})"
        )

    @property
    def state_dim(self) -> int:
        """S, the width of the concatenated state."""
        return max((stop for _, stop in self.state_slices.values()), default=0)

    def _h5(self) -> h5py.File:
        """The file handle owned by this process, opening it on first use after a fork."""
        pid = os.getpid()
        if self._file is not None and self._pid == pid:
            return self._file
        if self._file is not None:
            # Inherited through fork: release this process's copy of the parent's handle (its
            # file descriptor is a duplicate, so the parent's stays open) and open our own.
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        try:
            # Read-only: without HDF5 file locks, closing an inherited copy cannot drop the
            # parent's lock, and files on NFS/Lustre open.
            self._file = h5py.File(self.path, "r", locking=False)
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.path}: cannot open as HDF5 ({e})") from e
        self._pid = pid
        return self._file

    # -- construction helpers -----------------------------------------------------------------

    def _demo(self, i: int) -> _Demo:
        if not 0 <= i < len(self._demos):
            raise IndexError(f"{self.path}: episode {i} out of range ({len(self)} episodes)")
        return self._demos[i]

    def _orient(self, frames: np.ndarray) -> np.ndarray:
        """(..., Hpx, Wpx, 3) frames, rows reversed when `flip_images`."""
        if not self.flip_images:
            return frames
        return np.ascontiguousarray(frames[..., ::-1, :, :])

    def _json_attr(self, data: h5py.Group, key: str) -> dict[str, Any] | None:
        if key not in data.attrs:
            return None
        text = _text(data.attrs[key])
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"{self.path}: attribute data.attrs[{key!r}] is not valid JSON ({e.msg} at "
                f"line {e.lineno} column {e.colno})"
            ) from None
        return value if isinstance(value, dict) else {"value": value}

    def _file_language(self, data: h5py.Group) -> str:
        """The file-wide instruction ("" when none): problem_info's, else data's attribute."""
        candidates = []
        if self.problem_info is not None:
            candidates.append(self.problem_info.get(_FILE_LANGUAGE_ATTR))
        candidates.append(data.attrs.get(_FILE_LANGUAGE_ATTR))
        for value in candidates:
            if value is None:
                continue
            text = _text(value).strip()
            if text:
                return text
        return ""

    def _demo_language(self, attrs: dict[str, Any]) -> tuple[str, str]:
        """(instruction, where it came from) for one demo; see the module docstring."""
        for key in _DEMO_LANGUAGE_ATTRS:
            text = _text(attrs[key]).strip() if key in attrs else ""
            if text:
                return text, f"demo attribute {key!r}"
        if self._file_task:
            return self._file_task, "file attribute"
        if self._task_arg:
            return self._task_arg, "task argument"
        return task_from_file_name(self.path), "file name"

    def _demo_names(self, file: h5py.File, data: h5py.Group) -> list[str]:
        """Demo group names in numeric order, from `data/` or from `mask/<filter_key>`."""
        if self.filter_key is None:
            names = [k for k in data if _DEMO_NAME.fullmatch(k)]
        else:
            mask = file.get("mask")
            available = sorted(mask) if isinstance(mask, h5py.Group) else []
            if self.filter_key not in available:
                raise DatasetError(
                    f"{self.path}: no filter key 'mask/{self.filter_key}' "
                    f"(available filter keys: {available})"
                )
            entries = np.atleast_1d(mask[self.filter_key][()]).reshape(-1)
            names = list(dict.fromkeys(_text(e).strip() for e in entries))
            for name in names:
                if not _DEMO_NAME.fullmatch(name):
                    raise DatasetError(
                        f"{self.path}: mask/{self.filter_key} lists {name!r}, not a demo_<k> name"
                    )
        return sorted(names, key=lambda n: int(n.removeprefix("demo_")))

    def _inspect(self, data: h5py.Group, name: str) -> _Info | str:
        """Shapes and attributes of demo `name`, or the reason it is structurally bad."""
        try:
            group = data.get(name)
            if not isinstance(group, h5py.Group):
                where = f"mask/{self.filter_key}" if self.filter_key is not None else "data/"
                return f"listed in {where} but there is no group data/{name}"
            actions = group.get(self.action_key)
            if not isinstance(actions, h5py.Dataset):
                return f"no {self.action_key!r} dataset (members: {sorted(group)})"
            if actions.ndim != 2:
                return f"{self.action_key!r} has shape {actions.shape}, expected (T, D)"
            t = int(actions.shape[0])
            if t == 0:
                return f"has zero steps ({self.action_key!r} has shape {actions.shape})"
            if "num_samples" in group.attrs:
                with contextlib.suppress(TypeError, ValueError):
                    n = int(_text(group.attrs["num_samples"]))
                    if n != t:
                        return f"attribute num_samples is {n} but {self.action_key!r} has {t} steps"
            extras = []
            for key, obj in group.items():
                if key == self.action_key or key in _NOT_EXTRAS:
                    continue
                if isinstance(obj, h5py.Dataset) and obj.ndim >= 1:
                    if obj.shape[0] != t:
                        return f"{key!r} has {obj.shape[0]} steps but {self.action_key!r} has {t}"
                    extras.append(key)
            obs_group = group.get("obs")
            obs = {}
            if isinstance(obs_group, h5py.Group):
                for key, obj in obs_group.items():
                    if isinstance(obj, h5py.Dataset):
                        obs[key] = (tuple(int(s) for s in obj.shape), obj.dtype)
            attrs = {k: group.attrs[k] for k in _DEMO_LANGUAGE_ATTRS if k in group.attrs}
        except _READ_ERRORS as e:
            return f"cannot read its metadata ({e})"
        return _Info(t, int(actions.shape[1]), obs, tuple(sorted(extras)), attrs)

    def _choose_keys(
        self,
        camera_keys: Sequence[str] | Mapping[str, str] | None,
        state_keys: Sequence[str] | None,
        infos: dict[str, _Info | str],
    ) -> tuple[dict[str, str], tuple[str, ...]]:
        """({camera name: obs key}, state obs keys); defaults come from the first good demo."""
        reference = next((info for info in infos.values() if isinstance(info, _Info)), None)
        ref_obs = reference.obs if reference is not None else {}
        if camera_keys is None:
            image_keys = sorted(
                k for k, (shape, dtype) in ref_obs.items() if _is_image(shape, dtype)
            )
            cameras = _camera_names(image_keys)
        elif isinstance(camera_keys, Mapping):
            cameras = {str(cam): str(key) for cam, key in camera_keys.items()}
        else:
            if isinstance(camera_keys, str):
                raise DatasetError(f"{self.path}: camera_keys must be a list of obs keys")
            cameras = _camera_names(list(camera_keys))
        if state_keys is None:
            chosen = tuple(sorted(k for k, (s, d) in ref_obs.items() if _is_low_dim(s, d)))
        else:
            if isinstance(state_keys, str):
                raise DatasetError(f"{self.path}: state_keys must be a list of obs keys")
            chosen = tuple(state_keys)
        return cameras, chosen

    def _expected_shapes(
        self, infos: dict[str, _Info | str]
    ) -> tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]], int | None]:
        """Camera (Hpx, Wpx), state column slices and D, from each key's first good demo."""
        good = [info for info in infos.values() if isinstance(info, _Info)]
        cameras: dict[str, tuple[int, int]] = {}
        for cam, key in self.camera_keys.items():
            shapes = [i.obs[key][0] for i in good if key in i.obs and _is_image(*i.obs[key])]
            if shapes:
                cameras[cam] = (shapes[0][1], shapes[0][2])
        slices: dict[str, tuple[int, int]] = {}
        start = 0
        for key in self.state_keys:
            shapes = [i.obs[key][0] for i in good if key in i.obs and _is_low_dim(*i.obs[key])]
            width = (shapes[0][1] if len(shapes[0]) == 2 else 1) if shapes else 0
            slices[key] = (start, start + width)
            start += width
        action_dim = good[0].action_dim if good else None
        return cameras, slices, action_dim

    def _check(self, info: _Info) -> str | None:
        """Why a structurally sound demo does not fit the chosen keys, or None."""
        t = info.length
        if info.action_dim != self._action_dim:
            return (
                f"{self.action_key!r} has {info.action_dim} dims, the first good demo has "
                f"{self._action_dim}"
            )
        for cam, key in self.camera_keys.items():
            if key not in info.obs:
                return f"missing obs key {key!r} (camera {cam!r}); obs keys: {sorted(info.obs)}"
            shape, dtype = info.obs[key]
            if not _is_image(shape, dtype):
                return f"obs {key!r} is {dtype} {shape}, not uint8 (T, Hpx, Wpx, 3) images"
            if shape[0] != t:
                return f"obs {key!r} has {shape[0]} steps but {self.action_key!r} has {t}"
            if (shape[1], shape[2]) != self.cameras[cam]:
                return f"camera {cam!r} is {shape[1]}x{shape[2]}, expected {self.cameras[cam]}"
        for key in self.state_keys:
            if key not in info.obs:
                return f"missing obs key {key!r} (state); obs keys: {sorted(info.obs)}"
            shape, dtype = info.obs[key]
            if not _is_low_dim(shape, dtype):
                return f"obs {key!r} is {dtype} {shape}, not numeric (T,) or (T, k) state"
            if shape[0] != t:
                return f"obs {key!r} has {shape[0]} steps but {self.action_key!r} has {t}"
            start, stop = self.state_slices[key]
            width = shape[1] if len(shape) == 2 else 1
            if width != stop - start:
                return f"obs {key!r} has {width} dims, other demos have {stop - start}"
        return None


def task_from_file_name(path: str | Path) -> str:
    """The instruction a LIBERO file name encodes, the last-resort language source.

    Rule: take the file stem, drop a trailing `_demo`, drop leading all-caps tokens (the
    scene, e.g. `KITCHEN_SCENE1`), and join the rest with spaces:
    `KITCHEN_SCENE1_put_the_black_bowl_on_the_plate_demo.hdf5` -> "put the black bowl on the
    plate". Other names just have underscores turned into spaces (`low_dim.hdf5` -> "low dim").
    """
    tokens = [t for t in Path(path).stem.removesuffix("_demo").split("_") if t]
    while len(tokens) > 1 and tokens[0].upper() == tokens[0] and tokens[0].lower() != tokens[0]:
        tokens.pop(0)
    return " ".join(tokens)


def _text(value: Any) -> str:
    """An HDF5 attribute or dataset element as str (h5py gives str, bytes or numpy scalars)."""
    if isinstance(value, np.ndarray):
        if value.size == 1:
            value = value.reshape(-1)[0]
        else:
            return " ".join(_text(v) for v in value.reshape(-1))
    if isinstance(value, (bytes, np.bytes_)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return str(value)


def _is_image(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return len(shape) == 4 and shape[-1] == 3 and dtype == np.uint8


def _is_low_dim(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    return len(shape) in (1, 2) and (
        np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)
    )


def _camera_names(keys: list[str]) -> dict[str, str]:
    """{camera name: obs key}: suffix `_rgb` / `_image` stripped unless names would collide."""

    def short(key: str) -> str:
        for suffix in _CAMERA_SUFFIXES:
            if key.endswith(suffix) and len(key) > len(suffix):
                return key[: -len(suffix)]
        return key

    shorts = [short(k) for k in keys]
    return {(s if shorts.count(s) == 1 else k): k for s, k in zip(shorts, keys, strict=True)}


def _as_columns(values: np.ndarray) -> np.ndarray:
    """(T,) or (T, k) -> (T, k)."""
    values = np.asarray(values)
    return values.reshape(len(values), -1)


def _step_indices(steps: Any, length: int, where: str) -> np.ndarray:
    """(K,) int64 indices into [0, length), negatives counted from the end."""
    idx = np.asarray(steps)
    if idx.ndim != 1:
        raise ValueError(f"{where}: steps must be a 1-D array of indices, got shape {idx.shape}")
    if idx.size == 0:
        return np.zeros(0, dtype=np.int64)
    if not np.issubdtype(idx.dtype, np.integer):
        raise TypeError(f"{where}: steps must be integers, got dtype {idx.dtype}")
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + length, idx)
    if idx.min() < 0 or idx.max() >= length:
        bad = np.asarray(steps)[(idx < 0) | (idx >= length)][:5].tolist()
        raise IndexError(f"{where}: step indices {bad} out of range for {length} steps")
    return idx
