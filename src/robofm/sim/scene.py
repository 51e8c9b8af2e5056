"""The MuJoCo model of the tabletop scene, built once per env from an MJCF string.

The robot is an actuator-driven Cartesian gantry: the hand body slides on three joints
(x, y, z; optionally a yaw hinge), each tracked by a position actuator, with gravity
compensated. Its parallel gripper has two fingers on slide joints driven by position
actuators, so grasps hold by contact and friction, not by welding the object to the hand.

Scenes vary per episode without recompiling: the model has `MAX_OBJECTS` free-body object
slots, each carrying one geom per shape, and `MAX_RECEPTACLES` mocap receptacle slots, each
carrying a plate, a bowl and a pad. A reset switches on the geoms it needs (collision bits,
visible geom group) and parks the unused slots off the table with gravity compensated.

Frame: metres, z up, the table top at z = 0; the workspace is centred on the origin.
"""

from __future__ import annotations

import math

import numpy as np

MAX_OBJECTS = 6  # object slots in the model
MAX_RECEPTACLES = 2  # receptacle slots in the model
TIMESTEP_S = 0.002  # physics step
FINGER_MAX_M = 0.045  # finger travel from the centre line (full opening is twice this)
HAND_Z_RANGE_M = (0.003, 0.35)  # fingertip height limits above the table
HAND_XY_RANGE_M = 0.28  # hand x, y limits, +/- from the table centre
OBJECT_MASS_KG = 0.05
VISIBLE_GROUP = 0  # geom group rendered
HIDDEN_GROUP = 3  # geom group of switched-off slot geoms, not rendered
PARK_Z_M = -0.5  # where unused object slots wait, below the table top, out of view
TABLE_MATERIALS = ("table_wood", "table_gray", "table_checker", "table_dark")

# Receptacle geometry (m): radius of plate/bowl, half side of pad, and surface heights.
PLATE_RADIUS_M = 0.06
BOWL_RADIUS_M = 0.06
PAD_HALF_M = 0.055
RECEPTACLE_TOP_M = {"plate": 0.008, "bowl": 0.006, "pad": 0.0}  # pads are painted zones


