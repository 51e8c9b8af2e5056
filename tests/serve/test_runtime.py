"""ControlLoop: stale actions dropped, ACT ensembling, async vs sync, errors, the watchdog
against a paused real server, and `robofm run` end to end on the sim."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from robofm.serve.runtime import ControlLoop, InferenceError, LoopConfig
from robofm.serve.safety import SafetyConfig, SafetyLayer

INF = math.inf


def loose_safety(d: int = 2) -> SafetyLayer:
    """Wide bounds, no rate limits, no watchdog: the layer passes policy actions unchanged."""
    cfg = SafetyConfig(
        low=(-1e4,) * d,
        high=(1e4,) * d,
        delta_dims=(True,) * d,
        max_velocity=(INF,) * d,
        max_acceleration=(INF,) * d,
        watchdog_ms=None,
    )
    return SafetyLayer(cfg)


class FakeRobot:
    """Records every action sent; its observation carries the step index ("step")."""

    def __init__(self, on_step=None, image_px: int = 0, state_dim: int = 2):
        self.t = 0
        self.sent: list[np.ndarray] = []
        self.on_step = on_step
        self.state = np.zeros(state_dim, np.float32)
        cams = ("front", "wrist") if image_px else ()
        self.images = {c: np.full((image_px, image_px, 3), 90, np.uint8) for c in cams}

    def observe(self) -> dict:
        return {"images": self.images, "state": self.state.copy(), "prompt": "lift", "step": self.t}

    def apply(self, action: np.ndarray) -> bool:
        self.sent.append(np.array(action))
        self.t += 1
        if self.on_step is not None:
            self.on_step(self.t)
        return False


class StepSource:
    """Chunk c (0-based call index), requested at step t0: action j = [t0 + j, value(c)].

    Dim 0 names the step an action is meant for, so a correctly aligned loop executes
    action value t at step t. `sleep_s` slows each call (a slow policy)."""

    def __init__(self, horizon: int = 8, value=lambda c: c, sleep_s: float = 0.0):
        self.horizon = horizon
        self.value = value
        self.sleep_s = sleep_s
        self.calls: list[int] = []  # t0 of each call
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    def infer(self, obs: dict) -> dict:
        if self.sleep_s:
            time.sleep(self.sleep_s)
        c, t0 = len(self.calls), obs["step"]
        self.calls.append(t0)
        j = np.arange(self.horizon)
        actions = np.stack([t0 + j, np.full(self.horizon, self.value(c))], axis=1)
        return {"actions": actions.astype(np.float32)}  # (H, 2)


def sim_loop(source, **kw) -> ControlLoop:
    cfg = LoopConfig(control_hz=10.0, realtime=False, **kw)
    return ControlLoop(source, loose_safety(), cfg)


@pytest.mark.parametrize("blend", ["none", "ensemble"])
def test_stale_actions_are_dropped_so_every_action_runs_at_its_own_step(blend):
    src = StepSource(horizon=8)
    with sim_loop(src, execute_k=4, sim_latency_steps=2, blend=blend) as loop:
        robot = FakeRobot()
        stats = loop.run_episode(robot, 30)
    sent = np.stack(robot.sent)  # (30, 2)
    assert stats.underruns == 2  # the first chunk needs two steps
    np.testing.assert_array_equal(sent[:2], 0.0)  # hold: zero deltas
    np.testing.assert_allclose(sent[2:, 0], np.arange(2, 30))  # action t executed at step t
    assert stats.dropped_actions == 2 * stats.chunks_received  # 2 steps old on arrival
    assert src.resets == 1 and stats.steps == 30 and stats.policy_steps == 28


def test_ensemble_is_acts_weighted_mean_over_all_predictions_of_a_step():
    m = 0.5  # distinct weights: the i-th prediction (0 = oldest) weighs exp(-m i)
    src = StepSource(horizon=8, value=lambda c: 10.0 * c)
    with sim_loop(src, execute_k=4, sim_latency_steps=1, blend="ensemble", ensemble_m=m) as loop:
        robot = FakeRobot()
        loop.run_episode(robot, 25)
    sent = np.stack(robot.sent)
    for t in range(1, 25):  # reference: chunks arrived by step t that still cover it
        vals = [10.0 * c for c, t0 in enumerate(src.calls) if t0 + 1 <= t < t0 + 8]
        w = np.exp(-m * np.arange(len(vals)))
        assert sent[t, 1] == pytest.approx(np.dot(w, vals) / w.sum()), t
    assert max(len([1 for t0 in src.calls if t0 + 1 <= t < t0 + 8]) for t in range(25)) >= 3


def test_blending_reduces_the_jump_at_chunk_boundaries():
    def run(blend: str):
        src = StepSource(horizon=8, value=lambda c: 0.1 * (c % 2))  # chunks alternate 0, 0.1
        with sim_loop(src, execute_k=4, sim_latency_steps=2, blend=blend) as loop:
            return loop.run_episode(FakeRobot(), 40).summary()

    none, ens = run("none"), run("ensemble")
    assert none["boundaries"] >= 10 and ens["boundaries"] >= 10
    assert none["boundary_jump_per_dim"][1] == pytest.approx(0.1)  # every switch jumps fully
    assert ens["boundary_jump_per_dim"][1] < 0.6 * none["boundary_jump_per_dim"][1]
    assert none["boundary_jump_per_dim"][0] == pytest.approx(1.0)  # dim 0 steps by 1 always


def test_sync_requests_only_when_k_actions_are_spent_and_starts_chunks_at_arrival():
    src = StepSource(horizon=8)
    with sim_loop(src, execute_k=3, mode="sync", sim_latency_steps=2) as loop:
        robot = FakeRobot()
        stats = loop.run_episode(robot, 20)
    # cycle: request at t, two hold steps, then actions t0, t0+1, t0+2 of that chunk
    assert src.calls == [0, 5, 10, 15]
    sent = np.stack(robot.sent)
    np.testing.assert_array_equal(sent[2:5, 0], [0, 1, 2])  # not trimmed: the robot held
    assert stats.underruns == 8 and stats.dropped_actions == 0


def test_async_has_fewer_underruns_than_sync_with_a_slow_policy():
    """A 60 ms policy at 50 Hz (3 control steps): sync stalls every chunk, async overlaps."""
    results = {}
    for mode in ("sync", "async"):
        src = StepSource(horizon=10, sleep_s=0.06)
        cfg = LoopConfig(control_hz=50.0, execute_k=5, mode=mode)
        with ControlLoop(src, loose_safety(), cfg) as loop:
            results[mode] = loop.run_episode(FakeRobot(), 60).summary()
    sync, asyn = results["sync"], results["async"]
    assert sync["underruns"] >= 15  # ~3 holds per 5 actions
    assert asyn["underruns"] <= 8  # only while the first chunk is computed
    assert asyn["underruns"] < sync["underruns"] / 2
    assert asyn["policy_rate_hz"] > 1.3 * sync["policy_rate_hz"]
    for s in (sync, asyn):
        assert 40.0 < s["rate_hz"] < 55.0  # the loop keeps its pace either way
        assert 55.0 < s["latency_ms_p50"] < 200.0


def test_one_failed_request_is_survived_and_repeated_failures_stop_the_loop():
    class Flaky(StepSource):
        def infer(self, obs):
            if len(self.calls) == 1 and not getattr(self, "failed", False):
                self.failed = True
                raise RuntimeError("server hiccup")
            return super().infer(obs)

    with sim_loop(Flaky(), execute_k=4) as loop:
        stats = loop.run_episode(FakeRobot(), 20)
    assert stats.inference_errors == 1 and stats.policy_steps >= 18

    class Broken(StepSource):
        def infer(self, obs):
            raise RuntimeError("bad observation key 'state'")

    with sim_loop(Broken()) as loop, pytest.raises(InferenceError, match=r"3 inference.*'state'"):
        loop.run_episode(FakeRobot(), 20)


def test_watchdog_holds_while_the_real_server_is_paused(sim_checkpoint):
    from robofm.serve.client import PolicyClient
    from robofm.serve.server import serve_in_background
    from robofm.sim.env import sim_action_space
    from tests.serve.conftest import SERVE_CHUNK_LEN

    space = replace(sim_action_space(), chunk_len=SERVE_CHUNK_LEN)
    cfg = SafetyConfig.from_action_space(space, watchdog_ms=300.0)
    safety = SafetyLayer(cfg)
    hz, pause_at, resume_at, steps = 20.0, 10, 36, 56  # paused for 1.3 s
    with serve_in_background(sim_checkpoint, rate_limit_hz=0) as server:
        hooks = {pause_at: server.pause, resume_at: server.resume}
        robot = FakeRobot(lambda t: hooks.get(t, lambda: None)(), image_px=32, state_dim=4)
        with (
            PolicyClient(server.url, action_space=space, timeout_s=10.0) as client,
            ControlLoop(client, safety, LoopConfig(control_hz=hz, execute_k=4)) as loop,
        ):
            stats = loop.run_episode(robot, steps, initial_action=np.array([0, 0, 0, 1.0]))
    sent = np.stack(robot.sent)  # (steps, 4)
    fired = sorted({e.step for e in safety.events if e.reason == "watchdog"})
    assert stats.safety["watchdog"] == len(fired) > 0
    assert pause_at < fired[0] and fired[-1] < resume_at + 6  # only while paused (+ round trip)
    assert fired[0] >= pause_at + 0.3 * hz - 3  # not before the 300 ms deadline
    assert fired == list(range(fired[0], fired[-1] + 1))  # one stretch, until chunks flow
    np.testing.assert_array_equal(sent[fired, :3], 0.0)  # hold: no motion
    assert np.all(sent[fired, 3] == sent[fired[0] - 1, 3])  # the gripper stays as it was
    assert stats.underruns > 0
    moving = np.abs(sent[resume_at + 8 :, :3]).sum(axis=1) > 0  # policy actions flow again
    assert moving.mean() >= 0.6  # (an occasional underrun if the machine is busy)
    assert stats.chunks_received >= 6


def test_robofm_run_end_to_end_on_the_sim(sim_checkpoint, tmp_path, capsys):
    from robofm.serve import run
    from robofm.serve.server import serve_in_background

    out = tmp_path / "run"
    with serve_in_background(sim_checkpoint, rate_limit_hz=0) as server:
        argv = ["--sim", "lift", "--server", server.url, "--episodes", "1", "--max-steps", "12"]
        assert run.main([*argv, "--out", str(out), "--execute-k", "3"]) == 0
        fast = tmp_path / "fast"
        assert run.main([*argv, "--out", str(fast), "--sync", "--no-realtime"]) == 0
    body = json.loads((out / "run.json").read_text())
    assert body["success"]["n"] == 1 and 0.0 <= body["success"]["ci_low"] <= body["success"]["rate"]
    assert body["success"]["ci_high"] > 0.5  # one episode says little: a wide Wilson interval
    t = body["timing"]
    assert t["steps"] == body["episodes"][0]["steps"] <= 12
    assert t["target_hz"] == 10.0 and 8.0 < t["rate_hz"] < 11.0  # paced at the ActionSpace rate
    assert t["latency_ms_p50"] > 0 and t["latency_ms_p99"] >= t["latency_ms_p50"]
    assert t["chunks_received"] >= 3 and t["underruns"] <= 2
    for key in ("boundary_jump_mean", "underrun_frac", "policy_rate_hz", "safety"):
        assert key in t
    assert body["config"] == {**body["config"], "mode": "async", "execute_k": 3, "chunk_len": 4}
    assert (out / "run.png").stat().st_size > 1000
    fast_body = json.loads((fast / "run.json").read_text())
    assert fast_body["config"]["mode"] == "sync" and not fast_body["config"]["realtime"]
    assert fast_body["timing"]["underruns"] == 0  # simulated clock: chunks arrive at once
    printed = capsys.readouterr().out
    assert "success" in printed and "control rate" in printed and "underruns" in printed
