"""Conventions shared by every part of PersistWorld (DESIGN.md section 3).

Camera names and order, frame rates and the pose layout live here and nowhere else.
"""
from __future__ import annotations

#: DROID camera names, in the order used at every API (observation dicts, stacked latents, videos).
CAMERAS: tuple[str, ...] = ("exterior_1_left", "exterior_2_left", "wrist_left")
EXTERIOR_CAMERAS: tuple[str, ...] = CAMERAS[:2]
WRIST_CAMERAS: tuple[str, ...] = CAMERAS[2:]

#: Recording / control rate of the data (DROID records at 15 Hz).
DATA_FPS: int = 15
#: Rate at which the world model runs: every 3rd recorded frame.
MODEL_FPS: int = 5
FRAME_STRIDE: int = DATA_FPS // MODEL_FPS  # 3 control ticks per model frame

#: One environment step: 4 new frames at 5 Hz (0.8 s).
FRAMES_PER_STEP: int = 4
#: Ctrl-World's temporal window: 6 sparse history frames + 5 frames to generate.
NUM_HISTORY_FRAMES: int = 6
NUM_CLIP_FRAMES: int = 5

#: Pose = xyz (m), euler xyz (rad), gripper (0 open .. 1 closed).
POSE_DIM: int = 7
POSE_NAMES: tuple[str, ...] = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")

#: Default image size of MiniDROID (DROID's 3:5 aspect, small for fast CPU world models).
DEFAULT_HEIGHT: int = 48
DEFAULT_WIDTH: int = 80

#: DROID feature names (LeRobot layout).
IMAGE_KEY_PREFIX = "observation.images."
STATE_CARTESIAN = "observation.state.cartesian_position"
STATE_GRIPPER = "observation.state.gripper_position"
STATE_JOINT = "observation.state.joint_position"
ACTION_CARTESIAN = "action.cartesian_position"
ACTION_GRIPPER = "action.gripper_position"
ACTION_JOINT = "action.joint_position"
#: Per-frame success label (bool): the task's success predicate holds in the state the frame shows.
#: Not under ``observation.`` so LeRobot policies never take it as an input (like ``is_terminal``).
FRAME_SUCCESS = "is_success"


def image_key(camera: str) -> str:
    """LeRobot feature name of a camera's video stream, e.g. ``observation.images.wrist_left``."""
    return IMAGE_KEY_PREFIX + camera
