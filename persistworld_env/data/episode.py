"""In-memory record of one robot episode, as produced by MiniDROID and written in the LeRobot layout."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from persistworld_env.constants import CAMERAS, DATA_FPS


@dataclass
class EpisodeRecord:
    """One episode at the data rate (15 Hz), T frames long.

    Attributes:
        frames: camera name -> uint8 array (T, H, W, 3), cameras in ``CAMERAS`` order.
        cartesian_position: (T, 6) float32 measured end-effector pose, xyz (m) + euler xyz (rad).
        gripper_position: (T, 1) float32 measured gripper closure, 0 open .. 1 closed.
        joint_position: (T, 7) float32 measured arm joint angles (rad).
        action_cartesian_position: (T, 6) commanded absolute end-effector pose.
        action_gripper_position: (T, 1) commanded gripper closure.
        action_joint_position: (T, 7) joint targets the controller derived from the command.
        instruction: natural-language task instruction.
        task: task family name (e.g. ``"pick"``).
        success: whether the episode ended in success (simulator predicate).
        seed: the seed that reproduces the episode.
        fps: recording rate.
        extra: free-form metadata (expert noise, scene description, ...), JSON-serialisable.
        frame_success: optional (T,) bool, whether the task's success predicate holds in the state each
            frame shows (written as the ``is_success`` column; None for data without per-frame labels).
    """

    frames: dict[str, np.ndarray]
    cartesian_position: np.ndarray
    gripper_position: np.ndarray
    joint_position: np.ndarray
    action_cartesian_position: np.ndarray
    action_gripper_position: np.ndarray
    action_joint_position: np.ndarray
    instruction: str
    task: str
    success: bool
    seed: int
    fps: int = DATA_FPS
    extra: dict = field(default_factory=dict)
    frame_success: np.ndarray | None = None

    @property
    def length(self) -> int:
        return int(self.cartesian_position.shape[0])

    @property
    def pose(self) -> np.ndarray:
        """(T, 7) measured pose: cartesian position + gripper."""
        return np.concatenate([self.cartesian_position, self.gripper_position], axis=1).astype(np.float32)

    @property
    def action_pose(self) -> np.ndarray:
        """(T, 7) commanded pose: cartesian position + gripper."""
        return np.concatenate([self.action_cartesian_position, self.action_gripper_position], axis=1).astype(np.float32)

    def validate(self) -> None:
        """Raise ``ValueError`` if shapes or dtypes are inconsistent."""
        t = self.length
        if set(self.frames) != set(CAMERAS):
            raise ValueError(f"frames must have exactly the cameras {CAMERAS}, got {sorted(self.frames)}")
        shapes = {c: f.shape for c, f in self.frames.items()}
        for cam, f in self.frames.items():
            if f.dtype != np.uint8 or f.ndim != 4 or f.shape[0] != t or f.shape[-1] != 3:
                raise ValueError(f"frames[{cam!r}] must be uint8 (T={t}, H, W, 3), got {f.dtype} {f.shape}")
        if len({s[1:] for s in shapes.values()}) != 1:
            raise ValueError(f"all cameras must share one resolution, got {shapes}")
        for name, dim in [("cartesian_position", 6), ("gripper_position", 1), ("joint_position", 7),
                          ("action_cartesian_position", 6), ("action_gripper_position", 1),
                          ("action_joint_position", 7)]:
            a = getattr(self, name)
            if a.shape != (t, dim):
                raise ValueError(f"{name} must have shape ({t}, {dim}), got {a.shape}")
            if not np.all(np.isfinite(a)):
                raise ValueError(f"{name} contains NaN or inf")
        if self.frame_success is not None:
            fs = np.asarray(self.frame_success)
            if fs.shape != (t,) or fs.dtype != np.bool_:
                raise ValueError(f"frame_success must be bool of shape ({t},), got {fs.dtype} {fs.shape}")
