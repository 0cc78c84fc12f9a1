"""Composable wrappers for RL libraries; they work on both ``PersistWorld-DROID-v0`` and ``MiniDROID-Sim-v0``."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP, POSE_DIM
from persistworld_env.spaces import POSE_KEY


def latest_frames(obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Latest frame of each camera channel-first (3, H, W), plus the pose; works batched (leading dims)."""
    out = {cam: np.moveaxis(obs[cam][..., -1, :, :, :], -1, -3).copy() for cam in CAMERAS}
    out[POSE_KEY] = obs[POSE_KEY]
    return out


def latest_frame_space(space: spaces.Dict) -> spaces.Dict:
    """Observation space of :func:`latest_frames`: 3-D uint8 images stable-baselines3 treats as images."""
    out = {}
    for cam in CAMERAS:
        _, h, w, c = space[cam].shape
        out[cam] = spaces.Box(0, 255, (c, h, w), np.uint8)
    out[POSE_KEY] = space[POSE_KEY]
    return spaces.Dict(out)


class LatestFrameObservation(gym.ObservationWrapper):
    """Keep only each camera's latest frame, channel-first (3, H, W) uint8, and the pose."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        self.observation_space = latest_frame_space(env.observation_space)

    def observation(self, observation):
        return latest_frames(observation)


class DeltaPoseAction(gym.ActionWrapper):
    """Relative end-effector actions: (4, 7) in [-1, 1] -> the env's absolute normalised poses.

    Dimensions 0-5 of frame k move the end effector by ``action * max_delta`` (m, rad) from the pose
    reached at frame k-1 (for k = 0 the current pose: at reset the env's raw ``info["raw_pose"]``, which the
    observed pose clips to the bounds); dimension 6 is the absolute gripper command mapped from [-1, 1] to
    [0, 1] (0 open). Absolute targets are clipped to the env's pose bounds.
    """

    def __init__(self, env: gym.Env, max_delta: tuple[float, ...] = (0.03, 0.03, 0.03, 0.05, 0.05, 0.1)) -> None:
        super().__init__(env)
        self.max_delta = np.asarray(max_delta, dtype=np.float64)
        self.action_space = spaces.Box(-1.0, 1.0, (FRAMES_PER_STEP, POSE_DIM), np.float32)
        self._pose: np.ndarray | None = None

    @property
    def normalizer(self):
        inner = self.env.unwrapped
        return inner.model.normalizer if hasattr(inner, "model") else inner.normalizer

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        if "raw_pose" not in info:  # the observed pose is clipped to the bounds, and a start may lie outside them
            raise ValueError("DeltaPoseAction needs the env's reset info to report the raw 7-D pose as "
                           "info['raw_pose'] (PersistWorld-DROID-v0 and MiniDROID-Sim-v0 do)")
        self._pose = np.asarray(info["raw_pose"], dtype=np.float64).copy()
        return obs, info

    def action(self, action):
        if self._pose is None:
            raise RuntimeError("reset() must be called before step()")
        action = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        poses, pose = [], self._pose.copy()
        for frame in action:
            pose = pose.copy()
            pose[:6] += frame[:6] * self.max_delta
            pose[6] = (frame[6] + 1.0) / 2.0
            poses.append(pose)
        normalized = np.clip(self.normalizer.normalize(np.stack(poses)), -1.0, 1.0).astype(np.float32)
        self._pose = self.normalizer.denormalize(normalized[-1].astype(np.float64))
        return normalized
