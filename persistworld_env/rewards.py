"""Multi-view perceptual rewards of candidate continuations against the ground-truth future.

For a group of K candidates, each C clips long (4 frames per clip, V cameras):

1. per camera and frame: PSNR (data range 1, capped at ``PSNR_CAP_DB``), SSIM, LPIPS against the truth;
2. per clip: the mean over its 4 frames -> arrays (K, C, V) per metric;
   ``psnr_moving`` (off by default) is instead the PSNR of the clip's *moving region*: the pixels that
   change in the true clip from the true frame before it (:func:`~persistworld_env.metrics.moving_region`:
   more than ``MOTION_THRESHOLD`` of 255, grown by ``MOTION_DILATION`` px), where the arm and what it moves
   are; one MSE over the clip's frames there (capped like PSNR), undefined for a still clip;
3. per candidate: the mean over its clips -> (K, V) (clips with an undefined value skipped);
4. each (metric, camera) column normalised within the group: z = s (m - mean_K) / (std_K + 1e-4), with
   s = +1 where higher is better (PSNR, SSIM) and -1 for LPIPS; z = 0 where the value is undefined (no clip
   of the continuation moves in that camera);
5. R = sum_{m,v} w_m w_v z_{m,v} / sum_{m,v} w_m w_v, the weights of :class:`RewardWeights`.

Since the weights factor, R is the camera-weighted mean of the per-view rewards
R_v = sum_m w_m z_{m,v} / sum_m w_m, which post-training can also use on their own (``--per-view-rewards``:
each camera's part of a clip is credited with that camera's reward).

Why a moving region: on the exterior cameras the arm covers a few percent of the frame, and the
candidates' full-frame PSNR ranks them by differences in the still background (measured in
docs/results_notes.md), which say nothing of where the arm went.

Defaults weigh PSNR, SSIM and LPIPS and the three cameras equally. Without LPIPS (``--lpips off``) the
LPIPS weight is dropped and the reward is PSNR + SSIM only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

from persistworld_env.constants import CAMERAS
from persistworld_env.metrics import moving_region, psnr, region_psnr, ssim
from persistworld_env.perceptual import LPIPSMetric

#: Metrics scored per frame over the whole image (averaged over a clip's frames).
FRAME_METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips")
METRICS: tuple[str, ...] = FRAME_METRICS + ("psnr_moving",)
#: Weights when none are given: the full-frame metrics alike, the moving-region PSNR off.
DEFAULT_METRIC_WEIGHTS: dict[str, float] = {"psnr": 1.0, "ssim": 1.0, "lpips": 1.0, "psnr_moving": 0.0}
#: +1 where a higher value is better, -1 where lower is better.
METRIC_SIGN: dict[str, float] = {"psnr": 1.0, "ssim": 1.0, "lpips": -1.0, "psnr_moving": 1.0}
#: The moving region of a clip (``psnr_moving``): colour change above this (of 255) ...
MOTION_THRESHOLD = 12.0
#: ... grown by this many pixels.
MOTION_DILATION = 2
#: Identical frames have infinite PSNR; a frame's PSNR is capped here so group statistics stay finite.
PSNR_CAP_DB = 60.0
NORMALIZE_EPS = 1e-4


def _check_weights(weights: Mapping[str, float], allowed: tuple[str, ...], what: str) -> dict[str, float]:
    weights = {str(k): float(v) for k, v in weights.items()}
    unknown = set(weights) - set(allowed)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)} in reward weights; choose from {allowed}")
    if any(not np.isfinite(v) or v < 0 for v in weights.values()) or not any(v > 0 for v in weights.values()):
        raise ValueError(f"{what} weights must be finite, >= 0 and not all 0, got {weights}")
    return weights


@dataclass(frozen=True)
class RewardWeights:
    """Weights over metrics and cameras (non-negative; normalised by their sum of products)."""

    metrics: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_METRIC_WEIGHTS))
    cameras: Mapping[str, float] = field(default_factory=lambda: {c: 1.0 for c in CAMERAS})

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", _check_weights(self.metrics, METRICS, "metrics"))
        object.__setattr__(self, "cameras", _check_weights(self.cameras, CAMERAS, "cameras"))

    @classmethod
    def parse(cls, metrics: str | None = None, cameras: str | None = None) -> "RewardWeights":
        """From command-line text such as ``"psnr=1,ssim=1,lpips=2"`` and ``"wrist_left=2"`` (unnamed = 1 / default)."""
        defaults = cls()
        return cls({**defaults.metrics, **_parse_pairs(metrics)}, {**defaults.cameras, **_parse_pairs(cameras)})

    def used_metrics(self, lpips_available: bool) -> tuple[str, ...]:
        """Metrics with a positive weight that can be computed."""
        return tuple(m for m in METRICS if self.metrics.get(m, 0) > 0 and (m != "lpips" or lpips_available))


def _parse_pairs(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"bad weight {item!r}: expected name=number") from None
        if not sep:
            raise ValueError(f"bad weight {item!r}: expected name=number")
    return out


def clip_metrics(generated: np.ndarray, truth: np.ndarray, lpips: LPIPSMetric | None = None,
                 metrics: tuple[str, ...] = FRAME_METRICS, previous: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Per clip and camera means over the clip's frames (``psnr_moving``: see the module docstring).

    Args:
        generated, truth: uint8 (..., F, V, H, W, 3) of one shape (F frames of a clip, V cameras).
        lpips: the LPIPS metric (required if "lpips" is in ``metrics``).
        previous: uint8 (..., V, H, W, 3), the true frame before each clip (required for "psnr_moving").
    Returns ``{metric: float64 (..., V)}`` (``psnr_moving`` NaN where the true clip does not move).
    """
    generated, truth = np.asarray(generated), np.asarray(truth)
    if generated.shape != truth.shape or generated.ndim < 5:
        raise ValueError(f"expected generated and truth of one shape (..., F, V, H, W, 3), got {generated.shape} "
                         f"and {truth.shape}")
    out: dict[str, np.ndarray] = {}
    for m in metrics:
        if m == "psnr_moving":
            if previous is None:
                raise ValueError("the psnr_moving metric needs the true frame before each clip (previous)")
            mask = moving_region(np.moveaxis(truth, -4, -5), np.asarray(previous), MOTION_THRESHOLD, MOTION_DILATION)
            values = region_psnr(np.moveaxis(generated, -4, -5), np.moveaxis(truth, -4, -5), mask)
            out[m] = np.minimum(values, PSNR_CAP_DB)  # NaN (still clip) stays NaN
            continue
        if m == "psnr":
            values = np.minimum(psnr(generated, truth), PSNR_CAP_DB)
        elif m == "ssim":
            values = ssim(generated, truth)
        elif m == "lpips":
            if lpips is None:
                raise ValueError("the lpips metric was asked for without an LPIPSMetric")
            values = lpips(generated, truth)
        else:
            raise ValueError(f"unknown metric {m!r}; choose from {METRICS}")
        out[m] = np.asarray(values, dtype=np.float64).mean(axis=-2)
    return out


