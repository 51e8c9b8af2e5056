"""Write any EpisodeSource as a LeRobotDataset v3.0 directory that `lerobot` loads unchanged.

The directory is built in a temporary sibling and renamed into place only once every file is
complete (`robofm.atomic.atomic_dir`), so an interrupted conversion never leaves a dataset
that looks complete.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from robofm.atomic import atomic_dir
from robofm.data.episode import DatasetError, Episode, EpisodeSource
from robofm.data.lerobot import ACTION_KEY, CAMERA_PREFIX, STATE_KEY
from robofm.data.video import VideoEncoder
from robofm.progress import progress
from robofm.spaces import SpacesFile, save_spaces

CODEBASE_VERSION = "v3.0"
_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_IMAGE_STAT_FRAMES = 20  # frames sampled per episode for image statistics


@dataclass(frozen=True)
class WriteOptions:
    """How to store a dataset."""

    video: bool = True  # cameras as mp4 (True) or PNG images inside the parquet files
    codec: str = "libx264"  # "libx264" (h264) or "libsvtav1" (AV1)
    crf: int = 23  # encoder quality, lower is better
    gop: int = 2  # keyframe interval in frames; small GOPs make random access cheap
    chunks_size: int = 1000  # files per chunk directory
    data_file_size_mb: float = 100.0  # start a new data parquet beyond this size
    video_file_size_mb: float = 200.0  # start a new mp4 beyond this size
    robot_type: str = "unknown"  # info.json robot_type


def write_lerobot(
    source: EpisodeSource,
    root: str | Path,
    options: WriteOptions = WriteOptions(),
    *,
    overwrite: bool = False,
    skip_bad: bool = False,
) -> dict[str, Any]:
    """Write every episode of `source` to `root` as LeRobotDataset v3.0; returns info.json.

    With `skip_bad`, episodes that fail to load or validate are left out and listed in the
    returned dict under "skipped"; otherwise the first bad episode raises `DatasetError`
    and nothing is written.
    """
    root = Path(root)
    skipped: list[str] = list(getattr(source, "skipped", []))
    with atomic_dir(root, overwrite=overwrite) as tmp:
        writer = _Writer(tmp, source, options)
        for i in progress(range(len(source)), desc=f"write {root.name}", unit="ep"):
            try:
                ep = source.episode(i, images=True)
                ep.validate(f"{source.name}: ")
            except DatasetError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            writer.add(ep)
        if writer.num_episodes == 0:
            raise DatasetError(f"{source.name}: no episodes to write")
        info = writer.finish()
    info["skipped"] = skipped
    return info


class _Writer:
    def __init__(self, root: Path, source: EpisodeSource, opts: WriteOptions) -> None:
        self.root, self.source, self.opts = root, source, opts
        self.fps = float(source.fps)
        self.cameras = dict(source.cameras)
        self.tasks: dict[str, int] = {}
        self.episode_rows: list[dict[str, Any]] = []
        self.num_episodes = 0
        self.num_frames = 0
        self.features: dict[str, Any] | None = None
        self.data_buf: list[pa.Table] = []
        self.data_loc = [0, 0]  # chunk, file
        self.data_bytes = 0
        self.encoders: dict[str, VideoEncoder] = {}
        self.video_loc = {cam: [0, 0] for cam in self.cameras}

    # --- per episode ---------------------------------------------------------------------

    def add(self, ep: Episode) -> None:
        if self.features is None:
            self.features = self._features(ep)
        task_index = self.tasks.setdefault(ep.task, len(self.tasks))
        t = ep.length
        frame_index = np.arange(t, dtype=np.int64)
        timestamps = (frame_index / self.fps).astype(np.float32)
        columns: dict[str, pa.Array] = {
            STATE_KEY: _fixed_list(ep.states),
            ACTION_KEY: _fixed_list(ep.actions),
            "timestamp": pa.array(timestamps),
            "frame_index": pa.array(frame_index),
            "episode_index": pa.array(np.full(t, self.num_episodes, dtype=np.int64)),
            "index": pa.array(self.num_frames + frame_index),
            "task_index": pa.array(np.full(t, task_index, dtype=np.int64)),
        }
        if not self.opts.video:
            for cam, frames in ep.images.items():
                columns[CAMERA_PREFIX + cam] = _png_column(frames)
        row: dict[str, Any] = {
            "episode_index": self.num_episodes,
            "tasks": [ep.task],
            "length": t,
            "data/chunk_index": self.data_loc[0],
            "data/file_index": self.data_loc[1],
            "dataset_from_index": self.num_frames,
            "dataset_to_index": self.num_frames + t,
        }
        if self.opts.video:
            for cam, frames in ep.images.items():
                row.update(self._add_video(cam, frames))
        stats = {
            STATE_KEY: _stats(ep.states),
            ACTION_KEY: _stats(ep.actions),
            "timestamp": _stats(timestamps[:, None].astype(np.float64)),
        }
        for cam, frames in ep.images.items():
            stats[CAMERA_PREFIX + cam] = _image_stats(frames)
        for key, st in stats.items():
            for name, value in st.items():
                row[f"stats/{key}/{name}"] = value.tolist()
        table = pa.table(columns)
        self.data_buf.append(table)
        self.data_bytes += table.nbytes
        self.episode_rows.append(row)
        self.num_episodes += 1
        self.num_frames += t
        if self.data_bytes > self.opts.data_file_size_mb * 2**20:
            self._flush_data()

    def _add_video(self, cam: str, frames: np.ndarray) -> dict[str, Any]:
        key = CAMERA_PREFIX + cam
        enc = self.encoders.get(cam)
        if enc is None:
            c, f = self.video_loc[cam]
            path = self.root / _video_path(key, c, f)
            h, w = self.cameras[cam]
            enc = VideoEncoder(path, self.fps, w, h, self.opts.codec, self.opts.crf, self.opts.gop)
            self.encoders[cam] = enc
        start = enc.frames_written
        enc.write(frames)
        c, f = self.video_loc[cam]
        out = {
            f"videos/{key}/chunk_index": c,
            f"videos/{key}/file_index": f,
            f"videos/{key}/from_timestamp": start / self.fps,
            f"videos/{key}/to_timestamp": enc.frames_written / self.fps,
        }
        if enc.size_bytes() > self.opts.video_file_size_mb * 2**20:
            enc.close()
            del self.encoders[cam]
            self.video_loc[cam] = _next_loc(c, f, self.opts.chunks_size)
        return out

    def _flush_data(self) -> None:
        if not self.data_buf:
            return
        table = pa.concat_tables(self.data_buf)
        table = table.replace_schema_metadata({"huggingface": json.dumps(self._hf_meta(table))})
        path = self.root / f"data/chunk-{self.data_loc[0]:03d}/file-{self.data_loc[1]:03d}.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path)
        self.data_buf, self.data_bytes = [], 0
        self.data_loc = _next_loc(*self.data_loc, self.opts.chunks_size)

    # --- metadata ------------------------------------------------------------------------

    def _features(self, ep: Episode) -> dict[str, Any]:
        names = getattr(self.source.action_space, "names", None)
        state_names = getattr(getattr(self.source, "state_space", None), "names", None)
        feats: dict[str, Any] = {}
        for cam, (h, w) in self.cameras.items():
            feat: dict[str, Any] = {
                "dtype": "video" if self.opts.video else "image",
                "shape": [h, w, 3],
                "names": ["height", "width", "channels"],
            }
            if self.opts.video:
                feat["info"] = {
                    "video.height": h,
                    "video.width": w,
                    "video.codec": "av1" if "av1" in self.opts.codec else "h264",
                    "video.pix_fmt": "yuv420p",
                    "video.is_depth_map": False,
                    "video.fps": self.fps,
                    "video.channels": 3,
                    "has_audio": False,
                }
            feats[CAMERA_PREFIX + cam] = feat
        feats[STATE_KEY] = {
            "dtype": "float32",
            "shape": [ep.states.shape[1]],
            "names": list(state_names)
            if state_names
            else [f"s{i}" for i in range(ep.states.shape[1])],
        }
        feats[ACTION_KEY] = {
            "dtype": "float32",
            "shape": [ep.actions.shape[1]],
            "names": list(names) if names else [f"a{i}" for i in range(ep.actions.shape[1])],
        }
        feats["timestamp"] = {"dtype": "float32", "shape": [1], "names": None}
        for k in ("frame_index", "episode_index", "index", "task_index"):
            feats[k] = {"dtype": "int64", "shape": [1], "names": None}
        return feats

    def _hf_meta(self, table: pa.Table) -> dict[str, Any]:
        feats: dict[str, Any] = {}
        for field in table.schema:
            if pa.types.is_fixed_size_list(field.type):
                feats[field.name] = {
                    "feature": {"dtype": "float32", "_type": "Value"},
                    "length": field.type.list_size,
                    "_type": "List",
                }
            elif pa.types.is_struct(field.type):
                feats[field.name] = {"_type": "Image"}
            else:
                feats[field.name] = {
                    "dtype": str(field.type).replace("float", "float32")
                    if str(field.type) == "float"
                    else str(field.type),
                    "_type": "Value",
                }
        return {"info": {"features": feats}}

    def finish(self) -> dict[str, Any]:
        self._flush_data()
        for enc in self.encoders.values():
            enc.close()
        assert self.features is not None
        meta = self.root / "meta"
        (meta / "episodes/chunk-000").mkdir(parents=True, exist_ok=True)
        for r in self.episode_rows:
            r["meta/episodes/chunk_index"], r["meta/episodes/file_index"] = 0, 0
        pq.write_table(
            pa.Table.from_pylist(self.episode_rows), meta / "episodes/chunk-000/file-000.parquet"
        )
        _write_tasks(meta / "tasks.parquet", self.tasks)
        stats = _aggregate(
            [
                {k[len("stats/") :]: v for k, v in r.items() if k.startswith("stats/")}
                for r in self.episode_rows
            ]
        )
        (meta / "stats.json").write_text(json.dumps(stats, indent=4))
        info = {
            "codebase_version": CODEBASE_VERSION,
            "robot_type": self.opts.robot_type,
            "total_episodes": self.num_episodes,
            "total_frames": self.num_frames,
            "total_tasks": len(self.tasks),
            "chunks_size": self.opts.chunks_size,
            "data_files_size_in_mb": self.opts.data_file_size_mb,
            "video_files_size_in_mb": self.opts.video_file_size_mb,
            "fps": int(self.fps) if float(self.fps).is_integer() else self.fps,
            "splits": {"train": f"0:{self.num_episodes}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
            if self.opts.video
            else None,
            "features": self.features,
        }
        (meta / "info.json").write_text(json.dumps(info, indent=4))
        if self.source.action_space is not None:
            spaces = SpacesFile(
                action=self.source.action_space, state=getattr(self.source, "state_space", None)
            )
            save_spaces(meta / "action_space.json", spaces)
        return info


def _next_loc(chunk: int, file: int, chunks_size: int) -> list[int]:
    file += 1
    if file >= chunks_size:
        return [chunk + 1, 0]
    return [chunk, file]


def _video_path(key: str, chunk: int, file: int) -> str:
    return f"videos/{key}/chunk-{chunk:03d}/file-{file:03d}.mp4"


def _fixed_list(x: np.ndarray) -> pa.Array:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def _png_column(frames: np.ndarray) -> pa.Array:
    blobs = []
    for rgb in frames:
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", compress_level=1)
        blobs.append({"bytes": buf.getvalue(), "path": None})
    return pa.array(blobs, type=pa.struct([("bytes", pa.binary()), ("path", pa.string())]))


def _write_tasks(path: Path, tasks: dict[str, int]) -> None:
    """tasks.parquet with the task string as the pandas index, as lerobot writes it."""
    table = pa.table(
        {
            "task_index": pa.array(list(tasks.values()), pa.int64()),
            "task": pa.array(list(tasks.keys()), pa.string()),
        }
    )
    pandas_meta = {
        "index_columns": ["task"],
        "column_indexes": [
            {
                "name": None,
                "field_name": None,
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": {"encoding": "UTF-8"},
            }
        ],
        "columns": [
            {
                "name": "task_index",
                "field_name": "task_index",
                "pandas_type": "int64",
                "numpy_type": "int64",
                "metadata": None,
            },
            {
                "name": "task",
                "field_name": "task",
                "pandas_type": "unicode",
                "numpy_type": "object",
                "metadata": None,
            },
        ],
        "attributes": {},
        "creator": {"library": "pyarrow", "version": pa.__version__},
        "pandas_version": "2.2.0",
    }
    pq.write_table(table.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), path)


def _stats(x: np.ndarray) -> dict[str, np.ndarray]:
    """Per-dimension stats of (T, D) values, LeRobot's key names."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    out = {
        "min": x.min(0),
        "max": x.max(0),
        "mean": x.mean(0),
        "std": x.std(0),
        "count": np.array([len(x)]),
    }
    for q in _QUANTILES:
        out[f"q{round(q * 100):02d}"] = np.quantile(x, q, axis=0)
    return out


