"""RLDS reader: the bridge fixture against what tensorflow_datasets reads (golden JSON made by
tests/data/golden/make_bridge_reference.py), corruption handling, fork safety, wire format."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from robofm.data.episode import DatasetError, EpisodeSource
from robofm.data.rlds import RLDSSource
from robofm.data.tfrecord import (
    RawFeature,
    crc32c,
    crc32c_python,
    decode_varints,
    masked_crc32c,
    parse_example,
)

GOLDEN = Path(__file__).parent / "golden" / "bridge_tfds_reference.json"
CAMERAS = ("image_0", "image_1", "image_2", "image_3")
SHARD = "bridge_dataset-{}.tfrecord-00000-of-00001"


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture
def bridge(fixtures_dir: Path) -> Path:
    return fixtures_dir / "rlds" / "bridge_dataset" / "1.0.0"


@pytest.fixture
def bridge_copy(bridge: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bridge_dataset" / "1.0.0"
    shutil.copytree(bridge, dst)
    for f in dst.iterdir():
        f.chmod(0o644)  # the fixture files are read-only
    return dst


def _sha(x: np.ndarray, dtype: str) -> str:
    return hashlib.sha256(np.ascontiguousarray(x, dtype=dtype).tobytes()).hexdigest()


def _record_spans(path: Path) -> list[tuple[int, int]]:
    """(header offset, data length) of every record, parsed here independently of the reader."""
    blob = path.read_bytes()
    spans, pos = [], 0
    while pos < len(blob):
        (n,) = struct.unpack_from("<Q", blob, pos)
        spans.append((pos, n))
        pos += 12 + n + 4
    return spans


# --- the bridge fixture vs tensorflow_datasets -----------------------------------------------


@pytest.mark.parametrize("split", ["train", "val"])
def test_bridge_layout(bridge: Path, golden: dict, split: str) -> None:
    src = RLDSSource(bridge, split)
    assert isinstance(src, EpisodeSource)
    assert len(src) == len(golden["splits"][split]) == 25
    assert src.name == "bridge_dataset" and src.fps == 5.0 and src.skipped == []
    assert src.cameras == {cam: (64, 64) for cam in CAMERAS}
    assert src.action_space is None
    for i, ref in enumerate(golden["splits"][split]):
        ep = src.episode(i)
        assert ep.index == i and ep.length == ref["length"] == 10
        assert ep.images == {}
        np.testing.assert_allclose(ep.timestamps, np.arange(10) / 5.0)


@pytest.mark.parametrize("split", ["train", "val"])
def test_bridge_arrays_match_tfds(bridge: Path, golden: dict, split: str) -> None:
    src = RLDSSource(bridge, split)
    for i, ref in enumerate(golden["splits"][split]):
        ep = src.episode(i)
        assert ep.actions.dtype == np.float32 and ep.actions.shape == (10, 7)
        assert ep.states.dtype == np.float32 and ep.states.shape == (10, 7)
        assert _sha(ep.actions, "<f4") == ref["actions_sha256"], f"episode {i} actions"
        assert _sha(ep.states, "<f4") == ref["states_sha256"], f"episode {i} states"
        assert np.abs(ep.actions[0] - np.array(ref["action_first"], np.float32)).max() == 0
        assert np.abs(ep.states[0] - np.array(ref["state_first"], np.float32)).max() == 0
        assert ep.task == ref["instructions"][0]
        assert len(set(ref["instructions"])) == 1  # constant here: no per-step copy kept
        assert "language_instruction" not in ep.extras
        assert ep.extras["language_embedding"].shape == (10, 512)
        assert _sha(ep.extras["language_embedding"], "<f4") == ref["language_embedding_sha256"]
        for key in ("reward", "discount", "is_first", "is_last", "is_terminal"):
            assert ep.extras[key].tolist() == ref[key], f"episode {i} {key}"
        assert ep.extras["is_first"].dtype == bool and ep.extras["reward"].dtype == np.float32
        for key, value in ref["episode_metadata"].items():
            assert ep.meta[f"episode_metadata/{key}"] == value
        assert ep.meta["record"] == i and ep.meta["split"] == split


def test_bridge_images_match_tfds(bridge: Path, golden: dict) -> None:
    src = RLDSSource(bridge, "train")
    worst = 0.0
    for i, ref in enumerate(golden["splits"]["train"]):
        ep = src.episode(i, images=True)
        assert sorted(ep.images) == list(CAMERAS)
        for cam, frames in ep.images.items():
            assert frames.shape == (10, 64, 64, 3) and frames.dtype == np.uint8
            # Bit-exact vs TF's decode_jpeg(dct_method="INTEGER_ACCURATE"), Pillow's IDCT.
            assert _sha(frames, "u1") == ref["image_sha256_accurate_idct"][cam], (i, cam)
            # TFDS's default (fast IDCT) decode differs by about one grey level.
            means = frames.reshape(10, -1).mean(axis=1)
            worst = max(worst, float(np.abs(means - ref["image_frame_means"][cam]).max()))
        assert ep.images["image_3"].max() == 0  # has_image_3 is False: black placeholders
    assert worst < 1.5


def test_frames_agree_with_episode(bridge: Path) -> None:
    src = RLDSSource(bridge, "val", camera_keys=["image_2", "observation/image_0"])
    assert list(src.cameras) == ["image_2", "image_0"]
    ep = src.episode(7, images=True)
    assert sorted(ep.images) == ["image_0", "image_2"]
    steps = np.array([9, 0, 3, 3])
    for cam in src.cameras:
        np.testing.assert_array_equal(src.frames(7, cam, steps), ep.images[cam][steps])
    np.testing.assert_array_equal(
        src.frames(7, "image_0", np.array([-1]))[0], ep.images["image_0"][9]
    )
    assert src.frames(7, "image_0", np.array([], dtype=int)).shape == (0, 64, 64, 3)
    other = src.frames(8, "image_0", np.array([0]))
    assert not np.array_equal(other[0], ep.images["image_0"][0])
    with pytest.raises(IndexError):
        src.frames(7, "image_0", np.array([10]))
    with pytest.raises(DatasetError, match="image_1"):
        src.frames(7, "image_1", np.array([0]))  # not selected


def test_key_selection(bridge: Path) -> None:
    src = RLDSSource(bridge, "train", state_key=(), action_key=["action", "reward"])
    ep = src.episode(0)
    assert ep.states.shape == (10, 0) and ep.actions.shape == (10, 8)
    np.testing.assert_array_equal(ep.actions[:, 7], RLDSSource(bridge).episode(0).extras["reward"])
    with pytest.raises(DatasetError, match="no step feature 'joint'"):
        RLDSSource(bridge, "train", state_key="joint")
    with pytest.raises(DatasetError, match="no split 'test'"):
        RLDSSource(bridge, "test")
    parent = RLDSSource(bridge.parent, "train", fps=10.0)  # version directory found
    assert parent.fps == 10.0 and not parent.fps_is_default and len(parent) == 25


# --- corruption ---------------------------------------------------------------------------


def test_flipped_data_byte(bridge_copy: Path, bridge: Path) -> None:
    shard = bridge_copy / SHARD.format("train")
    header, length = _record_spans(shard)[3]
    blob = bytearray(shard.read_bytes())
    blob[header + 12 + length // 2] ^= 0x01
    shard.write_bytes(bytes(blob))

    src = RLDSSource(bridge_copy, "train")  # headers are intact: opening works
    src.episode(2)
    with pytest.raises(DatasetError, match=rf"{shard.name}: record 3: data CRC mismatch"):
        src.episode(3)

    good = RLDSSource(bridge, "train")
    skip = RLDSSource(bridge_copy, "train", skip_bad=True)
    assert len(skip) == 24
    assert len(skip.skipped) == 1 and str(shard) in skip.skipped[0]
    assert "record 3:" in skip.skipped[0]
    np.testing.assert_array_equal(skip.episode(3).actions, good.episode(4).actions)
    assert skip.episode(3).meta["record"] == 4


def test_truncated_shard(bridge_copy: Path) -> None:
    shard = bridge_copy / SHARD.format("val")
    header, length = _record_spans(shard)[20]
    with open(shard, "r+b") as f:
        f.truncate(header + 12 + length // 3)
    with pytest.raises(DatasetError, match=rf"{shard.name}: record 20: truncated"):
        RLDSSource(bridge_copy, "val")
    skip = RLDSSource(bridge_copy, "val", skip_bad=True)
    assert len(skip) == 20
    assert len(skip.skipped) == 1 and "record 20: truncated" in skip.skipped[0]


def test_corrupt_length_header(bridge_copy: Path) -> None:
    shard = bridge_copy / SHARD.format("train")
    header, _ = _record_spans(shard)[5]
    blob = bytearray(shard.read_bytes())
    blob[header + 1] ^= 0x40
    shard.write_bytes(bytes(blob))
    with pytest.raises(DatasetError, match=rf"{shard.name}: record 5: length CRC"):
        RLDSSource(bridge_copy, "train")
    skip = RLDSSource(bridge_copy, "train", skip_bad=True)
    assert len(skip) == 5  # nothing after a bad header can be located
    assert "record 5" in skip.skipped[0]


def test_unknown_feature_type(bridge_copy: Path) -> None:
    path = bridge_copy / "features.json"
    spec = json.loads(path.read_text())
    steps = spec["featuresDict"]["features"]["steps"]["sequence"]["feature"]["featuresDict"]
    cam = steps["features"]["observation"]["featuresDict"]["features"]["image_2"]
    cam["pythonClassName"] = "tensorflow_datasets.core.features.video_feature.Video"
    path.write_text(json.dumps(spec))
    with pytest.raises(DatasetError, match=r"features\.json: feature 'steps/observation/image_2'"):
        RLDSSource(bridge_copy, "train")


# --- fork / pickle safety ---------------------------------------------------------------------


def _child(src: RLDSSource, queue) -> None:
    ep = src.episode(5, images=True)
    queue.put((ep.actions.tobytes(), _sha(ep.images["image_0"], "u1"), src._pid == os.getpid()))


def test_works_after_fork(bridge: Path) -> None:
    src = RLDSSource(bridge, "train")
    ep = src.episode(5, images=True)  # the parent opens its descriptor first
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(src, queue))
    proc.start()
    actions, image_sha, reopened = queue.get(timeout=60)
    proc.join(timeout=60)
    assert proc.exitcode == 0
    assert actions == ep.actions.tobytes() and image_sha == _sha(ep.images["image_0"], "u1")
    assert reopened  # the child opened its own descriptor
    np.testing.assert_array_equal(src.episode(6).actions, RLDSSource(bridge).episode(6).actions)
    clone = pickle.loads(pickle.dumps(src))
    np.testing.assert_array_equal(clone.episode(5).actions, ep.actions)


# --- a hand-written dataset: wire-format variants and bad episodes ----------------------------


def _varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _bytes(values: list[bytes]) -> bytes:
    return _ld(1, b"".join(_ld(1, v) for v in values))


def _floats(values: list[float], packed: bool) -> bytes:
    if packed:
        return _ld(2, _ld(1, struct.pack(f"<{len(values)}f", *values)))
    return _ld(2, b"".join(_varint(1 << 3 | 5) + struct.pack("<f", v) for v in values))


def _ints(values: list[int], packed: bool) -> bytes:
    if packed:
        return _ld(3, _ld(1, b"".join(_varint(v) for v in values)))
    return _ld(3, b"".join(_varint(1 << 3) + _varint(v) for v in values))


def _example(features: dict[str, bytes]) -> bytes:
    return _ld(1, b"".join(_ld(1, _ld(1, k.encode()) + _ld(2, v)) for k, v in features.items()))


def _frame(data: bytes) -> bytes:
    n = struct.pack("<Q", len(data))
    return n + struct.pack("<I", masked_crc32c(n)) + data + struct.pack("<I", masked_crc32c(data))


def _tensor(shape: list[int], dtype: str) -> dict:
    return {
        "pythonClassName": "tensorflow_datasets.core.features.tensor_feature.Tensor",
        "tensor": {"shape": {"dimensions": [str(d) for d in shape]}, "dtype": dtype},
    }


def _fdict(features: dict) -> dict:
    return {
        "pythonClassName": "tensorflow_datasets.core.features.features_dict.FeaturesDict",
        "featuresDict": {"features": features},
    }


def _write_dataset(root: Path, records: list[bytes]) -> Path:
    text = {"pythonClassName": "tensorflow_datasets.core.features.text_feature.Text", "text": {}}
    step = _fdict(
        {
            "action": _tensor([2], "float32"),
            "observation": _fdict({"state": _tensor([3], "float32")}),
            "language_instruction": text,
            "counter": _tensor([], "int64"),
        }
    )
    seq = "tensorflow_datasets.core.features.dataset_feature.Dataset"
    features = _fdict({"steps": {"pythonClassName": seq, "sequence": {"feature": step}}})
    root.mkdir(parents=True)
    (root / "features.json").write_text(json.dumps(features))
    split = {"name": "train", "shardLengths": [str(len(records))]}
    info = {"name": "toy", "fileFormat": "tfrecord", "splits": [split]}
    (root / "dataset_info.json").write_text(json.dumps(info))
    (root / "toy-train.tfrecord-00000-of-00001").write_bytes(b"".join(map(_frame, records)))
    return root


def _toy_episode(t: int, packed: bool, state_steps: int | None = None) -> bytes:
    s = t if state_steps is None else state_steps
    return _example(
        {
            "steps/action": _floats([0.5 * k for k in range(2 * t)], packed),
            "steps/observation/state": _floats([float(k) for k in range(3 * s)], packed),
            "steps/language_instruction": _bytes([f"step {k} é".encode() for k in range(t)]),
            "steps/counter": _ints([-(k**9) for k in range(t)], packed),
        }
    )


def test_toy_dataset_wire_variants(tmp_path: Path) -> None:
    root = _write_dataset(tmp_path / "toy", [_toy_episode(4, True), _toy_episode(3, False)])
    src = RLDSSource(root)
    assert src.fps == 5.0 and src.fps_is_default and src.cameras == {}
    for i, t in enumerate((4, 3)):
        ep = src.episode(i)
        np.testing.assert_array_equal(ep.actions, np.arange(2 * t).reshape(t, 2) * 0.5)
        np.testing.assert_array_equal(ep.states, np.arange(3 * t, dtype=np.float32).reshape(t, 3))
        assert ep.extras["counter"].tolist() == [-(k**9) for k in range(t)]
        assert ep.task == "step 0 é"  # per-step instructions vary: all kept in extras
        assert ep.extras["language_instruction"].tolist() == [f"step {k} é" for k in range(t)]


def test_toy_dataset_bad_episodes(tmp_path: Path) -> None:
    records = [_toy_episode(4, True), _toy_episode(0, True), _toy_episode(4, True, 5)]
    records.append(b"\x0a\xff")  # a length past the message end
    root = _write_dataset(tmp_path / "toy", records)
    src = RLDSSource(root)
    assert len(src) == 4
    shard = "toy-train.tfrecord-00000-of-00001"
    with pytest.raises(DatasetError, match=rf"{shard}: record 1: episode has zero steps"):
        src.episode(1)
    with pytest.raises(DatasetError, match=r"record 2: .*4 actions but .*state': 5"):
        src.episode(2)
    with pytest.raises(DatasetError, match=r"record 3: bad tf.train.Example"):
        src.episode(3)
    skip = RLDSSource(root, skip_bad=True)
    assert len(skip) == 1 and skip.episode(0).length == 4
    assert [s.split(": ")[1] for s in skip.skipped] == ["record 1", "record 2", "record 3"]
    assert all(s.startswith(str(root / shard)) for s in skip.skipped)


# --- CRC and varints --------------------------------------------------------------------------


def test_crc32c_known_values() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c_python(b"123456789") == 0xE3069283
    data = np.random.default_rng(0).bytes(5000)
    assert crc32c_python(data) == crc32c(data)
    crc = crc32c(b"abc")
    assert masked_crc32c(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) % 2**32


def test_varints_and_unpacked_lists() -> None:
    values = [0, 1, 127, 128, 300, 2**31, 2**63 - 1, -1, -(2**63), -300]
    packed = b"".join(_varint(v) for v in values)
    assert decode_varints(packed).tolist() == values
    feats = parse_example(
        _example({"a": _ints(values, False), "b": _floats([1.5, -2.0], False), "c": _bytes([])})
    )
    assert feats["a"].as_int64().tolist() == values
    assert feats["b"].as_floats().tolist() == [1.5, -2.0]
    assert feats["c"].as_bytes() == []
    assert isinstance(feats["a"], RawFeature)
    with pytest.raises(ValueError, match="int64_list, expected a float_list"):
        feats["a"].as_floats()
