"""`TabletopEnv`: the language-conditioned tabletop benchmark as a `gymnasium.Env`.

Observation (a dict, the names the Policy contract uses):
- "images": {"front": uint8 (Hpx, Wpx, 3), "wrist": uint8 (Hpx, Wpx, 3)}
- "state": float32 (S,) = hand x, y, z (m; z is fingertip height above the table),
  [yaw (rad)], gripper opening (m, 0 closed to 0.09 open)
- "prompt": str, the instruction (or the override passed to `reset`)

Action: float32 (D,) = dx, dy, dz (m per control step, end-effector frame = world frame),
[dyaw (rad)], gripper (absolute, 0 closed .. 1 open). `env.robot_action_space` is the
`ActionSpace` contract; out-of-bound actions are clipped to it (or rejected with
`invalid_action="raise"`); wrong shapes and NaN always raise `ActionError`.

The episode ends (`terminated`) when the task's success check, computed from the physics
state, holds; it is truncated after the family's step limit.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Any, ClassVar

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym
import mujoco
import numpy as np

from robofm.errors import ConfigError, RobofmError
from robofm.sim import scene
from robofm.sim.objects import COLORS, HALF_HEIGHT, SHAPES
from robofm.sim.success import check_success
from robofm.sim.tasks import SPLITS, TASKS, TaskSpec, check_split, get_family, sample_task
from robofm.spaces import ActionSpace, StateSpace

ROBOT = "robofm_sim_gripper"
CAMERAS = ("front", "wrist")
TASK_NAMES = tuple(TASKS)
MAX_DELTA_M = 0.05  # per-step translation bound
MAX_DYAW_RAD = 0.3  # per-step yaw bound
DEFAULT_CHUNK_LEN = 10


class ActionError(RobofmError, ValueError):
    """An action the env refuses: wrong shape, NaN or inf, or out of bounds under "raise"."""


class SimError(RobofmError, RuntimeError):
    """The simulation left its valid state (non-finite physics)."""


@dataclass(frozen=True)
class SimConfig:
    """How to build a `TabletopEnv`."""

    task: str = "pick_place"  # task family, a key of robofm.sim.tasks.TASKS
    split: str = "train"  # "train", "novel_object", "novel_instruction" or "novel_scene"
    image_size: int = 96  # Hpx = Wpx of every camera
    cameras: tuple[str, ...] = CAMERAS  # cameras rendered into the observation
    control_hz: float = 10.0  # actions per second
    yaw: bool = False  # add a hand yaw dimension to state and action
    max_steps: int = 0  # episode limit; 0 = the family's default
    invalid_action: str = "clip"  # out-of-bound actions: "clip" to the ActionSpace or "raise"


def sim_action_space(yaw: bool = False, control_hz: float = 10.0) -> ActionSpace:
    """The sim robot's action contract (end-effector deltas plus an absolute gripper)."""
    names = ("dx", "dy", "dz", *(("dyaw",) if yaw else ()), "gripper")
    units = ("m", "m", "m", *(("rad",) if yaw else ()), "1")
    mode = ("delta",) * (len(names) - 1) + ("absolute",)
    low = (-MAX_DELTA_M,) * 3 + ((-MAX_DYAW_RAD,) if yaw else ()) + (0.0,)
    high = (MAX_DELTA_M,) * 3 + ((MAX_DYAW_RAD,) if yaw else ()) + (1.0,)
    return ActionSpace(
        robot=ROBOT,
        names=names,
        units=units,
        mode=mode,
        frame="end_effector",
        low=low,
        high=high,
        control_hz=control_hz,
        chunk_len=DEFAULT_CHUNK_LEN,
        gripper_dims=(len(names) - 1,),
        gripper_closed=0.0,
        gripper_open=1.0,
    )


def sim_state_space(yaw: bool = False) -> StateSpace:
    """The sim robot's proprio contract."""
    names = ("x", "y", "z", *(("yaw",) if yaw else ()), "gripper_width")
    units = ("m", "m", "m", *(("rad",) if yaw else ()), "m")
    return StateSpace(robot=ROBOT, names=names, units=units)


def _make_renderer(model: mujoco.MjModel, size: int) -> mujoco.Renderer:
    try:
        return mujoco.Renderer(model, size, size)
    except Exception as e:
        backend = os.environ.get("MUJOCO_GL", "")
        raise SimError(
            f"cannot create an offscreen OpenGL context with MUJOCO_GL={backend} ({e}); "
            "install Mesa's EGL (Debian: libegl1 libgl1-mesa-dri) or use MUJOCO_GL=osmesa "
            "with libosmesa6, or build the env with cameras=() for physics only"
        ) from e