def _image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel stats in [0, 1] over sampled frames, shaped (3, 1, 1) like LeRobot's."""
    idx = np.linspace(0, len(frames) - 1, min(len(frames), _IMAGE_STAT_FRAMES)).round()
    pixels = frames[idx.astype(int)].reshape(-1, 3).astype(np.float64) / 255.0  # (N, 3)
    st = _stats(pixels)
    return {k: (v if k == "count" else v.reshape(3, 1, 1)) for k, v in st.items()}


def _aggregate(per_episode: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Combine per-episode stats: exact min/max/mean/std, count-weighted mean of quantiles."""
    keys = sorted({k.rsplit("/", 1)[0] for k in per_episode[0]})
    out: dict[str, dict[str, Any]] = {}
    for key in keys:
        counts = np.array([ep[f"{key}/count"][0] for ep in per_episode], dtype=np.float64)
        w = counts / counts.sum()
        shape = np.asarray(per_episode[0][f"{key}/mean"]).shape
        w = w.reshape(-1, *([1] * len(shape)))

        def arr(name: str, key: str = key) -> np.ndarray:
            return np.stack([np.asarray(ep[f"{key}/{name}"], np.float64) for ep in per_episode])

        means, stds = arr("mean"), arr("std")
        mean = (w * means).sum(0)
        var = (w * (stds**2 + (means - mean) ** 2)).sum(0)
        out[key] = {
            "min": arr("min").min(0).tolist(),
            "max": arr("max").max(0).tolist(),
            "mean": mean.tolist(),
            "std": np.sqrt(var).tolist(),
            "count": [int(counts.sum())],
        }
        for q in _QUANTILES:
            name = f"q{round(q * 100):02d}"
            out[key][name] = (w * arr(name)).sum(0).tolist()
    return out
