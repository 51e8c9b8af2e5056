"""RLDS / TFDS (Open X-Embodiment) datasets, read directly: no TensorFlow, no protobuf.

A TFDS dataset version directory holds `dataset_info.json` (splits and shard lengths),
`features.json` (the FeaturesDict schema) and TFRecord shards named by the split's
`filepathTemplate`, by default `{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}`. Each record is
one episode, a `tf.train.Example` whose keys flatten the schema with "/":
`steps/action` holds all T actions concatenated, `steps/observation/image_0` T encoded JPEGs,
`episode_metadata/file_path` one string.

`RLDSSource` exposes a split as an `EpisodeSource`. It indexes record offsets once, reads an
episode with one `pread`, and decodes JPEG/PNG frames with Pillow only when asked. The values
match `tensorflow_datasets` exactly for arrays and strings. Decoded JPEG pixels differ only by
the IDCT: TFDS uses libjpeg's fast integer IDCT, Pillow the accurate one (about 1.5 grey levels
mean absolute difference on the bridge fixture; bit-exact against TF's "INTEGER_ACCURATE").
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import zlib
from collections.abc import Sequence
from math import prod
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from robofm.data.episode import DatasetError, Episode
from robofm.data.tfrecord import (
    FLOAT_DTYPES,
    FeatureSpec,
    RawFeature,
    RecordIndex,
    WireError,
    decode_feature,
    dims,
    index_records,
    parse_example,
    read_record,
    to_objects,
)
from robofm.spaces import ActionSpace

STEPS = "steps"  # the RLDS key of the per-step Dataset feature
DEFAULT_FPS = 5.0  # Hz; RLDS stores no rate. Bridge V2 is recorded at 5 Hz.
KNOWN_FPS = {  # control rate (Hz) of OXE datasets whose rate is documented by their authors
    "bridge_dataset": 5.0,
    "bridge": 5.0,
    "fractal20220817_data": 3.0,
}
_DEFAULT_TEMPLATE = "{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}"
_INT_DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}


# ---------------------------------------------------------------------------------------------
# features.json


def load_features(path: str | Path) -> dict[str, FeatureSpec]:
    """Parse a TFDS `features.json` into its leaves, keyed by serialized name.

    Supports FeaturesDict nesting, one `Dataset` feature (RLDS `steps`), Tensor, Scalar,
    ClassLabel, Image and Text. Any other feature type raises `DatasetError` naming the
    feature and the file, rather than being misread.
    """
    path = Path(path)
    try:
        root = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot read features ({e})") from None
    out: dict[str, FeatureSpec] = {}
    _walk_feature(root, "", False, out, path)
    return out


def _walk_feature(
    node: Any, key: str, per_step: bool, out: dict[str, FeatureSpec], path: Path
) -> None:
    name = key or "<root>"
    if not isinstance(node, dict):
        raise DatasetError(f"{path}: feature '{name}' is not a JSON object")
    cls = str(node.get("pythonClassName", "")).rsplit(".", 1)[-1]
    if cls == "FeaturesDict" or (not cls and "featuresDict" in node):
        children = node.get("featuresDict", {}).get("features")
        if not isinstance(children, dict):
            raise DatasetError(f"{path}: FeaturesDict '{name}' has no 'features'")
        for child, sub in children.items():
            _walk_feature(sub, f"{key}/{child}" if key else child, per_step, out, path)
    elif cls == "Dataset":
        if per_step or key != STEPS:
            raise DatasetError(
                f"{path}: feature '{name}': nested Dataset features are not supported "
                f"(only the RLDS '{STEPS}' dataset)"
            )
        feature = node.get("sequence", {}).get("feature")
        _walk_feature(feature, key, True, out, path)
    elif cls in ("Tensor", "Scalar"):
        tensor = node.get("tensor", {})
        shape = _shape(tensor, name, path)
        dtype = str(tensor.get("dtype", ""))
        encoding = str(tensor.get("encoding", "none")).lower()
        _check_dtype(dtype, name, path)
        if encoding not in ("none", "bytes", "zlib"):
            raise DatasetError(f"{path}: feature '{name}': unknown tensor encoding '{encoding}'")
        if sum(d is None for d in shape) > (0 if per_step else 1):
            raise DatasetError(f"{path}: feature '{name}': dynamic shape {shape} not supported")
        out[key] = FeatureSpec(key, "tensor", shape, dtype, encoding, per_step)
    elif cls == "ClassLabel":
        out[key] = FeatureSpec(key, "tensor", (), "int64", "none", per_step)
    elif cls == "Text":
        out[key] = FeatureSpec(key, "text", (), "string", "none", per_step)
    elif cls == "Image":
        image = node.get("image", {})
        shape = _shape(image, name, path)
        dtype = str(image.get("dtype", "uint8"))
        fmt = str(image.get("encodingFormat", "")).lower()
        if len(shape) != 3:
            raise DatasetError(f"{path}: feature '{name}': Image shape {shape} is not (H, W, C)")
        # uint16 depth PNGs and the like are not cameras: kept "opaque", never decoded.
        rgb = dtype == "uint8" and shape[2] in (1, 3, 4, None) and fmt in ("jpeg", "png", "")
        out[key] = FeatureSpec(key, "image" if rgb else "opaque", shape, dtype, fmt, per_step)
    else:
        shown = node.get("pythonClassName", "<no pythonClassName>")
        raise DatasetError(f"{path}: feature '{name}' has unsupported type '{shown}'")


def _shape(info: dict, name: str, path: Path) -> tuple[int | None, ...]:
    try:
        listed = info.get("shape", {}).get("dimensions", [])
        return tuple(None if int(d) < 0 else int(d) for d in listed)
    except (TypeError, ValueError, AttributeError):
        raise DatasetError(f"{path}: feature '{name}' has a malformed shape") from None


def _check_dtype(dtype: str, name: str, path: Path) -> None:
    if dtype not in FLOAT_DTYPES | _INT_DTYPES | {"string"}:
        raise DatasetError(f"{path}: feature '{name}' has unsupported dtype '{dtype}'")


def shard_paths(root: Path, info: dict, split: str) -> tuple[list[Path], list[int] | None]:
    """Shard files of `split` in order, with their expected record counts (None if unknown),
    from `dataset_info.json`'s `filepathTemplate` and `shardLengths`."""
    splits = {s.get("name"): s for s in info.get("splits", [])}
    if split not in splits:
        raise DatasetError(f"{root}: no split '{split}'; splits: {sorted(map(str, splits))}")
    entry = splits[split]
    lengths = [int(n) for n in entry.get("shardLengths", [])] or None
    if lengths is None:  # old dataset_info: find the shards on disk
        fmt = info.get("fileFormat", "tfrecord")
        found = sorted(root.glob(f"{info.get('name', '*')}-{split}.{fmt}-*-of-*"))
        if not found:
            raise DatasetError(f"{root}: split '{split}' lists no shards and none are on disk")
        return found, None
    template = entry.get("filepathTemplate") or _DEFAULT_TEMPLATE
    n = len(lengths)
    paths = []
    for i in range(n):
        name = (
            template.replace("{DATASET}", str(info.get("name", root.parent.name)))
            .replace("{SPLIT}", split)
            .replace("{FILEFORMAT}", str(info.get("fileFormat", "tfrecord")))
            .replace("{SHARD_X_OF_Y}", f"{i:05d}-of-{n:05d}")
            .replace("{SHARD_INDEX}", f"{i:05d}")
            .replace("{NUM_SHARDS}", f"{n:05d}")
        )
        paths.append(root / name)
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DatasetError(f"{root}: split '{split}': missing shard file(s) {missing[:3]}")
    return paths, lengths