def _xyaxes(pos: tuple[float, float, float], target: tuple[float, float, float]) -> str:
    """MJCF `xyaxes` for a camera at `pos` looking at `target` with world z up."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    if np.linalg.norm(right) < 1e-6:  # looking straight down: image x along world x
        right = np.array([1.0, 0.0, 0.0])
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return " ".join(f"{v:.5f}" for v in (*right, *up))


def _object_slot(i: int) -> str:
    c = 'contype="0" conaffinity="0" group="3" rgba="1 1 1 1"'
    fr = 'friction="0.4 0.01 0.001" condim="4"'
    inertia = 2.0 / 5.0 * OBJECT_MASS_KG * 0.02**2
    return f"""
    <body name="obj{i}" pos="{1.0 + 0.1 * i} 1.0 {PARK_Z_M}">
      <freejoint name="obj{i}_joint"/>
      <inertial pos="0 0 0" mass="{OBJECT_MASS_KG}" diaginertia="{inertia} {inertia} {inertia}"/>
      <geom name="obj{i}_cube" type="box" size="0.02 0.02 0.02" {c} {fr}/>
      <geom name="obj{i}_cylinder" type="cylinder" size="0.02 0.02" {c} {fr}/>
      <geom name="obj{i}_sphere" type="sphere" size="0.02" {c} {fr}/>
      <geom name="obj{i}_capsule" type="capsule" size="0.015 0.015" {c} {fr}/>
    </body>"""


def _receptacle_slot(i: int) -> str:
    c = 'contype="0" conaffinity="0" group="3" rgba="1 1 1 1"'
    walls = []
    for k in range(10):
        a = 2 * math.pi * k / 10
        r = BOWL_RADIUS_M - 0.004
        walls.append(
            f'<geom name="rec{i}_bowl_w{k}" type="box" size="0.004 0.021 0.013" '
            f'pos="{r * math.cos(a):.5f} {r * math.sin(a):.5f} 0.016" '
            f'euler="0 0 {a:.5f}" {c}/>'
        )
    wall_xml = "\n      ".join(walls)
    return f"""
    <body name="rec{i}" mocap="true" pos="{-1.0 - 0.2 * i} 1.0 0">
      <geom name="rec{i}_plate" type="cylinder" size="{PLATE_RADIUS_M} 0.004" pos="0 0 0.004" {c}/>
      <geom name="rec{i}_pad" type="box" size="{PAD_HALF_M} {PAD_HALF_M} 0.0005"
            pos="0 0 0.0005" {c}/>
      <geom name="rec{i}_bowl" type="cylinder" size="{BOWL_RADIUS_M} 0.003" pos="0 0 0.003" {c}/>
      {wall_xml}
    </body>"""


def build_xml(*, yaw: bool = False, offscreen_px: int = 640) -> str:
    """The scene's MJCF. `yaw` adds a hand yaw joint; `offscreen_px` bounds render size."""
    front = _xyaxes((0.0, -0.48, 0.42), (0.0, 0.03, 0.0))
    wrist = _xyaxes((-0.075, 0.0, 0.13), (0.025, 0.0, 0.0))
    yaw_joint = (
        '<joint name="hand_yaw" type="hinge" axis="0 0 1" range="-1.6 1.6" damping="0.5"/>'
        if yaw
        else ""
    )
    yaw_act = (
        '<position name="act_yaw" joint="hand_yaw" kp="20" kv="1" ctrlrange="-1.6 1.6"/>'
        if yaw
        else ""
    )
    z0, z1 = HAND_Z_RANGE_M
    xy = HAND_XY_RANGE_M
    finger = 'type="box" size="0.012 0.006 0.03" friction="1.5 0.02 0.001" condim="4"'
    objects = "".join(_object_slot(i) for i in range(MAX_OBJECTS))
    receptacles = "".join(_receptacle_slot(i) for i in range(MAX_RECEPTACLES))
    return f"""
<mujoco model="robofm_tabletop">
  <compiler angle="radian" autolimits="true"/>
  <default>
    <geom solref="0.004 1" solimp="0.95 0.99 0.001"/>
  </default>
  <option timestep="{TIMESTEP_S}" integrator="implicitfast" cone="elliptic" impratio="10"/>
  <visual>
    <global offwidth="{offscreen_px}" offheight="{offscreen_px}"/>
    <quality shadowsize="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
  </visual>
  <asset>
    <texture name="checker" type="2d" builtin="checker" rgb1="0.82 0.82 0.78"
             rgb2="0.55 0.55 0.52" width="64" height="64"/>
    <texture name="grain" type="2d" builtin="gradient" rgb1="0.78 0.62 0.42"
             rgb2="0.62 0.46 0.30" width="64" height="64"/>
    <material name="table_wood" texture="grain" texrepeat="3 3" reflectance="0"/>
    <material name="table_gray" rgba="0.62 0.62 0.64 1" reflectance="0"/>
    <material name="table_checker" texture="checker" texrepeat="6 6" reflectance="0"/>
    <material name="table_dark" rgba="0.28 0.24 0.22 1" reflectance="0"/>
    <material name="metal" rgba="0.55 0.57 0.6 1" reflectance="0"/>
  </asset>
  <worldbody>
    <light name="key" directional="true" pos="0 0 1.5" dir="0.25 0.3 -1"
           diffuse="0.55 0.55 0.55" specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="plane" size="2 2 0.1" pos="0 0 -0.75" rgba="0.3 0.32 0.35 1"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="0.36 0.36 0.02" pos="0 0 -0.02" material="table_wood"
          friction="0.4 0.01 0.001"/>
    <camera name="front" pos="0 -0.48 0.42" xyaxes="{front}" fovy="50"/>
    <body name="hand" pos="0 0 0" gravcomp="1">
      <joint name="hand_x" type="slide" axis="1 0 0" range="{-xy} {xy}" damping="5"/>
      <joint name="hand_y" type="slide" axis="0 1 0" range="{-xy} {xy}" damping="5"/>
      <joint name="hand_z" type="slide" axis="0 0 1" range="{z0} {z1}" damping="5"/>
      {yaw_joint}
      <geom name="palm" type="box" size="0.02 0.055 0.012" pos="0 0 0.074" material="metal"
            mass="0.3"/>
      <camera name="wrist" pos="-0.075 0 0.13" xyaxes="{wrist}" fovy="75"/>
      <site name="tcp" pos="0 0 0.02" size="0.004" rgba="1 0 0 0" group="4"/>
      <body name="finger_l" gravcomp="1">
        <joint name="finger_l" type="slide" axis="0 1 0" range="0 {FINGER_MAX_M}" damping="1"/>
        <geom name="finger_l" {finger} pos="0 0.006 0.032" material="metal" mass="0.05"/>
      </body>
      <body name="finger_r" gravcomp="1">
        <joint name="finger_r" type="slide" axis="0 -1 0" range="0 {FINGER_MAX_M}" damping="1"/>
        <geom name="finger_r" {finger} pos="0 -0.006 0.032" material="metal" mass="0.05"/>
      </body>
    </body>
    {objects}
    {receptacles}
  </worldbody>
  <contact>
    <exclude body1="finger_l" body2="finger_r"/>
  </contact>
  <actuator>
    <position name="act_x" joint="hand_x" kp="2000" kv="60" ctrlrange="{-xy} {xy}"
              forcerange="-40 40"/>
    <position name="act_y" joint="hand_y" kp="2000" kv="60" ctrlrange="{-xy} {xy}"
              forcerange="-40 40"/>
    <position name="act_z" joint="hand_z" kp="2000" kv="60" ctrlrange="{z0} {z1}"
              forcerange="-40 40"/>
    {yaw_act}
    <position name="act_finger_l" joint="finger_l" kp="300" kv="6"
              ctrlrange="0 {FINGER_MAX_M}" forcerange="-12 12"/>
    <position name="act_finger_r" joint="finger_r" kp="300" kv="6"
              ctrlrange="0 {FINGER_MAX_M}" forcerange="-12 12"/>
  </actuator>
</mujoco>
"""
