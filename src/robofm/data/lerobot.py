"""LeRobotDataset: read v3.0 and v2.0/v2.1, write v3.0 (robofm's native format).

Layout (v3.0, as the `lerobot` library writes it)::

    meta/info.json                     fps, features, path templates, totals
    meta/stats.json                    per-feature min/max/mean/std/count/q01..q99
    meta/tasks.parquet                 task string (pandas index) -> task_index
    meta/episodes/chunk-XXX/file-YYY.parquet   one row per episode: length, tasks, data and
                                       video file indices, video from/to timestamps, stats
    data/chunk-XXX/file-YYY.parquet    one row per frame: state, action, timestamp, indices
    videos/<key>/chunk-XXX/file-YYY.mp4  episodes concatenated; episode frame t is shown at
                                       from_timestamp + timestamp[t]

v2.x keeps one parquet and one mp4 per episode and JSON-lines metadata. Camera features
(`dtype` "video" or "image") named `observation.images.<cam>` appear as camera `<cam>`.
robofm also writes `meta/action_space.json` (the ActionSpace contract); lerobot ignores it.
"""

from __future__ import annotations

import io
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from robofm.data.episode import DatasetError, Episode
from robofm.data.video import DecoderCache
from robofm.errors import SpaceError
from robofm.spaces import ActionSpace, StateSpace, load_spaces

STATE_KEY = "observation.state"
ACTION_KEY = "action"
CAMERA_PREFIX = "observation.images."
_INDEX_COLUMNS = ("timestamp", "frame_index", "episode_index", "index", "task_index")


