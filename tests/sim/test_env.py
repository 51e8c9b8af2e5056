"""`TabletopEnv` on real MuJoCo physics and EGL rendering: every task family resets, steps,
renders, is deterministic per seed, is solved by its expert, and refuses bad input."""

from __future__ import annotations

import numpy as np
import pytest

from robofm.errors import ConfigError
from robofm.sim import scene
from robofm.sim.env import MAX_DELTA_M, ActionError, SimError, TabletopEnv
from robofm.sim.experts import ScriptedExpert, run_expert
from robofm.sim.objects import HALF_HEIGHT
from robofm.sim.success import check_success
from robofm.sim.tasks import SPLITS, TASKS

FAMILIES = list(TASKS)
SIZE = 96
EXPERT_SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def make_env():
    """Cached envs per (family, options), closed at the end of the module."""
    made: dict[tuple, TabletopEnv] = {}

    def get(family: str, **kw) -> TabletopEnv:
        key = (family, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = TabletopEnv(task=family, **kw)
        return made[key]

    yield get
    for env in made.values():
        env.close()


def _action(dx=0.0, dy=0.0, dz=0.0, gripper=1.0) -> np.ndarray:
    return np.array([dx, dy, dz, gripper], np.float32)


def _random_actions(env: TabletopEnv, n: int, seed: int = 0) -> list[np.ndarray]:
    """`n` in-bound actions drawn uniformly from the action space."""
    rng = np.random.default_rng(seed)
    space = env.robot_action_space
    return [rng.uniform(space.low_array, space.high_array).astype(np.float32) for _ in range(n)]


def _check_obs(env: TabletopEnv, obs: dict) -> None:
    assert set(obs) == {"images", "state", "prompt"}
    assert set(obs["images"]) == {"front", "wrist"}
    for cam, img in obs["images"].items():
        assert img.dtype == np.uint8 and img.shape == (SIZE, SIZE, 3), cam
        assert img.std() > 5.0, f"{cam} image is blank"  # the scene really rendered
    assert not np.array_equal(obs["images"]["front"], obs["images"]["wrist"])
    state = obs["state"]
    assert state.dtype == np.float32 and state.shape == (env.robot_state_space.dim,)
    assert np.all(np.isfinite(state))
    np.testing.assert_allclose(state[:3], env.hand_pos(), atol=1e-6)
    np.testing.assert_allclose(state[-1], env.gripper_width(), atol=1e-6)
    assert isinstance(obs["prompt"], str) and obs["prompt"]
    assert env.observation_space.contains(obs)


@pytest.mark.parametrize("family", FAMILIES)
def test_reset_step_render_shapes(make_env, family):
    env = make_env(family)
    assert env.robot_state_space.names == ("x", "y", "z", "gripper_width")
    assert env.robot_action_space.names == ("dx", "dy", "dz", "gripper")
    obs, info = env.reset(seed=0)
    _check_obs(env, obs)
    assert obs["prompt"] == env.task.instruction == info["instruction"]
    assert info["success"] is False and info["task"] == family and info["step"] == 0
    # the hand starts where the task says, fingers fully open
    np.testing.assert_allclose(obs["state"][:3], env.task.hand_xyz, atol=2e-3)
    assert obs["state"][-1] == pytest.approx(2 * scene.FINGER_MAX_M, abs=1e-3)
    a = _action(dz=0.01)
    assert env.action_space.contains(a)
    obs2, reward, terminated, truncated, info = env.step(a)
    _check_obs(env, obs2)
    assert isinstance(reward, float) and reward == 0.0
    assert (terminated, truncated, info["step"], info["clipped"]) == (False, False, 1, False)
    assert obs2["state"][2] == pytest.approx(obs["state"][2] + 0.01, abs=2e-3)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (SIZE, SIZE, 3)
    np.testing.assert_array_equal(frame, obs2["images"]["front"])
    big = env.render_camera("wrist", size=48)
    assert big.shape == (48, 48, 3)


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_episode_other_seed_other_scene(make_env, family):
    cached = make_env(family)
    fresh = TabletopEnv(task=family)
    try:
        cached.reset(seed=3)  # leave some other episode's state behind first
        for a in _random_actions(cached, 3, seed=9):
            cached.step(a)
        obs_a, _ = cached.reset(seed=7)
        obs_b, _ = fresh.reset(seed=7)
        assert cached.task == fresh.task
        for a in [None, *_random_actions(cached, 4)]:
            if a is not None:
                obs_a = cached.step(a)[0]
                obs_b = fresh.step(a)[0]
            np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
            for cam in ("front", "wrist"):
                np.testing.assert_array_equal(obs_a["images"][cam], obs_b["images"][cam])
            assert obs_a["prompt"] == obs_b["prompt"]
        other, _ = fresh.reset(seed=8)
        assert fresh.task != cached.task
        assert not np.array_equal(other["images"]["front"], obs_a["images"]["front"])
    finally:
        fresh.close()


def _solved_physically(env: TabletopEnv) -> None:
    """The end state an observer would call done, checked from poses independently of
    `check_success`."""
    task = env.task
    p = env.object_pos(0)
    family = task.family
    if family in ("lift", "ground"):
        assert p[2] - HALF_HEIGHT[task.target.shape] > 0.04, p
        for i in range(1, len(task.objects)):  # the right object was lifted, the rest stay
            assert env.object_pos(i)[2] < HALF_HEIGHT[task.objects[i].shape] + 0.01
    elif family in ("pick_place", "push"):
        goal = env.receptacle_pos(task.goal)
        assert np.hypot(*(p[:2] - goal[:2])) < 0.06 and p[2] < 0.05, (p, goal)
        other = env.receptacle_pos(1 - task.goal)
        assert np.hypot(*(p[:2] - other[:2])) > 0.06
    elif family == "stack":
        base = env.object_pos(task.goal)
        assert np.hypot(*(p[:2] - base[:2])) < 0.02, (p, base)
        assert p[2] > base[2] + 0.03
    assert not env.touching_fingers(0) or family in ("lift", "ground")


@pytest.mark.parametrize("family", FAMILIES)
def test_expert_solves_every_family_and_success_is_detected(make_env, family):
    env = make_env(family, cameras=())  # physics only: success does not depend on cameras
    for seed in EXPERT_SEEDS:
        env.reset(seed=seed)
        assert check_success(env) is False
        out = run_expert(env, seed, noise=1.0)
        assert out["success"], f"{family} seed {seed}: expert failed in {out['steps']} steps"
        assert out["info"]["success"] is True and check_success(env) is True
        assert 1 <= out["steps"] <= TASKS[family].max_steps
        assert len(out["observations"]) == out["steps"] + 1
        _solved_physically(env)


@pytest.mark.parametrize("split", SPLITS[1:])
@pytest.mark.parametrize("family", FAMILIES)
def test_held_out_splits_render_and_are_solvable(make_env, family, split):
    env = make_env(family, split=split)
    obs, info = env.reset(seed=0)
    _check_obs(env, obs)
    assert info["split"] == split == env.task.split
    physics = make_env(family, split=split, cameras=())
    for seed in (0, 1):
        out = run_expert(physics, seed, noise=1.0)
        assert out["success"], f"{family}/{split} seed {seed}: expert failed"
        _solved_physically(physics)


@pytest.mark.parametrize("family", FAMILIES)
def test_idling_or_closing_the_gripper_in_place_is_not_success(make_env, family):
    env = make_env(family, cameras=())
    for seed in (0, 1):
        env.reset(seed=seed)
        for gripper in (1.0, 0.0):  # wait open, then close the gripper where it is
            for _ in range(5):
                _, reward, terminated, truncated, info = env.step(_action(gripper=gripper))
                outcome = (reward, terminated, truncated, info["success"])
                assert outcome == (0.0, False, False, False), (seed, gripper)
        assert env.gripper_width() < 0.01  # the gripper did close


@pytest.mark.parametrize("seed", [0, 1])
def test_holding_the_object_over_the_goal_is_not_success(make_env, seed):
    """Just before the expert releases, the object is over the plate within the placement
    tolerance but still held: no success until the fingers let go and it comes to rest."""
    env = make_env("pick_place", cameras=())
    env.reset(seed=seed)
    expert = ScriptedExpert(env, noise=0.0, seed=1)
    expert.reset()
    released = terminated = False
    for _ in range(TASKS["pick_place"].max_steps):
        a = expert.act()
        if not released and expert.phases[expert.k].name == "release":
            released = True
            p, goal = env.object_pos(0), env.receptacle_pos(env.task.goal)
            kind = env.task.receptacles[env.task.goal].kind
            rest_z = scene.RECEPTACLE_TOP_M[kind] + HALF_HEIGHT[env.task.target.shape]
            assert np.hypot(*(p[:2] - goal[:2])) < 0.01 and abs(p[2] - rest_z) < 0.015
            assert env.touching_fingers(0)
            assert check_success(env) is False
        _, _, terminated, truncated, _ = env.step(a)
        if terminated or truncated:
            break
    assert released and terminated


@pytest.mark.parametrize("family", FAMILIES)
def test_instruction_override_changes_only_the_prompt(make_env, family):
    env = make_env(family, cameras=())
    plain = run_expert(env, 4, noise=1.0)
    task = env.task
    obs, info = env.reset(seed=4, options={"instruction": "xyz"})
    assert obs["prompt"] == env.prompt == "xyz"
    assert env.task == task and info["instruction"] == task.instruction != "xyz"
    over = run_expert(env, 4, noise=1.0, instruction="xyz")
    assert env.task == task
    assert all(o["prompt"] == "xyz" for o in over["observations"])
    assert over["success"] == plain["success"] and over["steps"] == plain["steps"]
    np.testing.assert_array_equal(np.stack(over["actions"]), np.stack(plain["actions"]))


def test_wrong_shape_and_nan_actions_raise_naming_the_dims(make_env):
    env = make_env("lift")
    env.reset(seed=0)
    for bad in (np.zeros(3), np.zeros(5), np.zeros((1, 4)), [0.0, 0.0]):
        with pytest.raises(ActionError) as e:
            env.step(bad)
        msg = str(e.value)
        assert "(4,)" in msg and "dx, dy, dz, gripper" in msg, msg
    for dim, value in ((1, np.nan), (3, np.inf)):
        a = _action()
        a[dim] = value
        with pytest.raises(ActionError) as e:
            env.step(a)
        name = ("dx", "dy", "dz", "gripper")[dim]
        assert f"non-finite values in {name}" in str(e.value), str(e.value)
    assert env.steps == 0  # refused actions do not advance the episode


def test_step_before_reset_raises():
    env = TabletopEnv(task="lift", cameras=())
    with pytest.raises(SimError, match="before reset"):
        env.step(_action())


def test_out_of_bound_actions_are_clipped_to_the_step_limit(make_env):
    env = make_env("lift", cameras=())
    env.reset(seed=0)
    env.step(_action(dz=-0.04))  # away from the z limit so every axis can move fully
    start = env.hand_pos()
    _, _, _, _, info = env.step(_action(0.3, -0.3, 0.3, 1.7))
    assert info["clipped"] is True
    moved = env.hand_pos() - start
    assert np.all(np.abs(moved) <= MAX_DELTA_M + 2e-3), moved
    assert np.all(np.abs(moved) >= 0.8 * MAX_DELTA_M), moved  # clipped, not dropped
    assert np.all(np.sign(moved) == [1, -1, 1])
    assert env.gripper_width() > 0.08  # gripper 1.7 clipped to 1: fully open
    _, _, _, _, info = env.step(_action(0.01, 0.0, 0.0, 0.5))
    assert info["clipped"] is False


def test_invalid_action_raise_mode_rejects_out_of_bounds(make_env):
    env = make_env("lift", cameras=(), invalid_action="raise")
    env.reset(seed=0)
    with pytest.raises(ActionError) as e:
        env.step(_action(dx=0.2, gripper=1.5))
    msg = str(e.value)
    assert "out of bounds" in msg and "dx" in msg and "gripper" in msg and "dy" not in msg
    _, _, _, _, info = env.step(_action(dx=MAX_DELTA_M, gripper=0.0))  # the bound itself is fine
    assert info["clipped"] is False


def test_huge_actions_never_blow_up_physics(make_env):
    env = make_env("stack", cameras=())
    env.reset(seed=0)
    for sign in (1, -1, 1, 1, -1, -1, 1, -1):
        obs, *_ = env.step(np.array([sign * 1e6, -sign * 1e6, sign * 1e6, 1e6], np.float32))
        assert np.all(np.isfinite(obs["state"]))
        assert np.all(np.isfinite(env.data.qpos)) and np.all(np.isfinite(env.data.qvel))
        x, y, z = env.hand_pos()
        assert abs(x) <= scene.HAND_XY_RANGE_M + 0.01 and abs(y) <= scene.HAND_XY_RANGE_M + 0.01
        assert scene.HAND_Z_RANGE_M[0] - 0.01 <= z <= scene.HAND_Z_RANGE_M[1] + 0.01
    for i in range(len(env.task.objects)):
        assert np.all(np.isfinite(env.object_pos(i))) and env.object_pos(i)[2] > -0.05


def test_unknown_task_split_or_camera_lists_the_valid_ones():
    with pytest.raises(ConfigError) as e:
        TabletopEnv(task="juggle")
    assert "juggle" in str(e.value) and all(t in str(e.value) for t in TASKS)
    with pytest.raises(ConfigError) as e:
        TabletopEnv(task="lift", split="novel_everything")
    assert all(s in str(e.value) for s in SPLITS)
    with pytest.raises(ConfigError, match="front, wrist"):
        TabletopEnv(task="lift", cameras=("top",))
    with pytest.raises(ConfigError, match="clip"):
        TabletopEnv(task="lift", invalid_action="ignore")


def _run_until_grasped(env: TabletopEnv, seed: int) -> ScriptedExpert:
    """Reset and run the lift expert through its grasp phase (hand down, fingers closed)."""
    env.reset(seed=seed)
    expert = ScriptedExpert(env, noise=1.0, seed=seed + 1_000_003)
    expert.reset()
    names = [p.name for p in expert.phases]
    lift = names.index("lift")
    for _ in range(TASKS["lift"].max_steps):
        a = expert.act()
        if expert.k >= lift:
            return expert
        env.step(a)
    raise AssertionError("the expert never finished its grasp")


@pytest.mark.parametrize("seed", [0, 1])
def test_gripper_holds_by_contact_and_drops_when_opened(make_env, seed):
    env = make_env("lift", cameras=())
    _run_until_grasped(env, seed)
    shape = env.task.target.shape
    rest_z = HALF_HEIGHT[shape]
    assert env.object_pos(0)[2] == pytest.approx(rest_z, abs=0.005)  # still on the table
    assert env.touching_fingers(0) and env.gripper_width() < 0.06
    hand0, obj0 = env.hand_pos(), env.object_pos(0)
    for _ in range(3):
        env.step(_action(dz=0.03, gripper=0.0))
    hand_rise = env.hand_pos()[2] - hand0[2]
    obj_rise = env.object_pos(0)[2] - obj0[2]
    assert hand_rise > 0.08
    assert obj_rise == pytest.approx(hand_rise, abs=0.005)  # it came up with the hand
    assert env.touching_fingers(0)
    for _ in range(5):
        env.step(_action(gripper=1.0))
    assert env.object_pos(0)[2] == pytest.approx(rest_z, abs=0.004)  # fell back down
    assert env.hand_pos()[2] - hand0[2] > 0.08  # while the hand stayed up
    assert not env.touching_fingers(0)
    assert env.gripper_width() > 0.08


def test_an_open_gripper_does_not_carry_the_object(make_env):
    """Same approach, fingers left open: lifting the hand leaves the object behind."""
    env = make_env("lift", cameras=())
    env.reset(seed=0)
    expert = ScriptedExpert(env, noise=1.0, seed=1_000_003)
    expert.reset()
    grasp = [p.name for p in expert.phases].index("grasp")
    for _ in range(TASKS["lift"].max_steps):
        if expert.k >= grasp:
            break
        a = expert.act()
        a[-1] = 1.0
        env.step(a)
    obj0 = env.object_pos(0)
    for _ in range(3):
        env.step(_action(dz=0.03, gripper=1.0))
    assert env.object_pos(0)[2] == pytest.approx(obj0[2], abs=0.003)
    assert check_success(env) is False


def test_same_seed_gives_different_scenes_in_different_splits():
    scenes = {}
    for split in ("train", "novel_instruction", "novel_scene"):
        env = TabletopEnv(task="pick_place", split=split, cameras=())
        env.reset(seed=5)
        scenes[split] = (env.task.objects, env.task.object_xy)
        env.close()
    assert scenes["train"] != scenes["novel_instruction"]
    assert scenes["train"][1] != scenes["novel_scene"][1]