def normalize_in_group(values: np.ndarray, eps: float = NORMALIZE_EPS) -> np.ndarray:
    """(x - mean) / (std + eps) over the first axis (the K candidates of a group; population std).

    A column without any defined (non-NaN) value normalises to 0: no signal."""
    values = np.asarray(values, dtype=np.float64)
    undefined = np.isnan(values).all(axis=0)
    values = np.where(undefined, 0.0, values)
    return (values - values.mean(axis=0)) / (values.std(axis=0) + eps)


def view_rewards(candidate_metrics: Mapping[str, np.ndarray], weights: RewardWeights,
                 cameras: tuple[str, ...] = CAMERAS) -> np.ndarray:
    """Per-view rewards (K, V), R_v = sum_m w_m z_{m,v} / sum_m w_m, from per-candidate metrics ``{metric: (K, V)}``."""
    total, norm = 0.0, 0.0
    for m, values in candidate_metrics.items():
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(cameras):
            raise ValueError(f"{m}: expected (K, {len(cameras)}) values, got {values.shape}")
        w = weights.metrics.get(m, 0.0)
        total = total + w * METRIC_SIGN[m] * normalize_in_group(values)
        norm += w
    if norm <= 0:
        raise ValueError("no metric with a positive weight to build rewards from")
    return total / norm


def combine_rewards(candidate_metrics: Mapping[str, np.ndarray], weights: RewardWeights,
                    cameras: tuple[str, ...] = CAMERAS) -> np.ndarray:
    """Scalar reward (K,): the camera-weighted mean of :func:`view_rewards` (steps 4-5 of the module docstring)."""
    return camera_weighted_mean(view_rewards(candidate_metrics, weights, cameras), weights, cameras)