class LeRobotSource:
    """An `EpisodeSource` over a LeRobotDataset directory (v3.0, v2.1 or v2.0).

    Low-dimensional columns (state, action, timestamps, scalar extras) are loaded at open time
    (small); camera frames are decoded on demand with seeking. `skip_bad` drops episodes whose
    frames, files or metadata are inconsistent and lists them in `skipped`.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        skip_bad: bool = False,
        tolerance_s: float = 1e-4,
        state_key: str = STATE_KEY,
        action_key: str = ACTION_KEY,
    ) -> None:
        self.root = Path(root)
        self.name = self.root.name
        self.tolerance_s = tolerance_s  # max |frame time - requested time| when decoding, s
        self.skipped: list[str] = []
        self._skip_bad = skip_bad
        info_path = self.root / "meta" / "info.json"
        try:
            self.info = json.loads(info_path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise DatasetError(f"{info_path}: cannot read dataset info ({e})") from e
        self.version = str(self.info.get("codebase_version", ""))
        if self.version not in ("v3.0", "v2.1", "v2.0"):
            raise DatasetError(
                f"{info_path}: codebase_version {self.version!r} is not supported "
                "(v3.0, v2.1, v2.0)"
            )
        self.fps = float(self.info["fps"])
        self.features: dict[str, Any] = self.info["features"]
        for key in (action_key,):
            if key not in self.features:
                raise DatasetError(
                    f"{info_path}: no feature {key!r}; features: {sorted(self.features)}"
                )
        self.state_key, self.action_key = state_key, action_key
        self.camera_keys = {
            _camera_name(k): k for k, f in self.features.items() if f["dtype"] in ("video", "image")
        }
        self.cameras = {cam: _image_hw(self.features[k]) for cam, k in self.camera_keys.items()}
        self.action_space, self.state_space = self._load_spaces()
        self._tasks = self._load_tasks()
        self._decoders = DecoderCache()
        self._image_cache: OrderedDict[tuple[str, int], pa.Table] = OrderedDict()
        self._image_pid = os.getpid()
        self._load_episodes()

    # --- metadata ------------------------------------------------------------------------

    def _load_spaces(self) -> tuple[ActionSpace | None, StateSpace | None]:
        path = self.root / "meta" / "action_space.json"
        if not path.exists():
            return None, None
        try:
            spaces = load_spaces(path)
            return spaces.action, spaces.state
        except SpaceError as e:
            raise DatasetError(str(e)) from e

    def _load_tasks(self) -> dict[int, str]:
        meta = self.root / "meta"
        if self.version == "v3.0":
            path = meta / "tasks.parquet"
            table = _read_parquet(path)
            if "task_index" not in table.column_names:
                raise DatasetError(f"{path}: missing column 'task_index'")
            names = table.column("task" if "task" in table.column_names else "__index_level_0__")
            return dict(zip(table.column("task_index").to_pylist(), names.to_pylist(), strict=True))
        rows = _read_jsonl(meta / "tasks.jsonl")
        return {int(r["task_index"]): str(r["task"]) for r in rows}

    def _episode_rows(self) -> list[dict[str, Any]]:
        meta = self.root / "meta"
        if self.version == "v3.0":
            files = sorted((meta / "episodes").glob("chunk-*/file-*.parquet"))
            if not files:
                raise DatasetError(f"{meta / 'episodes'}: no episode metadata files")
            cols = None
            rows: list[dict[str, Any]] = []
            for f in files:
                table = _read_parquet(f)
                cols = [c for c in table.column_names if not c.startswith("stats/")]
                rows += table.select(cols).to_pylist()
            return sorted(rows, key=lambda r: r["episode_index"])
        return sorted(_read_jsonl(meta / "episodes.jsonl"), key=lambda r: r["episode_index"])

    def _data_files(self, rows: list[dict[str, Any]]) -> list[Path]:
        if self.version == "v3.0":
            pairs = sorted({(r["data/chunk_index"], r["data/file_index"]) for r in rows})
            return [
                self.root / self.info["data_path"].format(chunk_index=c, file_index=f)
                for c, f in pairs
            ]
        chunks = self.info.get("chunks_size", 1000)
        return [
            self.root
            / self.info["data_path"].format(
                episode_chunk=r["episode_index"] // chunks, episode_index=r["episode_index"]
            )
            for r in rows
        ]

    def _load_episodes(self) -> None:
        rows = self._episode_rows()
        low_dim = [
            k for k, f in self.features.items() if f["dtype"] not in ("video", "image", "string")
        ]
        columns: dict[str, list[np.ndarray]] = {k: [] for k in low_dim}
        self._image_rows: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # see frames()
        file_ids, row_ids = [], []
        self._data_paths = self._data_files(rows)
        for fid, path in enumerate(self._data_paths):
            if not path.exists():
                raise DatasetError(f"{path}: data file is missing")
            table = _read_parquet(path, columns=[k for k in low_dim])
            for k in low_dim:
                columns[k].append(_column_array(table, k, path))
            file_ids.append(np.full(table.num_rows, fid, dtype=np.int32))
            row_ids.append(np.arange(table.num_rows, dtype=np.int64))
        data = {k: np.concatenate(v) for k, v in columns.items()}
        file_id, row_id = np.concatenate(file_ids), np.concatenate(row_ids)
        order = np.lexsort((data["frame_index"], data["episode_index"]))
        data = {k: v[order] for k, v in data.items()}
        file_id, row_id = file_id[order], row_id[order]
        ep_ids, starts, counts = np.unique(
            data["episode_index"], return_index=True, return_counts=True
        )
        where = {int(e): (int(s), int(c)) for e, s, c in zip(ep_ids, starts, counts, strict=True)}
        self._data = data
        self._file_id, self._row_id = file_id, row_id
        self._episodes: list[dict[str, Any]] = []
        for r in rows:
            try:
                self._episodes.append(self._check_episode(r, where))
            except DatasetError as e:
                if not self._skip_bad:
                    raise
                self.skipped.append(str(e))
        if not self._episodes:
            raise DatasetError(f"{self.root}: no usable episodes")

    def _check_episode(self, r: dict[str, Any], where: dict[int, tuple[int, int]]) -> dict:
        ep = int(r["episode_index"])
        at = f"{self.root}: episode {ep}"
        if ep not in where:
            raise DatasetError(f"{at}: no frames in the data files")
        start, count = where[ep]
        if int(r["length"]) != count:
            raise DatasetError(f"{at}: metadata says {r['length']} frames, data files hold {count}")
        if count == 0:
            raise DatasetError(f"{at}: has zero steps")
        entry = {"episode_index": ep, "start": start, "length": count, "videos": {}}
        tasks = r.get("tasks") or []
        entry["tasks"] = list(tasks) if not isinstance(tasks, str) else [tasks]
        for cam, key in self.camera_keys.items():
            if self.features[key]["dtype"] != "video":
                continue
            if self.version == "v3.0":
                path = self.root / self.info["video_path"].format(
                    video_key=key,
                    chunk_index=r[f"videos/{key}/chunk_index"],
                    file_index=r[f"videos/{key}/file_index"],
                )
                offset = float(r[f"videos/{key}/from_timestamp"])
            else:
                chunks = self.info.get("chunks_size", 1000)
                path = self.root / self.info["video_path"].format(
                    episode_chunk=ep // chunks, video_key=key, episode_index=ep
                )
                offset = 0.0
            if not path.exists():
                raise DatasetError(f"{at}: video file for camera '{cam}' is missing: {path}")
            entry["videos"][cam] = (path, offset)
        return entry

    # --- EpisodeSource ---------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._episodes)

    def _slice(self, i: int) -> slice:
        e = self._episodes[i]
        return slice(e["start"], e["start"] + e["length"])

    def episode(self, i: int, *, images: bool = False) -> Episode:
        """Episode `i` (position among usable episodes); frames decoded when `images`."""
        e, s = self._episodes[i], self._slice(i)
        d = self._data
        task_ids = d["task_index"][s] if "task_index" in d else None
        task = self._tasks.get(int(task_ids[0]), "") if task_ids is not None else ""
        if not task and e["tasks"]:
            task = e["tasks"][0]
        length = e["length"]
        states = d[self.state_key][s] if self.state_key in d else np.zeros((length, 0))
        extras = {
            k: v[s]
            for k, v in d.items()
            if k not in (self.state_key, self.action_key, *_INDEX_COLUMNS)
        }
        if task_ids is not None and len(np.unique(task_ids)) > 1:
            extras["task"] = np.array([self._tasks.get(int(t), "") for t in task_ids], object)
        ep = Episode(
            index=e["episode_index"],
            task=task,
            actions=d[self.action_key][s].astype(np.float32).reshape(length, -1),
            states=states.astype(np.float32).reshape(length, -1),
            timestamps=d["timestamp"][s].astype(np.float64).reshape(length),
            extras=extras,
            meta={
                "source": str(self.root),
                "format": f"lerobot {self.version}",
                "robot": self.info.get("robot_type"),
            },
        )
        if images:
            steps = np.arange(length)
            ep.images = {cam: self.frames(i, cam, steps) for cam in self.cameras}
        return ep

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        """(K, Hpx, Wpx, 3) uint8 frames of camera `cam` at step indices of episode `i`."""
        e = self._episodes[i]
        steps = np.asarray(steps, dtype=np.int64)
        if cam not in self.camera_keys:
            raise DatasetError(f"{self.root}: no camera {cam!r}; cameras: {sorted(self.cameras)}")
        rows = e["start"] + steps
        if cam in e["videos"]:
            path, offset = e["videos"][cam]
            times = offset + self._data["timestamp"][rows].astype(np.float64)
            try:
                return self._decoders.get(path).read(times, self.tolerance_s)
            except DatasetError as err:
                raise DatasetError(f"episode {e['episode_index']}, camera '{cam}': {err}") from err
        return self._image_frames(cam, rows)

    def _image_frames(self, cam: str, rows: np.ndarray) -> np.ndarray:
        """Frames stored as encoded images inside the data parquet files."""
        key = self.camera_keys[cam]
        out = []
        for r in rows:
            fid, local = int(self._file_id[r]), int(self._row_id[r])
            table = self._image_table(key, fid)
            cell = table.column(0)[local].as_py()
            data = cell["bytes"] if isinstance(cell, dict) else cell
            if data is None and isinstance(cell, dict) and cell.get("path"):
                data = (self.root / cell["path"]).read_bytes()
            out.append(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
        return np.stack(out)

    def _image_table(self, key: str, fid: int) -> pa.Table:
        if self._image_pid != os.getpid():
            self._image_cache = OrderedDict()
            self._image_pid = os.getpid()
        cached = self._image_cache.pop((key, fid), None)
        if cached is None:
            cached = _read_parquet(self._data_paths[fid], columns=[key])
        self._image_cache[(key, fid)] = cached
        while len(self._image_cache) > 2:
            self._image_cache.popitem(last=False)
        return cached

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_image_cache"] = OrderedDict()
        return state


# --- helpers ---------------------------------------------------------------------------------


def _camera_name(key: str) -> str:
    return key[len(CAMERA_PREFIX) :] if key.startswith(CAMERA_PREFIX) else key


def _image_hw(feature: dict[str, Any]) -> tuple[int, int]:
    shape, names = feature["shape"], feature.get("names") or []
    if names and names[0] in ("channel", "channels"):
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError as e:
        raise DatasetError(f"{path}: file is missing") from e
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet ({e})") from e


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e})") from e
    rows = []
    for n, line in enumerate(lines, 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DatasetError(f"{path}: line {n} is not JSON ({e.msg})") from e
    return rows


def _column_array(table: pa.Table, key: str, path: Path) -> np.ndarray:
    """A parquet column as numpy: (N,) for scalars, (N, k) for fixed/variable lists."""
    if key not in table.column_names:
        raise DatasetError(f"{path}: missing column {key!r}")
    col = table.column(key).combine_chunks()
    if pa.types.is_fixed_size_list(col.type):
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), col.type.list_size)
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        lengths = set(col.value_lengths().to_pylist())
        if len(lengths) != 1:
            raise DatasetError(f"{path}: column {key!r} has rows of different lengths {lengths}")
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), lengths.pop())
    return col.to_numpy(zero_copy_only=False)
