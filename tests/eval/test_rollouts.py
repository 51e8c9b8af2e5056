"""Closed-loop evaluation in real MuJoCo physics: the expert succeeds, a random policy does
not, results do not depend on the worker count, prompts are overridden, chunks are replanned
on schedule, reports and videos are written, and a trained checkpoint runs end to end."""

from __future__ import annotations

import json
import math

import av
import numpy as np
import pytest

from robofm.errors import ConfigError
from robofm.eval.metrics import summarize
from robofm.eval.reports import BANNER_PX, compare_chart, write_report
from robofm.eval.rollouts import EVAL_SEED0, ExpertActor, evaluate, make_actor, rollout
from robofm.sim.env import TabletopEnv
from robofm.sim.tasks import TASKS

EXPERT = {"kind": "expert", "noise": 0.0}
EPISODES = 6
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _key(r):
    return (r.task, r.split, r.seed, r.success, r.steps, r.instruction)


@pytest.fixture(scope="module")
def expert_results():
    """The expert on lift and pick_place, in 2 spawn processes, first episode recorded."""
    return evaluate(
        EXPERT, ["lift", "pick_place"], ["train"], EPISODES, workers=2, video_episodes=1
    )


@pytest.fixture(scope="module")
def lift_env():
    env = TabletopEnv(task="lift")
    yield env
    env.close()


def test_expert_succeeds_on_lift_and_pick_place(expert_results):
    assert [(r.task, r.episode, r.seed) for r in expert_results] == [
        (t, i, EVAL_SEED0 + i) for t in ("lift", "pick_place") for i in range(EPISODES)
    ]
    summary = summarize(expert_results)
    for task in ("lift", "pick_place"):
        row = summary[task]["train"]
        assert row["n"] == EPISODES and row["successes"] >= EPISODES - 1, (task, row)
    for r in expert_results:
        assert r.calls == r.steps  # H = 1: one expert call per step
        assert all(ms > 0 for ms in r.latency_ms)
        assert r.steps < TASKS[r.task].max_steps or not r.success  # success ends it early
        assert (r.frames is not None) == (r.episode == 0)
    f = expert_results[0].frames
    assert f.dtype == np.uint8 and f.shape == (expert_results[0].steps + 1, 96, 192, 3)


def test_results_do_not_depend_on_worker_count(expert_results):
    serial = evaluate(
        EXPERT, ["lift", "pick_place"], ["train"], EPISODES, workers=1, video_episodes=1
    )
    assert [_key(r) for r in serial] == [_key(r) for r in expert_results]
    for a, b in zip(serial, expert_results, strict=True):
        if a.frames is not None:
            np.testing.assert_array_equal(a.frames, b.frames)


def test_random_policy_fails_lift(lift_env):
    results = evaluate({"kind": "random"}, ["lift"], ["train"], EPISODES, workers=1)
    assert sum(r.success for r in results) <= 1
    assert all(r.steps == lift_env.max_steps for r in results if not r.success)
    actor = make_actor({"kind": "random"}, lift_env, seed=3)
    space = lift_env.robot_action_space
    actor.reset()
    a = np.concatenate([actor.chunk({}) for _ in range(200)])  # (200, D)
    assert a.shape == (200, space.dim) and a.dtype == np.float32
    assert np.all(a >= space.low_array) and np.all(a <= space.high_array)
    assert np.ptp(a, axis=0).min() > 0.5 * (space.high_array - space.low_array).min()
    actor.reset()
    np.testing.assert_array_equal(actor.chunk({}), a[:1])  # reseeded per episode


def test_bad_specs_are_refused(lift_env):
    with pytest.raises(ConfigError, match="kind"):
        make_actor({"kind": "oracle"}, lift_env, 0)
    with pytest.raises(ConfigError, match="checkpoint directory"):
        evaluate({"kind": "checkpoint", "path": "/nonexistent"}, ["lift"], ["train"], 1)
    with pytest.raises(ConfigError, match="unknown split"):
        evaluate(EXPERT, ["lift"], ["training"], 1)


class PromptSpy(ExpertActor):
    """The expert, noting the prompt of every observation it is handed."""

    def __init__(self, env, seed):
        super().__init__(env, 0.0, seed)
        self.prompts = []

    def chunk(self, obs):
        self.prompts.append(obs["prompt"])
        return super().chunk(obs)


def test_instruction_override_reaches_the_policy(expert_results, lift_env):
    phrasings = ["hoist the small object", "elevate the thing you see"]
    results = evaluate(EXPERT, ["lift"], ["train"], 3, workers=1, instructions=phrasings)
    assert [r.instruction for r in results] == [phrasings[0], phrasings[1], phrasings[0]]
    plain = expert_results[:3]  # lift, same seeds, the task's own instruction
    assert all(p.instruction not in phrasings for p in plain)
    assert [(r.success, r.steps) for r in results] == [(p.success, p.steps) for p in plain]
    spy = PromptSpy(lift_env, EVAL_SEED0)
    r = rollout(lift_env, spy, EVAL_SEED0, instruction="grab it now")
    assert r.instruction == "grab it now" and set(spy.prompts) == {"grab it now"}
    assert len(spy.prompts) == r.steps and (r.success, r.steps) == (
        plain[0].success,
        plain[0].steps,
    )


