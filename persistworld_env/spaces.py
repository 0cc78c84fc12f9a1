"""Observation and action spaces shared by ``MiniDROID-Sim-v0`` and ``PersistWorld-DROID-v0``.

A policy moves between the simulator and the learned world model without change because both
environments build their spaces here and validate actions with the same function.
"""
from __future__ import annotations

import numpy as np
from gymnasium import spaces

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP, POSE_DIM

POSE_KEY = "pose"


def observation_space(height: int, width: int, frames: int = FRAMES_PER_STEP) -> spaces.Dict:
    """Dict of the latest clip per camera, uint8 (frames, H, W, 3) (by default all 4 frames of a step; fewer: the
    last ones, see :func:`check_observed_frames`), plus the normalised 7-D pose."""
    frames = check_observed_frames(frames)
    obs = {cam: spaces.Box(0, 255, (frames, height, width, 3), np.uint8) for cam in CAMERAS}
    obs[POSE_KEY] = spaces.Box(-1.0, 1.0, (POSE_DIM,), np.float32)
    return spaces.Dict(obs)


def check_observed_frames(frames: int) -> int:
    """``observed_frames`` of an env: how many of a step's 4 new frames (the last ones) its observations hold.

    4 (the default) is the whole clip; 1 is the latest frame only, what an image policy usually sees, and lets the
    world-model env decode a quarter of the frames. Raises ValueError outside 1..4.
    """
    if isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or not 1 <= frames <= FRAMES_PER_STEP:
        raise ValueError(f"observed_frames must be an int in 1..{FRAMES_PER_STEP} (the last frames of each step's "
                         f"clip), got {frames!r}")
    return int(frames)


def action_space() -> spaces.Box:
    """A (4, 7) chunk of normalised absolute poses in [-1, 1] for the next 4 frames at 5 Hz."""
    return spaces.Box(-1.0, 1.0, (FRAMES_PER_STEP, POSE_DIM), np.float32)


class InvalidActionError(ValueError):
    """An action was rejected before it touched the environment's state."""


def validate_action(action, clip_tolerance: float = 0.05) -> np.ndarray:
    """Check an action chunk and return it as float32 (4, 7).

    Rejected (``InvalidActionError``): wrong shape, a non-numeric dtype, NaN/inf, or values outside
    [-1, 1] by more than ``clip_tolerance``. Values at most ``clip_tolerance`` outside the box (e.g. a
    policy's Gaussian sample at the edge) are clipped to [-1, 1].
    """
    arr = np.asarray(action)
    if arr.dtype == object or not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise InvalidActionError(f"action must be a float array of shape {(FRAMES_PER_STEP, POSE_DIM)}, got dtype {arr.dtype}")
    if arr.shape != (FRAMES_PER_STEP, POSE_DIM):
        raise InvalidActionError(
            f"action must have shape {(FRAMES_PER_STEP, POSE_DIM)} (4 future frames x 7-D normalised pose), got {arr.shape}")
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
        raise InvalidActionError("action contains NaN or inf")
    worst = float(np.abs(arr).max())
    if worst > 1.0 + clip_tolerance:
        raise InvalidActionError(
            f"action values must lie in [-1, 1] (normalised poses); got max |a| = {worst:.3f}")
    return np.clip(arr, -1.0, 1.0)
