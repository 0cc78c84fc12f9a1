"""Feature statistics and the pose normaliser.

:class:`RunningStats` accumulates min/max/mean/std/count over batches (Chan's parallel update), so
dataset stats stream over episodes. :class:`PoseNormalizer` maps the 7-D pose
(cartesian_position(6) + gripper_position(1)) to [-1, 1] with the dataset's 1st/99th percentiles, as
Ctrl-World does::

    normalize(x)   = clip(2 * (x - low) / (high - low) - 1, -1, 1)      (clip can be turned off)
    denormalize(y) = (y + 1) / 2 * (high - low) + low

Poses outside [low, high] are clipped to the boundary, so ``denormalize(normalize(x)) == x`` only
within the bounds. A degenerate dimension (``high - low < min_span``, e.g. a gripper that never
moved) is widened to ``center +- 1`` (1 m / 1 rad / full gripper range), so its constant value maps
to 0 and nothing divides by zero.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from persistworld_env.constants import POSE_DIM, POSE_NAMES, STATE_CARTESIAN, STATE_GRIPPER

Q_LOW, Q_HIGH = 0.01, 0.99


class RunningStats:
    """Streaming per-dimension min, max, mean, (population) std and count of (N, D) batches."""

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim)
        self.m2 = np.zeros(dim)
        self.min = np.full(dim, np.inf)
        self.max = np.full(dim, -np.inf)

    def update(self, x: np.ndarray) -> None:
        """Add a batch of rows, shape (N, D)."""
        x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
        if len(x) == 0:
            return
        mean, m2 = x.mean(0), ((x - x.mean(0)) ** 2).sum(0)
        self._combine(len(x), mean, m2, x.min(0), x.max(0))

    def merge(self, other: "RunningStats") -> None:
        """Fold in another accumulator over disjoint rows."""
        if other.count:
            self._combine(other.count, other.mean, other.m2, other.min, other.max)

    def _combine(self, n: int, mean: np.ndarray, m2: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total
        self.min, self.max = np.minimum(self.min, lo), np.maximum(self.max, hi)

    def to_dict(self) -> dict[str, list]:
        """LeRobot-style stats: lists of length D, ``count`` as ``[N]``."""
        std = np.sqrt(np.maximum(self.m2 / max(self.count, 1), 0.0))
        return {"min": self.min.tolist(), "max": self.max.tolist(), "mean": self.mean.tolist(),
                "std": std.tolist(), "count": [int(self.count)]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "RunningStats":
        """Rebuild an accumulator from :meth:`to_dict` output (nested shapes such as (3,1,1) are flattened)."""
        mean = np.asarray(d["mean"], dtype=np.float64).ravel()
        s = cls(mean.size)
        s.count = int(np.asarray(d["count"]).ravel()[0])
        s.mean, s.m2 = mean, np.asarray(d["std"], dtype=np.float64).ravel() ** 2 * s.count
        s.min = np.asarray(d["min"], dtype=np.float64).ravel()
        s.max = np.asarray(d["max"], dtype=np.float64).ravel()
        return s


def quantiles(x: np.ndarray, qs: Iterable[float] = (Q_LOW, Q_HIGH)) -> list[list[float]]:
    """Per-dimension quantiles of (N, D) rows (numpy's default linear interpolation)."""
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return [np.quantile(x, q, axis=0).tolist() for q in qs]


def image_stats(frames: np.ndarray) -> RunningStats:
    """Per-channel stats of uint8 frames (T, H, W, C) scaled to [0, 1], as LeRobot computes for videos.

    Exact, from per-channel histograms (fast for uint8). ``count`` is the number of frames, as in LeRobot.
    """
    values = np.arange(256, dtype=np.float64) / 255.0
    channels = frames.shape[-1]
    s = RunningStats(channels)
    s.count = int(frames.shape[0])
    for c in range(channels):
        hist = np.bincount(frames[..., c].ravel(), minlength=256).astype(np.float64)
        p = hist / hist.sum()
        nonzero = np.flatnonzero(hist)
        s.mean[c] = p @ values
        s.m2[c] = (p @ (values - s.mean[c]) ** 2) * s.count  # m2 / count = per-pixel variance
        s.min[c], s.max[c] = values[nonzero[0]], values[nonzero[-1]]
    return s


@dataclass
class PoseNormalizer:
    """Per-dimension affine map of 7-D poses to [-1, 1] from percentile bounds (see module docstring).

    Attributes:
        low, high: (7,) bounds (1st / 99th percentiles after degenerate-dimension widening).
        clip: clip normalised values to [-1, 1].
    """

    low: np.ndarray
    high: np.ndarray
    clip: bool = True
    min_span: float = 1e-6

    def __post_init__(self) -> None:
        low = np.asarray(self.low, dtype=np.float64).reshape(-1)
        high = np.asarray(self.high, dtype=np.float64).reshape(-1)
        if low.shape != (POSE_DIM,) or high.shape != (POSE_DIM,):
            raise ValueError(f"low/high must have {POSE_DIM} values, got {low.shape} and {high.shape}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))) or np.any(high < low):
            raise ValueError(f"invalid bounds: low={low.tolist()} high={high.tolist()}")
        degenerate = (high - low) < self.min_span
        center = (low + high) / 2
        self.low = np.where(degenerate, center - 1.0, low)
        self.high = np.where(degenerate, center + 1.0, high)

    def _bounds(self, x):
        if _is_torch(x):
            import torch
            return (torch.as_tensor(self.low, dtype=x.dtype, device=x.device),
                    torch.as_tensor(self.high, dtype=x.dtype, device=x.device))
        return self.low.astype(np.result_type(x, np.float32)), self.high.astype(np.result_type(x, np.float32))

    def normalize(self, pose):
        """Map raw poses (..., 7) (numpy array or torch tensor) to [-1, 1]."""
        low, high = self._bounds(pose)
        y = 2 * (pose - low) / (high - low) - 1
        return y.clip(-1, 1) if self.clip else y

    def denormalize(self, y):
        """Inverse of :meth:`normalize` (exact for poses inside the bounds)."""
        low, high = self._bounds(y)
        return (y + 1) / 2 * (high - low) + low

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored with datasets and every checkpoint)."""
        return {"type": "percentile_bounds", "q_low": Q_LOW, "q_high": Q_HIGH, "names": list(POSE_NAMES),
                "low": self.low.tolist(), "high": self.high.tolist(), "clip": self.clip}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PoseNormalizer":
        return cls(low=np.asarray(d["low"]), high=np.asarray(d["high"]), clip=bool(d.get("clip", True)))

    @classmethod
    def from_poses(cls, poses: np.ndarray, **kwargs: Any) -> "PoseNormalizer":
        """Bounds = 1st/99th percentiles of (N, 7) poses."""
        lo, hi = quantiles(np.asarray(poses).reshape(-1, POSE_DIM))
        return cls(low=np.asarray(lo), high=np.asarray(hi), **kwargs)

    @classmethod
    def from_stats(cls, stats: dict[str, Any], **kwargs: Any) -> "PoseNormalizer":
        """Bounds from a ``meta/stats.json`` dict holding q01/q99 of the cartesian and gripper features."""
        try:
            lo = list(stats[STATE_CARTESIAN]["q01"]) + list(stats[STATE_GRIPPER]["q01"])
            hi = list(stats[STATE_CARTESIAN]["q99"]) + list(stats[STATE_GRIPPER]["q99"])
        except KeyError as e:
            raise KeyError(f"stats lack q01/q99 for {STATE_CARTESIAN} / {STATE_GRIPPER}: missing {e}") from e
        return cls(low=np.asarray(lo), high=np.asarray(hi), **kwargs)

    @classmethod
    def from_dataset(cls, root: str | os.PathLike, **kwargs: Any) -> "PoseNormalizer":
        """From ``meta/stats.json`` q01/q99 when present, else by scanning every episode's parquet file."""
        from persistworld_env.data.lerobot_reader import LeRobotEpisodes

        reader = LeRobotEpisodes(Path(root), cameras=())
        stats = reader.stats()
        if stats is not None:
            try:
                return cls.from_stats(stats, **kwargs)
            except KeyError:
                pass
        poses = [reader.load_pose(ep) for ep in reader.episode_indices]
        if not poses:
            raise ValueError(f"dataset {root} has no episodes to compute pose bounds from")
        return cls.from_poses(np.concatenate(poses), **kwargs)


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch")
