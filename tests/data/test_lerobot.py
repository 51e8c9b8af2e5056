from __future__ import annotations

import json
import shutil

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from robofm.data.episode import DatasetError, Episode, InMemorySource
from robofm.data.lerobot import LeRobotSource
from robofm.data.lerobot_write import WriteOptions, write_lerobot
from robofm.spaces import ActionSpace


@pytest.fixture
def synth(fixtures_dir):
    return fixtures_dir / "lerobot" / "synth_video_v3"


def test_reads_dataset_written_by_lerobot(synth):
    src = LeRobotSource(synth)
    assert (len(src), src.fps, src.cameras, src.version) == (5, 30.0, {"cam": (96, 96)}, "v3.0")
    table = pq.read_table(synth / "data/chunk-000/file-000.parquet")
    actions = np.array(table.column("action").to_pylist(), np.float32)
    states = np.array(table.column("observation.state").to_pylist(), np.float32)
    for i in range(5):
        ep = src.episode(i)
        assert ep.index == i and ep.task == "move the arm" and ep.length == 300
        np.testing.assert_array_equal(ep.actions, actions[i * 300 : (i + 1) * 300])
        np.testing.assert_array_equal(ep.states, states[i * 300 : (i + 1) * 300])
        np.testing.assert_allclose(ep.timestamps, np.arange(300) / 30, atol=1e-6)


def test_frames_are_decoded_at_their_timestamps(synth):
    """Compare seek-based access with a plain sequential decode of the whole mp4."""
    path = synth / "videos/observation.images.cam/chunk-000/file-000.mp4"
    with av.open(str(path)) as c:
        all_frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    assert all_frames.shape == (1500, 96, 96, 3)
    src = LeRobotSource(synth)
    rng = np.random.default_rng(0)
    for i in rng.permutation(5):
        steps = rng.integers(0, 300, 7)
        steps[1] = steps[0]  # repeats are allowed
        got = src.frames(int(i), "cam", steps)
        np.testing.assert_array_equal(got, all_frames[i * 300 + steps])


def _tiny_source(n_eps=3, length=12, cams=("front", "wrist"), space=None) -> InMemorySource:
    rng = np.random.default_rng(1)
    eps = []
    for i in range(n_eps):
        colour = rng.integers(0, 120, size=(1, 1, 1, 3))
        base = colour + np.linspace(0, 50, 48)[None, None, :, None] + np.zeros((1, 32, 1, 1))
        grad = np.linspace(0, 60, length)[:, None, None, None]
        eps.append(
            Episode(
                index=i,
                task=f"pick up block {i}",
                actions=rng.normal(size=(length, 4)).astype(np.float32),
                states=rng.normal(size=(length, 3)).astype(np.float32),
                timestamps=np.arange(length) / 10.0,
                images={
                    c: np.clip(base + grad + k * 40, 0, 255).astype(np.uint8)
                    for k, c in enumerate(cams)
                },
            )
        )
    return InMemorySource(eps, fps=10, name="tiny", action_space=space)


def _space() -> ActionSpace:
    return ActionSpace(
        robot="r",
        names=("x", "y", "z", "g"),
        units=("m", "m", "m", "1"),
        mode=("delta",) * 3 + ("absolute",),
        frame="end_effector",
        low=(-1.0,) * 4,
        high=(1.0,) * 4,
        control_hz=10.0,
        chunk_len=4,
        gripper_dims=(3,),
    )


@pytest.mark.parametrize("video", [True, False])
def test_write_then_read_round_trip(tmp_path, video):
    src = _tiny_source(space=_space())
    info = write_lerobot(src, tmp_path / "ds", WriteOptions(video=video))
    assert info["total_episodes"] == 3 and info["total_frames"] == 36
    back = LeRobotSource(tmp_path / "ds")
    assert back.cameras == {"front": (32, 48), "wrist": (32, 48)}
    assert back.action_space == _space()
    for i in range(3):
        a, b = src.episode(i, images=True), back.episode(i, images=True)
        assert b.task == a.task
        np.testing.assert_array_equal(b.actions, a.actions)
        np.testing.assert_array_equal(b.states, a.states)
        for cam in a.images:
            err = np.abs(b.images[cam].astype(int) - a.images[cam]).mean()
            assert err == 0 if not video else err < 4.0
    stats = json.loads((tmp_path / "ds/meta/stats.json").read_text())
    all_actions = np.concatenate([src.episode(i).actions for i in range(3)])
    np.testing.assert_allclose(stats["action"]["mean"], all_actions.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["action"]["std"], all_actions.std(0), rtol=1e-5)
    assert stats["action"]["count"] == [36]
    tasks = pq.read_table(tmp_path / "ds/meta/tasks.parquet")
    assert b"pandas" in tasks.schema.metadata  # lerobot indexes tasks by the task string


