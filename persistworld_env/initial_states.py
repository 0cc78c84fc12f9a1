"""Where an episode of the world-model environment starts: the MiniDROID simulator, a dataset episode, or user frames."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from persistworld_env.constants import CAMERAS, POSE_DIM


@dataclass
class StartState:
    """A real first observation: one frame per camera, the raw 7-D pose, the instruction."""

    frames: np.ndarray  # (V, H, W, 3) uint8
    pose: np.ndarray  # (7,) raw
    instruction: str = ""
    info: dict[str, Any] = field(default_factory=dict)


def check_views(frames, height: int, width: int, what: str = "start frames") -> np.ndarray:
    """Validate one uint8 image per camera, (V, H, W, 3)."""
    frames = np.asarray(frames)
    expected = (len(CAMERAS), height, width, 3)
    if frames.dtype != np.uint8 or frames.shape != expected:
        raise ValueError(f"{what} must be uint8 {expected} (cameras {CAMERAS}), got {frames.dtype} {frames.shape}")
    return frames


def check_start(frames, pose, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate user-supplied start frames (V, H, W, 3) uint8 and a finite raw pose (7,)."""
    frames = check_views(frames, height, width)
    pose = np.asarray(pose, dtype=np.float32)
    if pose.shape != (POSE_DIM,) or not np.all(np.isfinite(pose)):
        raise ValueError(f"start pose must be {POSE_DIM} finite numbers (raw xyz, euler xyz, gripper), got {pose}")
    return frames, pose


class SimStarts:
    """Initial scenes from the MiniDROID simulator (the default): deterministic by seed."""

    def __init__(self, height: int, width: int) -> None:
        from persistworld_env.sim.simulator import MiniDROIDSimulator

        self.sim = MiniDROIDSimulator(height, width)

    def get(self, seed: int, task: str | None = None) -> StartState:
        self.sim.reset(seed, task)
        frames = self.sim.render()
        target = self.sim.task.target
        return StartState(np.stack([frames[c] for c in CAMERAS]), self.sim.pose(), self.sim.instruction,
                          {"source": "sim", "episode_seed": int(seed), "task": self.sim.task.family,
                           "target_position": self.sim.object_position(target).astype(np.float32).copy()})

    def close(self) -> None:
        self.sim.close()


class DatasetStarts:
    """Initial frames of the episodes of a LeRobot-layout dataset (MiniDROID or DROID)."""

    def __init__(self, root: str, height: int, width: int) -> None:
        from persistworld_env.data.lerobot_reader import LeRobotEpisodes

        self.reader = LeRobotEpisodes(root)
        self.height, self.width = height, width
        shape = self.reader.image_shape(CAMERAS[0])
        if shape != (height, width):
            raise ValueError(f"dataset {root} has {shape[0]}x{shape[1]} images, the model expects {height}x{width}")

    def draw(self, seed: int) -> int:
        """An episode drawn uniformly by ``seed`` (a reset without ``options["episode"]``, e.g. an autoreset)."""
        episodes = self.reader.episode_indices
        return int(episodes[np.random.default_rng(seed).integers(len(episodes))])

    def get(self, episode: int) -> StartState:
        episodes = self.reader.episode_indices
        if episode not in episodes:
            raise ValueError(f"episode {episode} is not in {self.reader.root} ({len(episodes)} episodes)")
        frames = np.stack([self.reader.load_frames(episode, cam)[0] for cam in CAMERAS])
        return StartState(frames, self.reader.load_pose(episode)[0], self.reader.instruction(episode),
                          {"source": "dataset", "episode": int(episode)})

    def close(self) -> None:
        pass
