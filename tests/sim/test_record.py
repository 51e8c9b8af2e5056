"""Recording expert demonstrations to LeRobot v3 and reading them back, plus `robofm sim`."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest

from robofm.data.lerobot import LeRobotSource
from robofm.sim.env import TabletopEnv
from robofm.sim.experts import run_expert
from robofm.sim.record import RecordConfig, record
from robofm.sim.tasks import SPLITS, TASKS
from tests.test_cli import robofm

EPISODES = 3


def _expected(family: str, n: int, seed: int = 0) -> list[dict]:
    """What record() must keep: the first `n` successful expert runs from `seed` on."""
    env = TabletopEnv(task=family)
    kept = []
    try:
        while len(kept) < n:
            out = run_expert(env, seed, noise=1.0)
            if out["success"]:
                obs = out["observations"][:-1]
                kept.append(
                    {
                        "seed": seed,
                        "instruction": env.task.instruction,
                        "actions": np.stack(out["actions"]),
                        "states": np.stack([o["state"] for o in obs]),
                        "front": np.stack([o["images"]["front"] for o in obs]),
                    }
                )
            seed += 1
    finally:
        env.close()
    return kept


@pytest.fixture(scope="module")
def lift_dataset(tmp_path_factory):
    """3 lift episodes recorded in this process (workers=1), and what they should hold."""
    root = tmp_path_factory.mktemp("sim") / "ds1"
    result = record(RecordConfig(tasks=("lift",), episodes=EPISODES, workers=1), root)
    return root, result, _expected("lift", EPISODES)


def test_recorded_dataset_reads_back_as_the_expert_ran(lift_dataset):
    root, result, expected = lift_dataset
    assert result["episodes"] == EPISODES
    summary = result["summary"]["lift"]
    assert summary["kept"] == EPISODES and summary["succeeded"] >= EPISODES
    src = LeRobotSource(root)
    assert len(src) == EPISODES and src.fps == 10.0
    assert src.cameras == {"front": (96, 96), "wrist": (96, 96)}
    assert src.action_space.names == ("dx", "dy", "dz", "gripper")
    assert src.state_space.names == ("x", "y", "z", "gripper_width")
    meta = json.loads((root / "meta" / "action_space.json").read_text())
    assert meta["action"]["names"] == ["dx", "dy", "dz", "gripper"]
    assert meta["action"]["gripper_dims"] == [3] and meta["action"]["high"][:3] == [0.05] * 3
    assert src.info["robot_type"] == "robofm_sim_gripper"
    for i, want in enumerate(expected):
        ep = src.episode(i, images=True)
        assert ep.task == want["instruction"]
        np.testing.assert_array_equal(ep.actions, want["actions"])
        np.testing.assert_array_equal(ep.states, want["states"])
        np.testing.assert_allclose(ep.timestamps, np.arange(ep.length) / 10.0, atol=1e-6)
        assert ep.images["front"].shape == (ep.length, 96, 96, 3)
        assert ep.images["wrist"].shape == (ep.length, 96, 96, 3)
        # video is lossy; the decoded frames are still the rendered ones, not others
        err = np.abs(ep.images["front"].astype(int) - want["front"].astype(int)).mean()
        assert err < 6.0, err
        other = expected[(i + 1) % EPISODES]["front"][0].astype(int)
        assert np.abs(ep.images["front"][0].astype(int) - other).mean() > err


def test_worker_count_does_not_change_the_dataset(lift_dataset, tmp_path):
    root1, _, _ = lift_dataset
    root2 = tmp_path / "ds2"
    result = record(RecordConfig(tasks=("lift",), episodes=EPISODES, workers=2), root2)
    assert result["episodes"] == EPISODES
    one, two = LeRobotSource(root1), LeRobotSource(root2)
    assert len(one) == len(two) == EPISODES
    for i in range(EPISODES):
        a, b = one.episode(i), two.episode(i)
        assert a.task == b.task
        np.testing.assert_array_equal(a.actions, b.actions)
        np.testing.assert_array_equal(a.states, b.states)


def test_cli_record_writes_a_dataset(tmp_path):
    out = tmp_path / "cli_ds"
    proc = robofm(
        "sim", "record", "--task", "lift", "--episodes", "2", "--out", str(out), "--workers", "1"
    )
    assert proc.returncode == 0, proc.stderr
    assert "kept 2 episodes" in proc.stdout
    src = LeRobotSource(out)
    assert len(src) == 2 and src.action_space.names == ("dx", "dy", "dz", "gripper")


def test_cli_record_unknown_task_is_a_usage_error(tmp_path):
    out = tmp_path / "never"
    proc = robofm("sim", "record", "--task", "nope", "--episodes", "1", "--out", str(out))
    assert proc.returncode == 2
    assert "nope" in proc.stderr and all(t in proc.stderr for t in TASKS), proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()


def test_cli_play_writes_a_playable_mp4(tmp_path):
    out = tmp_path / "clip" / "x.mp4"
    proc = robofm("sim", "play", "--task", "lift", "--out", str(out), "--size", "64")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[0])
    assert result["success"] is True and result["instruction"]
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == result["steps"] + 1 > 1
    assert frames[0].shape[1] == 64 * 2 and frames[0].shape[0] >= 64
    assert frames[-1].std() > 5.0  # a real picture, not a blank frame
    assert sorted(p.name for p in out.parent.iterdir()) == ["x.mp4"]  # no partial file left


def test_cli_tasks_lists_every_family_and_split():
    proc = robofm("sim", "tasks")
    assert proc.returncode == 0, proc.stderr
    listed = [line.split()[0] for line in proc.stdout.splitlines() if line[:1].strip()]
    assert all(t in listed for t in TASKS), proc.stdout
    assert all(s in proc.stdout for s in SPLITS)
