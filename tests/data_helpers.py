"""Synthetic episodes and datasets for the data-pipeline tests (not a test module)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from persistworld_env.constants import CAMERAS
from persistworld_env.data.episode import EpisodeRecord
from persistworld_env.data.lerobot_writer import LeRobotWriter

INSTRUCTIONS = ("pick up the red cube", "put the cup in the bowl", "pick up the red cube", "stack the blue cube")
LENGTHS = (45, 60, 33, 51)
HEIGHT, WIDTH = 48, 80


def make_episode(seed: int, length: int = 45, height: int = HEIGHT, width: int = WIDTH,
                 instruction: str = "pick up the red cube", success: bool = True) -> EpisodeRecord:
    """Smooth poses and frames with coloured squares moving per camera (decode errors are visible)."""
    rng = np.random.default_rng(seed)
    t = np.arange(length, dtype=np.float64) / 15.0
    phase = rng.uniform(0, 2 * np.pi, size=6)
    cart = np.stack([0.5 + 0.1 * np.sin(t + phase[0]), 0.1 * np.cos(0.7 * t + phase[1]),
                     0.3 + 0.05 * np.sin(1.3 * t + phase[2]), np.pi - 0.1 * np.sin(t + phase[3]),
                     0.05 * np.sin(t + phase[4]), 0.3 * np.sin(0.5 * t + phase[5])], axis=1)
    grip = np.clip((t - 1.0) / 0.8, 0, 1)[:, None]
    joints = np.stack([0.2 * np.sin(t * (k + 1) / 3 + phase[k % 6]) for k in range(7)], axis=1)
    frames = {}
    for c, cam in enumerate(CAMERAS):
        bg = np.array([40 + 60 * c, 90, 140 - 40 * c], np.uint8)
        f = np.broadcast_to(bg, (length, height, width, 3)).copy()
        for k in range(length):
            x = int((k * (2 + c) + 7 * seed) % (width - 12))
            y = int((height - 12) * (0.5 + 0.4 * np.sin(k / 7 + seed)))
            f[k, y:y + 10, x:x + 10] = (230, 40, 40)
            x2 = (width - 20 - 2 * k) % (width - 10)
            f[k, 5:15, x2:x2 + 10] = (30, 200, 60)
        frames[cam] = f
    f32 = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return EpisodeRecord(frames=frames, cartesian_position=f32(cart), gripper_position=f32(grip),
                         joint_position=f32(joints), action_cartesian_position=f32(cart + 0.01),
                         action_gripper_position=f32(np.clip(grip + 0.1, 0, 1)), action_joint_position=f32(joints * 1.01),
                         instruction=instruction, task="pick", success=success, seed=seed, extra={"noise": 0.1 * seed})


def make_episodes() -> list[EpisodeRecord]:
    return [make_episode(i, n, instruction=ins, success=i % 2 == 0)
            for i, (n, ins) in enumerate(zip(LENGTHS, INSTRUCTIONS))]


def write_dataset(root: Path, episodes: list[EpisodeRecord], order: list[int] | None = None,
                  finalize: bool = True) -> LeRobotWriter:
    writer = LeRobotWriter(root)
    for i in order if order is not None else range(len(episodes)):
        writer.write_episode(i, episodes[i])
    if finalize:
        writer.finalize()
    return writer


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / max(mse, 1e-12)))