class ChunkCounter:
    """A test policy: chunks of H distinct actions (dx encodes the call, dy the position)
    that keep the gripper open and never lift anything."""

    def __init__(self, env, horizon):
        self.env = env
        self.horizon = horizon
        self.called_at = []  # env step count at each call

    def reset(self):
        self.called_at = []

    def chunk(self, obs):
        k = len(self.called_at)
        self.called_at.append(self.env.steps)
        a = np.zeros((self.horizon, 4), np.float32)  # (H, D)
        a[:, 0] = 0.001 * (k % 5)
        a[:, 1] = 0.001 * np.arange(self.horizon)
        a[:, 3] = 1.0
        return a


class LoggingEnv(TabletopEnv):
    """The real env, keeping every action it is stepped with."""

    def reset(self, **kw):
        self.log = []
        return super().reset(**kw)

    def step(self, action):
        self.log.append(np.asarray(action).copy())
        return super().step(action)


@pytest.mark.parametrize(("steps", "replan", "horizon"), [(23, 5, 8), (23, 5, 3), (20, 4, 4)])
def test_replanning_schedule(steps, replan, horizon):
    env = LoggingEnv(task="lift", cameras=())
    actor = ChunkCounter(env, horizon)
    r = rollout(env, actor, 7, replan_every=replan, max_steps=steps)
    every = min(replan, horizon)
    assert r.steps == steps and not r.success
    assert len(actor.called_at) == math.ceil(steps / every) == r.calls == len(r.latency_ms)
    assert actor.called_at == list(range(0, steps, every))
    for t, a in enumerate(env.log):  # step t runs action t % every of chunk t // every
        assert a[0] == pytest.approx(0.001 * ((t // every) % 5))
        assert a[1] == pytest.approx(0.001 * (t % every))
    with pytest.raises(ConfigError):
        rollout(env, actor, 7, replan_every=0)


def test_write_report(expert_results, tmp_path):
    paths = write_report(expert_results, tmp_path, name="expert")
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["name"] == "expert" and len(doc["episodes"]) == len(expert_results)
    assert doc["episodes"][0]["seed"] == EVAL_SEED0 and doc["episodes"][0]["recorded"]
    summary = summarize(expert_results)
    assert doc["summary"]["lift"]["train"]["successes"] == summary["lift"]["train"]["successes"]
    table = (tmp_path / "table.md").read_text()
    for task in ("lift", "pick_place"):
        row = summary[task]["train"]
        assert f"| {task} | train | {row['successes']}/{EPISODES} | {100 * row['rate']:.1f}% |" in (
            table
        )
    png = paths["chart"].read_bytes()
    assert paths["chart"] == tmp_path / "success.png" and png[:8] == PNG_MAGIC and len(png) > 1000
    recorded = [r for r in expert_results if r.frames is not None]
    names = sorted(p.name for p in paths["videos"])
    expected = [
        f"{r.task}_train_{r.seed}_{'success' if r.success else 'failure'}.mp4" for r in recorded
    ]
    assert names == sorted(expected) and len(names) == 2
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == names  # no temp files left
    for r in recorded:
        path = next(p for p in paths["videos"] if p.name.startswith(f"{r.task}_"))
        with av.open(str(path)) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == r.steps + 1
        assert frames[0].shape == (96 + BANNER_PX, 192, 3)
        assert frames[0][:BANNER_PX].max() > 100  # the text band has text on it
    out = compare_chart({"expert": summary, "random": summary}, tmp_path / "compare.png")
    assert out.read_bytes()[:8] == PNG_MAGIC


def test_checkpoint_policy_runs(tmp_path):
    from robofm.sim.record import smoke_checkpoint

    ckpt = smoke_checkpoint(tmp_path, image_size=32, chunk_len=4)
    spec = {"kind": "checkpoint", "path": str(ckpt)}
    results = evaluate(spec, ["lift"], ["train"], episodes=2, workers=1, out_dir=tmp_path / "ev")
    assert [(r.task, r.seed) for r in results] == [("lift", EVAL_SEED0), ("lift", EVAL_SEED0 + 1)]
    for r in results:
        assert r.steps >= 1 and r.calls == math.ceil(r.steps / 4)  # chunk_len 4 < replan 5
        assert all(ms > 0 for ms in r.latency_ms)
    assert summarize(results)["lift"]["train"]["latency_ms_mean"] > 0
    assert (tmp_path / "ev" / "table.md").read_text().count("| lift | train |") == 1
