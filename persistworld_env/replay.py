"""Replay of recorded episodes through the world model: the basis of validation and evaluation.

From an episode's first frame, the recorded poses drive the model for H steps (4 frames at 5 Hz each);
the recorded frames at the same instants are the ground truth.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from persistworld_env.constants import FRAME_STRIDE, FRAMES_PER_STEP
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.metrics import psnr, ssim
from persistworld_env.rollout import RolloutEngine


@dataclass
class ReplayEpisode:
    """What a replay needs from one recorded episode."""

    episode_index: int
    instruction: str
    first_frames: np.ndarray  # (V, H, W, 3) uint8
    first_pose: np.ndarray  # (7,) raw
    poses: np.ndarray  # (steps, 4, 7) raw poses of the frames to generate
    frames: np.ndarray  # (steps, 4, V, H, W, 3) ground truth

    @property
    def steps(self) -> int:
        return int(self.poses.shape[0])


def max_replay_steps(length: int) -> int:
    """Whole steps that fit in an episode of ``length`` recorded (15 Hz) frames."""
    return (length - 1) // (FRAME_STRIDE * FRAMES_PER_STEP)


def load_replay_episode(reader: LeRobotEpisodes, episode_index: int, steps: int | None = None) -> ReplayEpisode:
    """Cut episode ``episode_index`` into ``steps`` replay steps (as many as fit when None)."""
    length = reader.length(episode_index)
    available = max_replay_steps(length)
    steps = available if steps is None else int(steps)
    if steps < 1 or steps > available:
        raise ValueError(f"episode {episode_index} ({length} frames) fits {available} replay steps, asked {steps}")
    ticks = np.arange(steps * FRAMES_PER_STEP + 1) * FRAME_STRIDE  # 5 Hz instants, tick 0 = first frame
    pose = reader.load_pose(episode_index)[ticks]
    frames = np.stack([reader.load_frames(episode_index, cam)[ticks] for cam in reader.cameras], axis=1)
    return ReplayEpisode(
        episode_index=episode_index, instruction=reader.instruction(episode_index),
        first_frames=frames[0], first_pose=pose[0],
        poses=pose[1:].reshape(steps, FRAMES_PER_STEP, -1),
        frames=frames[1:].reshape(steps, FRAMES_PER_STEP, *frames.shape[1:]),
    )


def rollout_replay(engine: RolloutEngine, episodes: Sequence[ReplayEpisode], steps: int,
                   seeds: Sequence[int] | None = None, use_instructions: bool = True) -> np.ndarray:
    """Generated frames (B, steps, 4, V, H, W, 3) of a batched replay of ``episodes``."""
    if any(ep.steps < steps for ep in episodes):
        raise ValueError(f"every episode must have at least {steps} replay steps")
    engine.reset(np.stack([ep.first_frames for ep in episodes]), np.stack([ep.first_pose for ep in episodes]),
                 [ep.instruction for ep in episodes] if use_instructions else None, seeds)
    out = [engine.step(np.stack([ep.poses[k] for ep in episodes])).frames for k in range(steps)]
    return np.stack(out, axis=1)


def fidelity(generated: np.ndarray, truth: np.ndarray) -> dict[str, np.ndarray]:
    """Per-camera metrics averaged over the 4 frames of each step: arrays (B, steps, V)."""
    return {"psnr": psnr(generated, truth).mean(axis=2), "ssim": ssim(generated, truth).mean(axis=2)}
