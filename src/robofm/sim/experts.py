"""Scripted experts: solve every task family from privileged simulator state.

An expert is a short list of phases (move the hand to a waypoint with the gripper open or
closed, or hold still while the gripper acts). Each step it outputs a clipped proportional
move toward the phase's waypoint. `noise` (0 = the clean script) perturbs the grasp point,
heights and speed per episode, adds per-step action noise and occasional pauses, so recorded
demonstrations differ from each other the way human teleoperation does.

Pushing is closed-loop: the push direction is re-aimed at the pad every step, and the expert
backs off and re-approaches when the object slips sideways off the finger face.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from robofm.sim.env import TabletopEnv
from robofm.sim.objects import HALF_HEIGHT
from robofm.sim.scene import RECEPTACLE_TOP_M

OPEN, CLOSED = 1.0, 0.0
CARRY_Z_M = 0.12  # fingertip height while carrying
PUSH_Z_M = 0.008  # fingertip height while pushing


@dataclass
class _Phase:
    name: str
    goal: Callable[[], np.ndarray]  # () -> (3,) hand waypoint (x, y, fingertip z), m
    gripper: float  # command while in this phase
    hold: int = 0  # > 0: stay this many steps instead of moving (gripper actuation)
    tol_m: float = 0.006  # waypoint reached within this distance
    max_steps: int = 40  # move on after this many steps regardless


class ScriptedExpert:
    """Privileged-state expert for one `TabletopEnv`; call `reset()` after each env reset."""

    def __init__(self, env: TabletopEnv, noise: float = 0.0, seed: int | None = None):
        self.env = env
        self.noise = float(noise)
        self.rng = np.random.default_rng(seed)

    def reset(self) -> None:
        """Plan the phases for the env's current task."""
        env, rng, n = self.env, self.rng, self.noise
        task = env.task
        self.speed = float(rng.uniform(0.03, 0.04)) if n > 0 else 0.035  # m per step
        self.grasp_offset = rng.normal(0.0, 0.003 * n, size=2)  # m, grasp point jitter
        self.height_jitter = float(rng.uniform(-0.004, 0.004) * n)
        self.k = 0
        self.count = 0
        self.pushing = task.family == "push"
        self.phases = self._plan()

    # ---- plans ---------------------------------------------------------------------------

    def _grasp_z(self, i: int) -> float:
        h = HALF_HEIGHT[self.env.task.objects[i].shape]
        return max(0.004, h - 0.014 + self.height_jitter)

    def _above(self, i: int, z: float) -> Callable[[], np.ndarray]:
        def goal() -> np.ndarray:
            p = self.env.object_pos(i)
            return np.array([p[0] + self.grasp_offset[0], p[1] + self.grasp_offset[1], z])

        return goal

    def _pick(self) -> list[_Phase]:
        gz = self._grasp_z(0)
        return [
            _Phase("reach", self._above(0, gz + 0.07), OPEN, tol_m=0.012),
            _Phase("descend", self._above(0, gz), OPEN, tol_m=0.004),
            _Phase("grasp", self._hold_here, CLOSED, hold=3),
        ]

    def _place_at(self, where: Callable[[], np.ndarray], release_z: float) -> list[_Phase]:
        def carry() -> np.ndarray:
            p = where()
            return np.array([p[0], p[1], CARRY_Z_M])

        def lower() -> np.ndarray:
            p = where()
            return np.array([p[0], p[1], release_z])

        return [
            _Phase("lift", self._lift_here(CARRY_Z_M), CLOSED, tol_m=0.015),
            _Phase("carry", carry, CLOSED, tol_m=0.006, max_steps=30),
            _Phase("lower", lower, CLOSED, tol_m=0.004),
            _Phase("release", self._hold_here, OPEN, hold=3),
            _Phase("retreat", self._lift_here(CARRY_Z_M), OPEN),
        ]

    def _plan(self) -> list[_Phase]:
        env, task = self.env, self.env.task
        if task.family in ("lift", "ground"):
            return [*self._pick(), _Phase("lift", self._lift_here(0.15), CLOSED, max_steps=30)]
        h = HALF_HEIGHT[task.target.shape]
        grip_below_centre = h - self._grasp_z(0)
        if task.family == "pick_place":
            kind = task.receptacles[task.goal].kind
            release = RECEPTACLE_TOP_M[kind] + h + 0.012 - grip_below_centre
            return [
                *self._pick(),
                *self._place_at(lambda: env.receptacle_pos(task.goal), release),
            ]
        if task.family == "stack":
            base_h = HALF_HEIGHT[task.objects[task.goal].shape]

            def base_top() -> np.ndarray:
                return env.object_pos(task.goal)

            release = base_h * 2 + h + 0.012 - grip_below_centre
            return [*self._pick(), *self._place_at(base_top, release)]
        if task.family == "push":
            return self._push_plan()
        raise KeyError(f"no expert for task family '{task.family}'")

    def _push_dir(self) -> np.ndarray:
        o = self.env.object_pos(0)[:2]
        g = self.env.receptacle_pos(self.env.task.goal)[:2]
        d = g - o
        return d / max(np.linalg.norm(d), 1e-6)

    def _push_plan(self) -> list[_Phase]:
        env = self.env
        back = HALF_HEIGHT[env.task.target.shape] + 0.012  # object radius + finger half width

        def behind(z: float, extra: float) -> Callable[[], np.ndarray]:
            def goal() -> np.ndarray:
                o, u = env.object_pos(0)[:2], self._push_dir()
                p = o - u * (back + extra)
                return np.array([p[0], p[1], z])

            return goal

        def push() -> np.ndarray:
            o, u = env.object_pos(0)[:2], self._push_dir()
            p = o - u * back + u * 0.015  # lead the object by 1.5 cm
            return np.array([p[0], p[1], PUSH_Z_M])

        self._push_goal = push
        return [
            _Phase("approach", behind(0.08, 0.03), CLOSED, tol_m=0.008),
            _Phase("lower", behind(PUSH_Z_M, 0.03), CLOSED, tol_m=0.005),
            _Phase("push", push, CLOSED, tol_m=0.0, max_steps=60),
            _Phase("retreat", self._lift_here(0.1), CLOSED),
        ]

    # ---- waypoint helpers --------------------------------------------------------------

    def _hold_here(self) -> np.ndarray:
        return self.env.hand_pos()

    def _lift_here(self, z: float) -> Callable[[], np.ndarray]:
        def goal() -> np.ndarray:
            p = self.env.hand_pos()
            return np.array([p[0], p[1], z])

        return goal

    # ---- acting ------------------------------------------------------------------------

    def act(self) -> np.ndarray:
        """The next action, float32 (D,) in the env's action space."""
        env = self.env
        hand = env.hand_pos()
        while True:
            phase = self.phases[min(self.k, len(self.phases) - 1)]
            if self.k >= len(self.phases):
                delta = np.zeros(3)
                break
            if phase.hold:
                if self.count >= phase.hold:
                    self._next()
                    continue
                delta = np.zeros(3)
                break
            if self.pushing and phase.name == "push" and self._push_done_or_slipped():
                continue
            err = phase.goal() - hand
            if np.linalg.norm(err) < phase.tol_m or self.count >= phase.max_steps:
                self._next()
                continue
            delta = err
            break
        self.count += 1
        speed = self.speed * (0.5 if phase.name == "push" else 1.0)
        norm = np.linalg.norm(delta)
        if norm > speed:
            delta = delta * (speed / norm)
        if self.noise > 0:
            delta = delta + self.rng.normal(0.0, 0.0015 * self.noise, size=3)
            if self.rng.random() < 0.03 * self.noise:
                delta = np.zeros(3)  # a hesitation
        space = env.robot_action_space
        action = np.zeros(space.dim, dtype=np.float32)
        action[:3] = delta
        action[-1] = phase.gripper
        return space.clip(action)

    def _next(self) -> None:
        self.k += 1
        self.count = 0

    def _push_done_or_slipped(self) -> bool:
        """Leave the push phase when the object is on the pad centre, or re-approach (jump
        back two phases) when the hand has drifted off the push line."""
        env = self.env
        o = env.object_pos(0)[:2]
        g = env.receptacle_pos(env.task.goal)[:2]
        if np.linalg.norm(g - o) < 0.015:
            self._next()
            return True
        u = self._push_dir()
        rel = env.hand_pos()[:2] - o
        lateral = abs(rel[0] * u[1] - rel[1] * u[0])
        if lateral > 0.016 or np.dot(rel, u) > 0:
            self.k = 0  # back up and approach again from behind
            self.count = 0
            return True
        return False


def run_expert(env: TabletopEnv, seed: int, noise: float = 0.0, **reset_options) -> dict:
    """Run one expert episode on `env` from `seed`; returns success, steps and the
    per-step observations and actions (for recording)."""
    obs, info = env.reset(seed=seed, options=reset_options or None)
    expert = ScriptedExpert(env, noise=noise, seed=seed + 1_000_003)
    expert.reset()
    observations, actions = [obs], []
    done = False
    while not done:
        a = expert.act()
        actions.append(a)
        obs, _, terminated, truncated, info = env.step(a)
        observations.append(obs)
        done = terminated or truncated
    return {
        "success": bool(info["success"]),
        "steps": len(actions),
        "observations": observations,
        "actions": actions,
        "info": info,
    }