class TabletopEnv(gym.Env):
    """A MuJoCo tabletop with a gantry gripper, objects and receptacles; see module doc."""

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, config: SimConfig = SimConfig(), render_mode: str | None = None, **kw):
        cfg = replace(config, **kw) if kw else config
        self.family = get_family(cfg.task)
        check_split(cfg.split)
        for cam in cfg.cameras:
            if cam not in CAMERAS:
                raise ConfigError(f"unknown camera '{cam}'; valid cameras: {', '.join(CAMERAS)}")
        if cfg.invalid_action not in ("clip", "raise"):
            raise ConfigError(f"invalid_action is {cfg.invalid_action!r}; use 'clip' or 'raise'")
        if not 16 <= cfg.image_size <= 512:
            raise ConfigError(f"image_size is {cfg.image_size}; use 16..512 px")
        self.config = cfg
        self.render_mode = render_mode
        self.max_steps = cfg.max_steps or self.family.max_steps
        self.robot_action_space = sim_action_space(cfg.yaw, cfg.control_hz)
        self.robot_state_space = sim_state_space(cfg.yaw)
        self.model = mujoco.MjModel.from_xml_string(scene.build_xml(yaw=cfg.yaw))
        self.data = mujoco.MjData(self.model)
        self.substeps = max(1, round(1.0 / (cfg.control_hz * self.model.opt.timestep)))
        self._ids()
        size = (cfg.image_size, cfg.image_size, 3)
        self.observation_space = gym.spaces.Dict(
            {
                "images": gym.spaces.Dict(
                    {c: gym.spaces.Box(0, 255, size, np.uint8) for c in cfg.cameras}
                ),
                "state": gym.spaces.Box(-np.inf, np.inf, (self.robot_state_space.dim,), np.float32),
                "prompt": gym.spaces.Text(
                    max_length=512, charset=frozenset(map(chr, range(32, 127)))
                ),
            }
        )
        a = self.robot_action_space
        self.action_space = gym.spaces.Box(a.low_array, a.high_array, dtype=np.float32)
        self._renderer: mujoco.Renderer | None = None
        self._vis = mujoco.MjvOption()
        self._vis.geomgroup[:] = 0
        self._vis.geomgroup[scene.VISIBLE_GROUP] = 1
        self.task: TaskSpec | None = None
        self.prompt = ""
        self.steps = 0
        self._target = np.zeros(4)  # commanded x, y, z, yaw

    # ---- model bookkeeping -------------------------------------------------------------

    def _ids(self) -> None:
        m = self.model
        gid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, n)  # noqa: E731
        bid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_BODY, n)  # noqa: E731
        jid = lambda n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, n)  # noqa: E731
        self._obj_body = [bid(f"obj{i}") for i in range(scene.MAX_OBJECTS)]
        self._obj_geoms = [
            {s: gid(f"obj{i}_{s}") for s in SHAPES} for i in range(scene.MAX_OBJECTS)
        ]
        self._obj_qadr = [m.jnt_qposadr[jid(f"obj{i}_joint")] for i in range(scene.MAX_OBJECTS)]
        self._obj_vadr = [m.jnt_dofadr[jid(f"obj{i}_joint")] for i in range(scene.MAX_OBJECTS)]
        self._rec_body = [bid(f"rec{i}") for i in range(scene.MAX_RECEPTACLES)]
        self._rec_mocap = [m.body_mocapid[b] for b in self._rec_body]
        self._rec_geoms = []
        for i in range(scene.MAX_RECEPTACLES):
            walls = [gid(f"rec{i}_bowl_w{k}") for k in range(10)]
            self._rec_geoms.append(
                {
                    "plate": [gid(f"rec{i}_plate")],
                    "pad": [gid(f"rec{i}_pad")],
                    "bowl": [gid(f"rec{i}_bowl"), *walls],
                }
            )
        self._finger_geoms = (gid("finger_l"), gid("finger_r"))
        self._table_geom = gid("table")
        self._hand_q = [m.jnt_qposadr[jid(n)] for n in ("hand_x", "hand_y", "hand_z")]
        self._yaw_q = m.jnt_qposadr[jid("hand_yaw")] if self.config.yaw else None
        self._finger_q = [m.jnt_qposadr[jid(n)] for n in ("finger_l", "finger_r")]
        names = [mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_ACTUATOR, i) for i in range(m.nu)]
        self._act = {n: i for i, n in enumerate(names)}
        self._materials = {
            n: mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_MATERIAL, n) for n in scene.TABLE_MATERIALS
        }

    def _set_geom(self, g: int, on: bool, rgba: tuple | None = None, solid: bool = True) -> None:
        m = self.model
        m.geom_contype[g] = 1 if on and solid else 0
        m.geom_conaffinity[g] = 1 if on and solid else 0
        m.geom_group[g] = scene.VISIBLE_GROUP if on else scene.HIDDEN_GROUP
        if rgba is not None:
            m.geom_rgba[g] = rgba

    def _build_scene(self, task: TaskSpec) -> None:
        m, d = self.model, self.data
        mujoco.mj_resetData(m, d)
        for i in range(scene.MAX_OBJECTS):
            q = self._obj_qadr[i]
            active = i < len(task.objects)
            for shape, g in self._obj_geoms[i].items():
                on = active and task.objects[i].shape == shape
                self._set_geom(g, on, COLORS[task.objects[i].color] if on else None)
            m.body_gravcomp[self._obj_body[i]] = 0.0 if active else 1.0
            if active:
                x, y = task.object_xy[i]
                z = HALF_HEIGHT[task.objects[i].shape] + 0.0005
            else:
                x, y, z = 1.0 + 0.1 * i, 1.0, scene.PARK_Z_M
            d.qpos[q : q + 7] = (x, y, z, 1.0, 0.0, 0.0, 0.0)
        for j in range(scene.MAX_RECEPTACLES):
            active = j < len(task.receptacles)
            for kind, geoms in self._rec_geoms[j].items():
                on = active and task.receptacles[j].kind == kind
                rgba = COLORS[task.receptacles[j].color] if on else None
                for g in geoms:
                    self._set_geom(g, on, rgba, solid=kind != "pad")
            xy = task.receptacle_xy[j] if active else (-1.0 - 0.2 * j, 1.0)
            d.mocap_pos[self._rec_mocap[j]] = (*xy, 0.0)
        for b in (*self._obj_body, *self._rec_body):  # the broadphase filters by body bits too
            geoms = np.flatnonzero(m.geom_bodyid == b)
            m.body_contype[b] = int(np.bitwise_or.reduce(m.geom_contype[geoms]))
            m.body_conaffinity[b] = int(np.bitwise_or.reduce(m.geom_conaffinity[geoms]))
        m.geom_matid[self._table_geom] = self._materials[task.table_material]
        m.light_diffuse[0] = (task.light_diffuse,) * 3
        direction = np.asarray(task.light_dir, float)
        m.light_dir[0] = direction / np.linalg.norm(direction)
        self._target[:3] = task.hand_xyz
        self._target[3] = 0.0
        for k, q in enumerate(self._hand_q):
            d.qpos[q] = task.hand_xyz[k]
        for q in self._finger_q:
            d.qpos[q] = scene.FINGER_MAX_M
        self._apply_ctrl(self._target, 1.0)
        mujoco.mj_forward(m, d)
        for _ in range(40):  # let objects settle onto the table
            mujoco.mj_step(m, d)

    def _apply_ctrl(self, target: np.ndarray, gripper: float) -> None:
        c, a = self.data.ctrl, self._act
        c[a["act_x"]], c[a["act_y"]], c[a["act_z"]] = target[:3]
        if self.config.yaw:
            c[a["act_yaw"]] = target[3]
        c[a["act_finger_l"]] = c[a["act_finger_r"]] = gripper * scene.FINGER_MAX_M

    # ---- privileged state (experts, success checks, tests) -----------------------------

    def object_pos(self, i: int) -> np.ndarray:
        """(3,) world position of object slot `i`, m."""
        q = self._obj_qadr[i]
        return self.data.qpos[q : q + 3].copy()

    def object_vel(self, i: int) -> np.ndarray:
        """(3,) linear velocity of object slot `i`, m/s."""
        v = self._obj_vadr[i]
        return self.data.qvel[v : v + 3].copy()

    def receptacle_pos(self, j: int) -> np.ndarray:
        """(3,) world position of receptacle slot `j` (its base, on the table), m."""
        return self.data.mocap_pos[self._rec_mocap[j]].copy()

    def hand_pos(self) -> np.ndarray:
        """(3,) hand position: x, y and fingertip height above the table, m."""
        return self.data.qpos[self._hand_q].copy()

    def gripper_width(self) -> float:
        """Distance between the finger pads, m."""
        return float(sum(self.data.qpos[q] for q in self._finger_q))

    def touching_fingers(self, i: int) -> bool:
        """True if object slot `i` is in contact with either finger."""
        d = self.data
        geom = self._obj_geoms[i][self.task.objects[i].shape]
        for c in d.contact[: d.ncon]:
            pair = (c.geom1, c.geom2)
            if geom in pair and (self._finger_geoms[0] in pair or self._finger_geoms[1] in pair):
                return True
        return False

    # ---- gymnasium API -------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        """Start an episode. `options`: "instruction" replaces the text the policy sees (the
        task and its success check stay); "task" gives an explicit `TaskSpec`."""
        super().reset(seed=seed)
        options = options or {}
        task = options.get("task")
        if task is None:
            # A seed names a scene per (family, split): the same seed in another split is a
            # different scene, so novel-split evaluation never replays training scenes.
            rng = self.np_random
            if seed is not None:
                salt = (TASK_NAMES.index(self.family.name), SPLITS.index(self.config.split))
                rng = np.random.default_rng((int(seed), *salt))
            task = sample_task(self.family.name, self.config.split, rng)
        self.task = task
        self.prompt = str(options.get("instruction") or task.instruction)
        self.steps = 0
        self._build_scene(task)
        return self._obs(), self._info(False, False)

    def step(self, action):
        if self.task is None:
            raise SimError("step() called before reset()")
        a = self._check_action(action)
        clipped = bool(np.any(a != np.asarray(action, dtype=np.float32)))
        start = self._target.copy()
        self._target[:3] += a[:3]
        lim = scene.HAND_XY_RANGE_M
        z0, z1 = scene.HAND_Z_RANGE_M
        self._target[:3] = np.clip(self._target[:3], (-lim, -lim, z0), (lim, lim, z1))
        if self.config.yaw:
            self._target[3] = np.clip(self._target[3] + a[3], -1.6, 1.6)
        ramp = max(1, self.substeps // 2)  # move the setpoint smoothly over half a step
        for k in range(self.substeps):
            frac = min(1.0, (k + 1) / ramp)
            self._apply_ctrl(start + frac * (self._target - start), float(a[-1]))
            mujoco.mj_step(self.model, self.data)
        if not np.all(np.isfinite(self.data.qpos)):
            raise SimError(f"physics diverged at step {self.steps} of task '{self.task.family}'")
        self.steps += 1
        success = check_success(self)
        truncated = self.steps >= self.max_steps and not success
        return self._obs(), float(success), success, truncated, self._info(success, clipped)

    def _check_action(self, action) -> np.ndarray:
        space = self.robot_action_space
        a = np.asarray(action, dtype=np.float32)
        if a.shape != (space.dim,):
            raise ActionError(
                f"action has shape {a.shape}; expected ({space.dim},) = {', '.join(space.names)}"
            )
        bad = ~np.isfinite(a)
        if bad.any():
            names = [space.names[i] for i in np.flatnonzero(bad)]
            raise ActionError(f"action has non-finite values in {', '.join(names)}: {a.tolist()}")
        out = space.clip(a)
        if self.config.invalid_action == "raise" and np.any(out != a):
            names = [space.names[i] for i in np.flatnonzero(out != a)]
            raise ActionError(
                f"action out of bounds in {', '.join(names)}: {a.tolist()}; "
                f"bounds {list(space.low)} .. {list(space.high)}"
            )
        return out

    def state(self) -> np.ndarray:
        """(S,) float32 proprio state; see `robot_state_space` for names and units."""
        parts = [self.data.qpos[self._hand_q]]
        if self.config.yaw:
            parts.append([self.data.qpos[self._yaw_q]])
        parts.append([self.gripper_width()])
        return np.concatenate(parts).astype(np.float32)

    def _obs(self) -> dict[str, Any]:
        images = {c: self.render_camera(c) for c in self.config.cameras}
        return {"images": images, "state": self.state(), "prompt": self.prompt}

    def _info(self, success: bool, clipped: bool) -> dict[str, Any]:
        t = self.task
        return {
            "success": success,
            "task": t.family,
            "split": t.split,
            "instruction": t.instruction,
            "target": t.target.name,
            "clipped": clipped,
            "step": self.steps,
        }

    def render_camera(self, camera: str, size: int | None = None) -> np.ndarray:
        """uint8 (size, size, 3) image from `camera` ("front" or "wrist")."""
        size = size or self.config.image_size
        r = self._renderer
        if r is None or (r.height, r.width) != (size, size):
            if r is not None:
                r.close()
            r = self._renderer = _make_renderer(self.model, size)
            for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
                r.scene.flags[flag] = 0
        r.update_scene(self.data, camera=camera, scene_option=self._vis)
        return r.render()

    def render(self):
        """The front camera at the observation size (render_mode "rgb_array")."""
        return self.render_camera("front")

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
