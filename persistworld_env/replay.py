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

    def window(self, start: int, steps: int) -> "ReplayEpisode":
        """The ``steps`` replay steps that begin after step ``start`` (0 = the episode's first frame)."""
        if start < 0 or steps < 1 or start + steps > self.steps:
            raise ValueError(f"episode {self.episode_index} has {self.steps} replay steps; cannot take {steps} "
                             f"from step {start}")
        if start == 0:
            first_frames, first_pose = self.first_frames, self.first_pose
        else:
            first_frames, first_pose = self.frames[start - 1, -1], self.poses[start - 1, -1]
        return ReplayEpisode(self.episode_index, self.instruction, first_frames, first_pose,
                             self.poses[start:start + steps], self.frames[start:start + steps])


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


def select_replay_episodes(reader: LeRobotEpisodes, candidates: Sequence[int], steps: int,
                           limit: int | None = None) -> list[int]:
    """The first ``limit`` (all when None) of ``candidates`` long enough for ``steps`` replay steps, in order."""
    eligible = [int(e) for e in candidates if max_replay_steps(reader.length(int(e))) >= steps]
    return eligible if limit is None else eligible[:limit]


def fidelity(generated: np.ndarray, truth: np.ndarray, lpips=None) -> dict[str, np.ndarray]:
    """Per-camera metrics averaged over the 4 frames of each step: arrays (B, steps, V).

    ``generated`` and ``truth`` are uint8 (B, steps, 4, V, H, W, 3). PSNR and SSIM always; LPIPS too
    when an ``lpips`` metric (:func:`persistworld_env.perceptual.build_lpips`) is given.
    """
    scores = {"psnr": psnr(generated, truth).mean(axis=2), "ssim": ssim(generated, truth).mean(axis=2)}
    if lpips is not None:
        scores["lpips"] = np.asarray(lpips(generated, truth), dtype=np.float64).mean(axis=2)
    return scores


def write_replay_video(engine: RolloutEngine, episode: ReplayEpisode, path, seed: int = 0) -> dict[str, np.ndarray]:
    """Replay all of ``episode``'s steps, write a truth-over-model mp4 to ``path``; returns its :func:`fidelity`."""
    from persistworld_env.visualization import comparison_frames, write_video

    generated = rollout_replay(engine, [episode], episode.steps, seeds=[seed])
    flat = lambda v: v.reshape(-1, *v.shape[2:])  # noqa: E731  (steps, 4, ...) -> (frames, ...)
    write_video(comparison_frames(flat(episode.frames), flat(generated[0])), path)
    return fidelity(generated, episode.frames[None])