def camera_weighted_mean(per_view: np.ndarray, weights: RewardWeights, cameras: tuple[str, ...] = CAMERAS) -> np.ndarray:
    """(K, V) -> (K,): sum_v w_v R_v / sum_v w_v, the camera weights of ``weights``."""
    w = np.array([weights.cameras.get(c, 0.0) for c in cameras])
    if w.sum() <= 0:
        raise ValueError(f"no camera of {cameras} has a positive weight")
    return np.asarray(per_view, dtype=np.float64) @ w / w.sum()


@dataclass
class GroupScores:
    """Scores of one group: per clip metrics ``{m: (K, C, V)}``, rewards per candidate (K,) and per view (K, V)."""

    clip_metrics: dict[str, np.ndarray]
    rewards: np.ndarray
    view_rewards: np.ndarray

    def camera_means(self, cameras: tuple[str, ...] = CAMERAS) -> dict[str, float]:
        """``"metric/camera"`` -> mean over candidates and clips (for logging)."""
        return {f"{m}/{c}": float(np.nanmean(v[..., i]))
                for m, v in self.clip_metrics.items() for i, c in enumerate(cameras) if not np.isnan(v[..., i]).all()}

    def camera_spreads(self, cameras: tuple[str, ...] = CAMERAS) -> dict[str, float]:
        """``"metric/camera"`` -> standard deviation over the candidates of their clip-mean metric: how far apart
        the group's candidates are on that camera, the raw signal that group normalisation rescales to 1."""
        out = {}
        for m, v in self.clip_metrics.items():
            per_candidate = _mean_over_clips(v)  # (K, V)
            for i, c in enumerate(cameras):
                if not np.isnan(per_candidate[:, i]).all():
                    out[f"{m}/{c}"] = float(np.nanstd(per_candidate[:, i]))
        return out


def _mean_over_clips(values: np.ndarray) -> np.ndarray:
    """(K, C, V) -> (K, V): mean over the defined (non-NaN) clips; NaN where none is defined."""
    defined = ~np.isnan(values)
    total = np.where(defined, values, 0.0).sum(axis=1)
    count = defined.sum(axis=1)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


class RewardScorer:
    """Scores groups of candidates: ``scorer(generated (K, C, F, V, H, W, 3), truth (C, F, V, H, W, 3), previous)``
    with ``previous`` (V, H, W, 3) the true frame before the continuation (needed by ``psnr_moving``)."""

    def __init__(self, weights: RewardWeights | None = None, lpips: LPIPSMetric | None = None,
                 cameras: tuple[str, ...] = CAMERAS) -> None:
        self.weights = weights or RewardWeights()
        self.lpips = lpips
        self.cameras = tuple(cameras)
        self.metrics = self.weights.used_metrics(lpips is not None)
        if not self.metrics:
            raise ValueError(f"no reward metric left: weights {self.weights.metrics} with LPIPS "
                             f"{'on' if lpips is not None else 'off'}")

    @property
    def description(self) -> str:
        """E.g. ``"psnr=1 ssim=1 lpips(alexnet)=1; cameras exterior_1_left=1 ...``: what the reward is made of."""
        parts = []
        for m in self.metrics:
            name = f"lpips({self.lpips.backbone})" if m == "lpips" else m
            parts.append(f"{name}={self.weights.metrics[m]:g}")
        cameras = " ".join(f"{c}={self.weights.cameras[c]:g}" for c in self.cameras)
        return " ".join(parts) + "; cameras " + cameras

    def __call__(self, generated: np.ndarray, truth: np.ndarray, previous: np.ndarray | None = None) -> GroupScores:
        generated, truth = np.asarray(generated), np.asarray(truth)
        if generated.ndim != 7 or truth.shape != generated.shape[1:]:
            raise ValueError(f"expected generated (K, C, F, V, H, W, 3) and truth (C, F, V, H, W, 3), got "
                             f"{generated.shape} and {truth.shape}")
        before = None
        if previous is not None:  # the true frame before each clip: the given one, then each clip's last
            previous = np.asarray(previous)
            if previous.shape != truth.shape[2:]:
                raise ValueError(f"previous must be one frame per camera {truth.shape[2:]}, got {previous.shape}")
            before = np.concatenate([previous[None], truth[:-1, -1]])
            before = np.repeat(before[None], generated.shape[0], axis=0)
        truth = np.repeat(truth[None], generated.shape[0], axis=0)
        per_clip = clip_metrics(generated, truth, self.lpips, self.metrics, before)
        per_candidate = {m: _mean_over_clips(v) for m, v in per_clip.items()}
        per_view = view_rewards(per_candidate, self.weights, self.cameras)
        return GroupScores(per_clip, camera_weighted_mean(per_view, self.weights, self.cameras), per_view)