def test_multiple_files_and_chunks(tmp_path):
    opts = WriteOptions(data_file_size_mb=1e-6, video_file_size_mb=1e-6, chunks_size=2)
    write_lerobot(_tiny_source(n_eps=5), tmp_path / "ds", opts)
    assert len(list((tmp_path / "ds/data").glob("chunk-*/file-*.parquet"))) == 5
    assert (tmp_path / "ds/data/chunk-002/file-000.parquet").exists()
    back, src = LeRobotSource(tmp_path / "ds"), _tiny_source(n_eps=5)
    for i in range(5):
        np.testing.assert_array_equal(back.episode(i).actions, src.episode(i).actions)
        assert (
            np.abs(
                back.frames(i, "front", np.array([0, 11])).astype(int)
                - src.frames(i, "front", np.array([0, 11]))
            ).mean()
            < 4
        )


def test_reads_v21_layout(tmp_path, synth):
    """Rewrite the fixture as v2.1 (one parquet + one mp4 per episode, JSON-lines meta)."""
    src = LeRobotSource(synth)
    root = tmp_path / "v21"
    (root / "meta").mkdir(parents=True)
    info = json.loads((synth / "meta/info.json").read_text())
    info.update(
        codebase_version="v2.1",
        data_path="data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet",
        video_path="videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4",
    )
    (root / "meta/info.json").write_text(json.dumps(info))
    (root / "meta/tasks.jsonl").write_text('{"task_index": 0, "task": "move the arm"}\n')
    table = pq.read_table(synth / "data/chunk-000/file-000.parquet")
    lines = []
    for i in range(2):
        (root / "data/chunk-000").mkdir(parents=True, exist_ok=True)
        pq.write_table(table.slice(i * 300, 300), root / f"data/chunk-000/episode_{i:06d}.parquet")
        out = root / f"videos/chunk-000/observation.images.cam/episode_{i:06d}.mp4"
        out.parent.mkdir(parents=True, exist_ok=True)
        from robofm.data.video import VideoEncoder

        enc = VideoEncoder(out, 30, 96, 96, crf=0)
        enc.write(src.frames(i, "cam", np.arange(300)))
        enc.close()
        lines.append(json.dumps({"episode_index": i, "tasks": ["move the arm"], "length": 300}))
    (root / "meta/episodes.jsonl").write_text("\n".join(lines) + "\n")
    v21 = LeRobotSource(root)
    assert len(v21) == 2 and v21.version == "v2.1"
    np.testing.assert_array_equal(v21.episode(1).actions, src.episode(1).actions)
    diff = np.abs(
        v21.frames(1, "cam", np.array([0, 150, 299])).astype(int)
        - src.frames(1, "cam", np.array([0, 150, 299]))
    )
    assert diff.mean() < 2.0


def _copy(synth, tmp_path):
    dst = tmp_path / "ds"
    shutil.copytree(synth, dst)
    for p in dst.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return dst


def test_truncated_parquet_names_the_file(tmp_path, synth):
    ds = _copy(synth, tmp_path)
    data = ds / "data/chunk-000/file-000.parquet"
    data.write_bytes(data.read_bytes()[:500])
    with pytest.raises(DatasetError, match=r"file-000\.parquet"):
        LeRobotSource(ds)


def test_missing_video_names_file_and_episode(tmp_path, synth):
    ds = _copy(synth, tmp_path)
    (ds / "videos/observation.images.cam/chunk-000/file-000.mp4").unlink()
    with pytest.raises(DatasetError, match=r"episode 0: video file for camera 'cam' is missing"):
        LeRobotSource(ds)
    with pytest.raises(DatasetError, match="no usable episodes"):
        LeRobotSource(ds, skip_bad=True)


def test_mismatched_frame_count_names_episode_and_skip_bad_lists_it(tmp_path, synth):
    ds = _copy(synth, tmp_path)
    meta = ds / "meta/episodes/chunk-000/file-000.parquet"
    table = pq.read_table(meta)
    lengths = table.column("length").to_pylist()
    lengths[3] = 299
    table = table.set_column(
        table.column_names.index("length"), "length", pa.array(lengths, pa.int64())
    )
    pq.write_table(table, meta)
    with pytest.raises(DatasetError, match="episode 3: metadata says 299 frames, data files hold"):
        LeRobotSource(ds)
    src = LeRobotSource(ds, skip_bad=True)
    assert len(src) == 4 and [src.episode(i).index for i in range(4)] == [0, 1, 2, 4]
    assert len(src.skipped) == 1 and "episode 3" in src.skipped[0]


def test_zero_step_episode_and_interrupted_write_leave_nothing(tmp_path):
    src = _tiny_source()
    src.episodes[1].actions = src.episodes[1].actions[:0]
    with pytest.raises(DatasetError, match="episode 1: has zero steps"):
        write_lerobot(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind
    info = write_lerobot(src, tmp_path / "out", skip_bad=True)
    assert info["total_episodes"] == 2 and "episode 1" in info["skipped"][0]