def decode_image(blob: bytes, hw: tuple[int | None, int | None] = (None, None)) -> np.ndarray:
    """(H, W, 3) uint8 RGB from encoded JPEG/PNG bytes; grey or RGBA images are converted.

    Raises `WireError` when the bytes do not decode or the size differs from `hw`.
    """
    try:
        with Image.open(io.BytesIO(blob)) as img:
            rgb = img if img.mode == "RGB" else img.convert("RGB")
            arr = np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, SyntaxError) as e:
        raise WireError(f"cannot decode image ({e})") from None
    for got, want in zip(arr.shape[:2], hw, strict=True):
        if want is not None and got != want:
            raise WireError(f"image is {arr.shape[:2]}, expected {hw}")
    return arr


# ---------------------------------------------------------------------------------------------
# The episode source


class RLDSSource:
    """One split of an RLDS/TFDS dataset as an `EpisodeSource` (episode i = i-th record).

    Args:
        path: the dataset version directory holding `dataset_info.json` and `features.json`
            (or its parent, in which case the highest version directory is used).
        split: split name in `dataset_info.json` ("train", "val", ...).
        camera_keys: image features to expose as cameras, named relative to `steps/observation`
            (e.g. "image_0"); default every Image feature under `steps/observation`.
        state_key: numeric step feature(s) concatenated into `Episode.states` (S,), named
            relative to `steps` or `steps/observation`; default "state" if present, else none.
            Pass `()` for no state.
        action_key: numeric step feature(s) concatenated into `Episode.actions` (D,).
        instruction_key: Text feature giving `Episode.task` (step-level, else episode-level).
        fps: control rate in Hz. RLDS does not store it; default `KNOWN_FPS[name]`, else
            `DEFAULT_FPS` (5 Hz), and `fps_is_default` is then True.
        action_space: the dataset's `ActionSpace`, if known; its dim must match the actions.
        skip_bad: drop corrupt records and malformed episodes, describing each in `skipped`,
            instead of raising. This validates every record (CRC + structure) when opened,
            one read of the whole split; otherwise only the 12-byte record headers are read
            up front and each record is verified when it is read.

    Per-step fields other than actions, states, instruction and images (reward, discount,
    is_first, is_last, is_terminal, language_embedding, ...) go to `Episode.extras`, keyed
    relative to `steps`; episode-level fields (`episode_metadata/...`) to `Episode.meta`.
    File descriptors are opened lazily per process (reopened after fork), never shared.
    """

    def __init__(
        self,
        path: str | Path,
        split: str = "train",
        *,
        camera_keys: Sequence[str] | None = None,
        state_key: str | Sequence[str] | None = None,
        action_key: str | Sequence[str] = "action",
        instruction_key: str | None = "language_instruction",
        fps: float | None = None,
        action_space: ActionSpace | None = None,
        skip_bad: bool = False,
    ) -> None:
        self.root = _version_dir(Path(path))
        self.split = split
        try:
            self.info = json.loads((self.root / "dataset_info.json").read_text())
        except (OSError, ValueError) as e:
            raise DatasetError(f"{self.root / 'dataset_info.json'}: cannot read ({e})") from None
        self.features = load_features(self.root / "features.json")
        self.name = str(self.info.get("name") or self.root.parent.name)
        self.fps_is_default = fps is None and self.name not in KNOWN_FPS
        self.fps = float(fps if fps is not None else KNOWN_FPS.get(self.name, DEFAULT_FPS))
        self.skip_bad = skip_bad
        self.skipped: list[str] = []
        where = f"{self.root / 'features.json'}"

        self.action_keys = self._numeric_keys(action_key, "action", where)
        if state_key is None:
            state_key = "state" if f"{STEPS}/observation/state" in self.features else ()
        self.state_keys = self._numeric_keys(state_key, "state", where)
        self.instruction_key = self._instruction(instruction_key, where)
        images = {
            _camera_name(k): k
            for k, s in sorted(self.features.items())
            if s.per_step and s.kind == "image" and k.startswith(f"{STEPS}/observation/")
        }
        if camera_keys is not None:
            chosen = {}
            for cam in camera_keys:
                key = self._step_key(cam)
                if key is None or self.features[key].kind != "image":
                    raise DatasetError(
                        f"{where}: no RGB image feature '{cam}'; have {sorted(images)}"
                    )
                chosen[_camera_name(key)] = key
            images = chosen
        self._camera_keys = images
        self.cameras = {c: _hw(self.features[k]) for c, k in images.items()}
        used = {*self.action_keys, *self.state_keys, self.instruction_key}
        self._extra_keys = [
            k
            for k, s in self.features.items()
            if s.per_step and s.kind not in ("image", "opaque") and k not in used
        ]
        self.action_dim = sum(prod(dims(self.features[k])) for k in self.action_keys)
        self.action_space = action_space
        if action_space is not None and action_space.dim != self.action_dim:
            raise DatasetError(
                f"{where}: action_space has {action_space.dim} dims, actions have "
                f"{self.action_dim} ({', '.join(self.action_keys)})"
            )

        self._paths, lengths = shard_paths(self.root, self.info, split)
        self._records: list[RecordIndex] = []
        for s, shard in enumerate(self._paths):
            errors: list[str] | None = self.skipped if skip_bad else None
            n_bad = len(self.skipped)
            recs = index_records(str(shard), s, on_error=errors)
            if lengths is not None and len(recs) != lengths[s] and len(self.skipped) == n_bad:
                msg = f"{shard}: holds {len(recs)} records, dataset_info.json says {lengths[s]}"
                if not skip_bad:
                    raise DatasetError(msg)
                self.skipped.append(msg)
            self._records.extend(recs)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()
        self._cache: tuple[RecordIndex, dict[str, RawFeature]] | None = None
        if skip_bad:
            good = []
            for rec in self._records:
                try:
                    self._steps(rec, self._parsed(rec))
                except DatasetError as e:
                    self.skipped.append(str(e))
                else:
                    good.append(rec)
            self._records = good
            self._cache = None
        if not self._records:
            raise DatasetError(f"{self.root}: split '{split}' has no usable episodes")
        for cam, (h, w) in self.cameras.items():  # unknown sizes: read them from episode 0
            if h is None or w is None:
                frame = self.frames(0, cam, np.array([0]))[0]
                self.cameras[cam] = (frame.shape[0], frame.shape[1])

    def __len__(self) -> int:
        """Number of episodes (records) in the split, after any skipped."""
        return len(self._records)

    def episode(self, i: int, *, images: bool = False) -> Episode:
        """Episode `i`: actions (T, D) float32, states (T, S) float32, timestamps (T,) s at
        `fps`, `task` = the first step's instruction (per-step strings in
        `extras["language_instruction"]` if they vary), frames (T, H, W, 3) uint8 if `images`.
        """
        rec = self._record(i)
        raw = self._parsed(rec)
        steps = self._steps(rec, raw)
        t = steps.pop("__T__")
        actions = _concat_steps([steps.pop(k) for k in self.action_keys], t)
        states = _concat_steps([steps.pop(k) for k in self.state_keys], t)
        task = ""
        if self.instruction_key is not None:
            spec = self.features[self.instruction_key]
            texts = steps.pop(self.instruction_key)
            if spec.per_step:
                texts = to_objects([_text(v) for v in texts])  # (T,) str
                task = texts[0]
                if any(s != task for s in texts):
                    steps[_step_name(self.instruction_key)] = texts
            else:
                task = _text(texts)
        extras = {_step_name(k): v for k, v in steps.items()}
        meta: dict[str, Any] = {
            "dataset": self.name,
            "split": self.split,
            "file": str(self._paths[rec.shard]),
            "record": rec.record,
        }
        for key, spec in self.features.items():
            if (
                not spec.per_step
                and key != self.instruction_key
                and spec.kind in ("tensor", "text")
            ):
                value = self._decode(rec, spec, raw)
                meta[key] = value.item() if isinstance(value, np.generic) else value
        frames = {}
        if images:
            for cam in self.cameras:
                frames[cam] = self.frames(i, cam, np.arange(t))
        ep = Episode(
            index=i,
            task=task,
            actions=actions,
            states=states,
            timestamps=np.arange(t, dtype=np.float64) / self.fps,
            images=frames,
            extras=extras,
            meta=meta,
        )
        ep.validate(f"{self._paths[rec.shard]}: record {rec.record}: ")
        return ep

    def frames(self, i: int, cam: str, steps: np.ndarray) -> np.ndarray:
        """(K, H, W, 3) uint8 RGB frames of camera `cam` at the K step indices `steps` of
        episode `i`, decoded from the stored JPEG/PNG bytes."""
        if cam not in self._camera_keys:
            raise DatasetError(f"{self.root}: no camera '{cam}'; cameras: {sorted(self.cameras)}")
        rec = self._record(i)
        spec = self.features[self._camera_keys[cam]]
        blobs = self._decode(rec, spec, self._parsed(rec))
        idx = np.asarray(steps, dtype=np.int64).reshape(-1)
        n = len(blobs)
        if idx.size and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"episode {i} camera '{cam}' has {n} steps, asked for {idx.tolist()}")
        h, w = self.cameras.get(cam, _hw(spec))
        out = []
        for s in idx:
            try:
                out.append(decode_image(blobs[s], (h, w)))
            except WireError as e:
                at = f"{self._paths[rec.shard]}: record {rec.record}"
                raise DatasetError(f"{at}: camera '{cam}' step {int(s)}: {e}") from None
        if not out:
            return np.zeros((0, h or 0, w or 0, 3), dtype=np.uint8)
        return np.stack(out)  # (K, H, W, 3)

    def close(self) -> None:
        """Close this process's file descriptors (they reopen on the next read)."""
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: os may be gone
            self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fds"] = {}
        state["_cache"] = None
        return state

    # --- internals ---------------------------------------------------------------------------

    def _record(self, i: int) -> RecordIndex:
        if not -len(self._records) <= i < len(self._records):
            raise IndexError(f"episode {i} out of range for {len(self._records)} episodes")
        return self._records[i]

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():  # forked: never use the parent's descriptors
            for fd in self._fds.values():
                os.close(fd)  # closes this process's copy only
            self._fds = {}
            self._pid = os.getpid()
            self._cache = None
        fd = self._fds.get(shard)
        if fd is None:
            if len(self._fds) >= 16:  # bound open files on datasets with 1000s of shards
                old = next(iter(self._fds))
                os.close(self._fds.pop(old))
            fd = os.open(self._paths[shard], os.O_RDONLY | getattr(os, "O_BINARY", 0))
            self._fds[shard] = fd
        return fd

    def _parsed(self, rec: RecordIndex) -> dict[str, RawFeature]:
        """The located features of one record; the last record read is kept (raw bytes only)."""
        if self._cache is not None and self._cache[0] == rec and self._pid == os.getpid():
            return self._cache[1]
        path = self._paths[rec.shard]
        data = read_record(self._fd(rec.shard), str(path), rec)
        try:
            parsed = parse_example(data)
        except (WireError, UnicodeDecodeError) as e:
            raise DatasetError(f"{path}: record {rec.record}: bad tf.train.Example ({e})") from None
        self._cache = (rec, parsed)
        return parsed

    def _decode(self, rec: RecordIndex, spec: FeatureSpec, raw: dict[str, RawFeature]) -> Any:
        try:
            return decode_feature(spec, raw.get(spec.key))
        except (WireError, UnicodeDecodeError, ValueError, zlib.error) as e:
            at = f"{self._paths[rec.shard]}: record {rec.record}"
            raise DatasetError(f"{at}: feature '{spec.key}': {e}") from None

    def _steps(self, rec: RecordIndex, raw: dict[str, RawFeature]) -> dict[str, Any]:
        """Decoded low-dim step fields (and the episode-level instruction), checked to agree on
        T (stored under "__T__"); image features are only counted."""
        at = f"{self._paths[rec.shard]}: record {rec.record}"
        out: dict[str, Any] = {}
        keys = [*self.action_keys, *self.state_keys, *self._extra_keys]
        if self.instruction_key is not None and self.instruction_key not in keys:
            keys.append(self.instruction_key)
        for key in keys:
            out[key] = self._decode(rec, self.features[key], raw)
        t = len(out[self.action_keys[0]])
        if t == 0:
            raise DatasetError(f"{at}: episode has zero steps")
        lengths = {k: len(v) for k, v in out.items() if self.features[k].per_step}
        for key in self._camera_keys.values():
            feature = raw.get(key)
            lengths[key] = len(self._decode(rec, self.features[key], raw)) if feature else 0
        bad = {k: n for k, n in lengths.items() if n != t}
        if bad:
            raise DatasetError(f"{at}: step fields disagree on length: {t} actions but {bad}")
        out["__T__"] = t
        return out

    def _step_key(self, name: str) -> str | None:
        for key in (f"{STEPS}/{name}", f"{STEPS}/observation/{name}", name):
            if key in self.features and self.features[key].per_step:
                return key
        return None

    def _numeric_keys(self, names: str | Sequence[str], role: str, where: str) -> list[str]:
        names = [names] if isinstance(names, str) else list(names)
        keys = []
        for name in names:
            key = self._step_key(name)
            if key is None:
                under = sorted(k for k in self.features if k.startswith(f"{STEPS}/{name}/"))
                hint = f"; it is a dict, name its leaves: {under}" if under else ""
                raise DatasetError(f"{where}: no step feature '{name}' for {role}{hint}")
            spec = self.features[key]
            if spec.kind != "tensor" or spec.dtype == "string" or None in spec.shape:
                raise DatasetError(
                    f"{where}: {role} feature '{key}' must be a fixed-shape numeric tensor"
                )
            keys.append(key)
        if role == "action" and not keys:
            raise DatasetError(f"{where}: no action feature given")
        return keys

    def _instruction(self, name: str | None, where: str) -> str | None:
        if name is None:
            return None
        key = self._step_key(name) or (name if name in self.features else None)
        if key is None:
            return None  # no instruction in this dataset: Episode.task is ""
        spec = self.features[key]
        if spec.kind != "text" and (spec.dtype != "string" or spec.shape != ()):
            raise DatasetError(f"{where}: instruction feature '{key}' is not Text")
        return key


def _version_dir(path: Path) -> Path:
    if (path / "dataset_info.json").is_file():
        return path
    versions = sorted(
        (p for p in path.glob("*") if (p / "dataset_info.json").is_file()),
        key=lambda p: tuple(int(x) if x.isdigit() else -1 for x in p.name.split(".")),
    )
    if not versions:
        raise DatasetError(f"{path}: no dataset_info.json here or in a version subdirectory")
    return versions[-1]


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _camera_name(key: str) -> str:
    for prefix in (f"{STEPS}/observation/", f"{STEPS}/"):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return key


def _step_name(key: str) -> str:
    return key[len(STEPS) + 1 :] if key.startswith(f"{STEPS}/") else key


def _hw(spec: FeatureSpec) -> tuple[Any, Any]:
    return spec.shape[0], spec.shape[1]


def _concat_steps(parts: list[np.ndarray], t: int) -> np.ndarray:
    """(T, sum of flattened feature sizes) float32 from step arrays (T, ...)."""
    if not parts:
        return np.zeros((t, 0), dtype=np.float32)
    flat = [p.reshape(t, -1).astype(np.float32, copy=False) for p in parts]
    return flat[0] if len(flat) == 1 else np.concatenate(flat, axis=1)  # (T, D)
