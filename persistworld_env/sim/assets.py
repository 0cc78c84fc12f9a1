"""The MiniDROID MJCF: a Franka Panda (meshes from the gymnasium-robotics wheel) on a table.

The scene is compiled once with a fixed set of object *slots* (cubes, a bowl, a cup, distractors);
per-episode randomisation (colours, sizes, poses, lighting) only edits the compiled model, so a reset
costs microseconds instead of a recompile.
"""
from __future__ import annotations

import functools
import importlib.util
import math
import re
from pathlib import Path

import mujoco
import numpy as np

#: Object slots in the compiled scene.
NUM_CUBES = 3
NUM_DISTRACTORS = 2
BOWL_SEGMENTS = 10
BOWL_RADIUS = 0.075
BOWL_WALL_HEIGHT = 0.035
TABLE_HALF = (0.55, 0.75)  # table top half extents (x, y); top surface at z = 0
TABLE_CENTER_X = 0.45

ARM_JOINTS = tuple(f"robot:panda0_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("robot:panda0_finger_joint1", "robot:panda0_finger_joint2")
EE_SITE = "end_effector"
FINGER_OPEN = 0.04  # finger joint travel (m) when fully open


# Cameras. Exterior: fixed, left-front and right-front of the workspace (world frame).
EXTERIOR_1_POS = (0.95, 0.48, 0.45)
EXTERIOR_2_POS = (0.95, -0.48, 0.45)
EXTERIOR_TARGET = (0.48, 0.0, 0.06)
# Wrist: on the hand (link7 frame), beside the fingers, looking just past the fingertips; the finger
# opening axis (hand y, 45 degrees off link7's) is the image's horizontal.
WRIST_CAM_POS = (0.0566, -0.0566, 0.10)
WRIST_CAM_TARGET = (0.0, 0.0, 0.27)
WRIST_CAM_RIGHT = (0.7071, 0.7071, 0.0)


def _vec(v) -> str:
    return " ".join(f"{x:.4f}" for x in v)


def _xyaxes(pos, target, right_hint=None) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` (MuJoCo cameras look along -z)."""
    forward = np.asarray(target, float) - np.asarray(pos, float)
    forward /= np.linalg.norm(forward)
    if right_hint is None:  # keep the horizon level
        right = np.cross(forward, [0.0, 0.0, 1.0])
    else:
        right = np.asarray(right_hint, float) - np.dot(right_hint, forward) * forward
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    return _vec(np.concatenate([right, up]))


class AssetError(RuntimeError):
    """The Franka assets could not be found."""


@functools.lru_cache(maxsize=1)
def franka_asset_dir() -> Path:
    """Folder holding the Franka MJCF fragments and meshes inside the gymnasium-robotics wheel.

    The package is located without importing it (its own environments do not load with MuJoCo 4).
    """
    spec = importlib.util.find_spec("gymnasium_robotics")
    if spec is None or not spec.submodule_search_locations:
        raise AssetError(
            "MiniDROID needs the Franka Panda meshes shipped in the 'gymnasium-robotics' wheel: "
            "pip install gymnasium-robotics"
        )
    root = Path(list(spec.submodule_search_locations)[0]) / "envs/assets/kitchen_franka/franka_assets"
    if not (root / "chain.xml").is_file():
        raise AssetError(f"Franka assets not found under {root}; reinstall gymnasium-robotics")
    return root


def _fragment(path: Path) -> str:
    """Body of a ``<mujocoinclude>`` file, comments removed."""
    text = re.sub(r"<!--.*?-->", "", path.read_text(), flags=re.S)
    inner = re.search(r"<mujocoinclude>(.*)</mujocoinclude>", text, flags=re.S)
    if inner is None:
        raise AssetError(f"unexpected MJCF fragment format in {path}")
    return inner.group(1)


def _mesh_assets(root: Path, low_poly: bool) -> dict[str, bytes]:
    meshes = {}
    for kind in ("visual", "collision"):
        for f in sorted((root / "meshes" / kind).glob("*.stl")):
            src = root / "meshes" / ("collision" if low_poly else kind) / f.name
            meshes[f"{kind}_{f.name}"] = src.read_bytes()
    return meshes


def _object_bodies() -> str:
    bodies = []
    for i in range(NUM_CUBES):
        bodies.append(
            f'<body name="cube{i}" pos="0 0 0.03"><freejoint name="cube{i}"/>'
            f'<geom name="cube{i}" type="box" size="0.022 0.022 0.022" mass="0.05" class="object"/></body>'
        )
    # Bowl: a thin base and a ring of wall segments.
    walls = []
    for k in range(BOWL_SEGMENTS):
        a = 2 * math.pi * k / BOWL_SEGMENTS
        x, y = BOWL_RADIUS * math.cos(a), BOWL_RADIUS * math.sin(a)
        half_len = BOWL_RADIUS * math.tan(math.pi / BOWL_SEGMENTS) + 0.004
        walls.append(
            f'<geom name="bowl_wall{k}" type="box" size="0.005 {half_len:.4f} {BOWL_WALL_HEIGHT / 2:.4f}" '
            f'pos="{x:.4f} {y:.4f} {BOWL_WALL_HEIGHT / 2 + 0.004:.4f}" euler="0 0 {a:.4f}" mass="0.02" class="object"/>'
        )
    bodies.append(
        '<body name="bowl" pos="0 0 0.01"><freejoint name="bowl"/>'
        f'<geom name="bowl_base" type="cylinder" size="{BOWL_RADIUS:.3f} 0.004" pos="0 0 0.004" mass="0.1" class="object"/>'
        + "".join(walls)
        + "</body>"
    )
    bodies.append(
        '<body name="cup" pos="0 0 0.05"><freejoint name="cup"/>'
        '<geom name="cup" type="cylinder" size="0.032 0.035" mass="0.15" friction="0.4 0.01 0.0002" class="object"/></body>'
    )
    for i in range(NUM_DISTRACTORS):
        bodies.append(
            f'<body name="distractor{i}" pos="0 0 0.03"><freejoint name="distractor{i}"/>'
            f'<geom name="distractor{i}" type="capsule" size="0.018 0.03" euler="1.5708 0 0" mass="0.05" class="object"/></body>'
        )
    return "\n".join(bodies)


def scene_xml(camera_fovy: float = 52.0, wrist_fovy: float = 75.0) -> str:
    """The complete MiniDROID MJCF text (meshes are supplied separately, see :func:`build_model`)."""
    root = franka_asset_dir()
    assets = _fragment(root / "assets.xml").replace('meshdir="franka_assets/meshes"', "")
    assets = re.sub(r"<option[^>]*/>", "", assets)  # our own timestep below
    # MuJoCo's asset dictionary is flat: mesh files are keyed "<kind>_<file>".
    assets = re.sub(r'file="(visual|collision)/', r'file="\1_', assets)
    chain = _fragment(root / "chain.xml")
    # Gravity compensation on the arm, as the real Franka's controller does.
    chain = re.sub(r'<body name="panda0_', '<body gravcomp="1" name="panda0_', chain)
    # Wrist camera on the hand, looking along the fingers (DROID mounts it above the gripper).
    chain = chain.replace(
        "<site name='end_effector'",
        f'<camera name="wrist_left" pos="{_vec(WRIST_CAM_POS)}" xyaxes="{_xyaxes(WRIST_CAM_POS, WRIST_CAM_TARGET, WRIST_CAM_RIGHT)}" '
        f'fovy="{wrist_fovy}"/>\n<site group="4" name=\'end_effector\'',
    )
    actuators = _fragment(root / "actuator.xml")
    return f"""
<mujoco model="minidroid">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{1.0 / (15 * 34):.8f}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <quality shadowsize="0" offsamples="0"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.45 0.45 0.45" specular="0 0 0"/>
    <global offwidth="640" offheight="480"/>
  </visual>
  {assets}
  <default>
    <default class="object">
      <geom friction="1.2 0.01 0.0002" solref="0.005 1" condim="4" rgba="0.8 0.2 0.2 1"/>
    </default>
  </default>
  <asset>
    <texture name="table_tex" type="2d" builtin="flat" rgb1="1 1 1" width="32" height="32" mark="random"
             markrgb="0.85 0.85 0.85" random="0.05"/>
    <material name="table" texture="table_tex" texrepeat="4 4" rgba="0.6 0.5 0.4 1"/>
    <material name="floor" rgba="0.3 0.3 0.32 1"/>
    <material name="wall" rgba="0.75 0.75 0.72 1"/>
  </asset>
  <worldbody>
    <light name="key" directional="true" pos="0.5 0.3 2" dir="-0.2 -0.1 -1" diffuse="0.5 0.5 0.5"
           specular="0.1 0.1 0.1" castshadow="false"/>
    <geom name="floor" type="plane" size="4 4 0.1" pos="0 0 -0.75" material="floor" contype="0" conaffinity="0"/>
    <geom name="wall" type="box" size="0.02 3 1.5" pos="-0.6 0 0.5" material="wall" contype="0" conaffinity="0"/>
    <geom name="table" type="box" size="{TABLE_HALF[0]} {TABLE_HALF[1]} 0.375"
          pos="{TABLE_CENTER_X} 0 -0.375" material="table"/>
    <camera name="exterior_1_left" pos="{_vec(EXTERIOR_1_POS)}" xyaxes="{_xyaxes(EXTERIOR_1_POS, EXTERIOR_TARGET)}" fovy="{camera_fovy}"/>
    <camera name="exterior_2_left" pos="{_vec(EXTERIOR_2_POS)}" xyaxes="{_xyaxes(EXTERIOR_2_POS, EXTERIOR_TARGET)}" fovy="{camera_fovy}"/>
    {chain}
    {_object_bodies()}
  </worldbody>
  <contact>
    <exclude body1="world" body2="panda0_link0"/>
    <exclude body1="world" body2="panda0_link1"/>
  </contact>
  {actuators}
</mujoco>
"""


@functools.lru_cache(maxsize=4)
def _compiled_spec(low_poly: bool) -> tuple[str, tuple[tuple[str, bytes], ...]]:
    return scene_xml(), tuple(_mesh_assets(franka_asset_dir(), low_poly).items())


def build_model(low_poly: bool = False) -> mujoco.MjModel:
    """Compile the MiniDROID scene. ``low_poly`` renders the arm with its collision meshes (faster)."""
    xml, assets = _compiled_spec(low_poly)
    return mujoco.MjModel.from_xml_string(xml, assets=dict(assets))
