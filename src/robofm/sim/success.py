"""Success checks from the physics state, one per task family.

They read object and receptacle poses from the simulator, never what a policy reports, and
require the object to be released and at rest where placement matters, so knocking an object
through the goal or holding it over the goal does not count.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from robofm.sim import scene
from robofm.sim.objects import HALF_HEIGHT

if TYPE_CHECKING:
    from robofm.sim.env import TabletopEnv

LIFT_HEIGHT_M = 0.05  # lift: the object's bottom this far above the table
REST_SPEED_M_S = 0.05  # placement: object slower than this
STACK_XY_TOL_M = 0.02  # stack: centre offset from the base's centre


def _lifted(env: TabletopEnv, i: int) -> bool:
    bottom = env.object_pos(i)[2] - HALF_HEIGHT[env.task.objects[i].shape]
    return bool(bottom > LIFT_HEIGHT_M)


def _resting(env: TabletopEnv, i: int) -> bool:
    return float(np.linalg.norm(env.object_vel(i))) < REST_SPEED_M_S and not env.touching_fingers(i)


def _on_receptacle(env: TabletopEnv, i: int, j: int) -> bool:
    """Object i's centre over receptacle j's surface, at the height of resting on it."""
    p, r = env.object_pos(i), env.receptacle_pos(j)
    kind = env.task.receptacles[j].kind
    dx, dy = p[0] - r[0], p[1] - r[1]
    if kind == "pad":
        inside = max(abs(dx), abs(dy)) < scene.PAD_HALF_M
    else:
        radius = scene.PLATE_RADIUS_M if kind == "plate" else scene.BOWL_RADIUS_M - 0.01
        inside = float(np.hypot(dx, dy)) < radius
    rest_z = scene.RECEPTACLE_TOP_M[kind] + HALF_HEIGHT[env.task.objects[i].shape]
    return bool(inside and abs(p[2] - rest_z) < 0.015)


def _stacked(env: TabletopEnv, top: int, base: int) -> bool:
    p, b = env.object_pos(top), env.object_pos(base)
    objs = env.task.objects
    want_z = b[2] + HALF_HEIGHT[objs[base].shape] + HALF_HEIGHT[objs[top].shape]
    xy = float(np.hypot(p[0] - b[0], p[1] - b[1]))
    return bool(xy < STACK_XY_TOL_M and abs(p[2] - want_z) < 0.01)


def check_success(env: TabletopEnv) -> bool:
    """True when the current task is done, judged from the physics state."""
    task = env.task
    family = task.family
    if family in ("lift", "ground"):
        return _lifted(env, 0)
    if family in ("pick_place", "push"):
        return _on_receptacle(env, 0, task.goal) and _resting(env, 0)
    if family == "stack":
        return _stacked(env, 0, task.goal) and _resting(env, 0)
    raise KeyError(f"no success check for task family '{family}'")
