"""The sparse success reward of ``PersistWorld-DROID-v0`` (``reward="success"``), judged by a learned detector.

:class:`SuccessReward` runs the success detector (:mod:`persistworld_env.models.success_detector`) on the
latest generated frame of every camera with the episode's instruction: reward 1.0 and termination when
P(success) exceeds the threshold, else 0.0; ``info["success_probability"]`` and ``info["success"]``
report the verdict. :func:`load_success_detector` finds the detector: an explicit path or loaded model,
else the ``success_detector/`` folder of the world model directory (the embedded default model ships one).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from persistworld_env.models.autoencoder import ModelLoadError
from persistworld_env.models.success_detector import CONFIG_FILE, DETECTOR_SUBDIR, SuccessDetector


def model_directory(model: Any) -> Path | None:
    """The directory of a world model given as a path or an embedded name; None for a loaded model."""
    if isinstance(model, (str, os.PathLike)):
        from persistworld_env.models.world_model import model_dir

        return model_dir(model)
    return None


def load_success_detector(detector: Any = None, model: Any = None, device: str = "cpu") -> SuccessDetector:
    """The success detector to use: ``detector`` (a loaded one or a directory), else ``<model dir>/success_detector``.

    Raises:
        ModelLoadError: no detector was given and the world model directory has none, or loading failed.
    """
    if isinstance(detector, SuccessDetector):
        return detector.to(device).eval()
    if detector is not None:
        return SuccessDetector.from_pretrained(detector, device=device)
    directory = model_directory(model)
    if directory is None:
        raise ModelLoadError("reward='success' with a loaded WorldModel needs success_detector=<detector directory "
                             "or SuccessDetector> (train one with `persistworld train-success`)")
    candidate = directory / DETECTOR_SUBDIR
    if not (candidate / CONFIG_FILE).is_file():
        raise ModelLoadError(f"reward='success' needs a success detector, and the world model has none at {candidate}; "
                             "pass success_detector=<directory> (train one with `persistworld train-success`)")
    return SuccessDetector.from_pretrained(candidate, device=device)


def carry_success_detector(source_model: Any, dest_model_dir: str | os.PathLike) -> bool:
    """Copy ``source_model``'s ``success_detector/`` into a model directory derived from it (a fine-tune).

    The detector judges frames, not the world model's weights, so a fine-tuned or post-trained model keeps
    its parent's. Returns whether one was copied (False: the source has none, or the destination has one).
    """
    import shutil

    source = model_directory(source_model)
    dest = Path(dest_model_dir) / DETECTOR_SUBDIR
    if source is None or not (source / DETECTOR_SUBDIR / CONFIG_FILE).is_file() or dest.exists():
        return False
    shutil.copytree(source / DETECTOR_SUBDIR, dest)
    return True


class SuccessReward:
    """``(obs, info) -> 1.0 | 0.0``: the detector's verdict on the latest frame of every camera.

    A frame counts as a success when P(success) exceeds ``threshold``; the episode does once that has held on
    ``consecutive_steps`` steps in a row (a single confident frame of a blurred generated rollout is not enough).
    Adds ``info["success_probability"]`` (float), ``info["success_frame"]`` (this frame's verdict) and
    ``info["success"]`` (the episode's, which the reward and termination follow) and reads the instruction from
    ``info["instruction"]``. The run of successful frames is kept per env slot: an env calls :meth:`reset` for the
    slots it restarts and passes ``slot`` when one reward serves several sub-envs.

    Args:
        detector: the success detector.
        threshold: P(success) above which a frame counts as a success (None: the detector's own).
        height, width: the environment's image size (must match the detector's).
        consecutive_steps: steps in a row needed (None: the detector's own).
    """

    def __init__(self, detector: SuccessDetector, threshold: float | None = None, height: int | None = None,
                 width: int | None = None, consecutive_steps: int | None = None) -> None:
        cfg = detector.config
        threshold = cfg.threshold if threshold is None else float(threshold)
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"success_threshold must be in (0, 1), got {threshold}")
        steps = cfg.consecutive_steps if consecutive_steps is None else int(consecutive_steps)
        if steps < 1:
            raise ValueError(f"success_steps must be >= 1, got {consecutive_steps}")
        if (height, width) != (None, None) and (height, width) != (cfg.height, cfg.width):
            raise ValueError(f"the success detector expects {cfg.height}x{cfg.width} frames, the environment makes "
                             f"{height}x{width}; use a detector trained at this size")
        self.detector, self.threshold, self.consecutive_steps = detector, threshold, steps
        self._runs: dict[int, int] = {}

    def reset(self, slots: Iterable[int] = (0,)) -> None:
        """Start new episodes in ``slots`` (their runs of successful frames restart at 0)."""
        for slot in slots:
            self._runs[int(slot)] = 0

    def score(self, obs: dict, infos: Sequence[dict], slots: Sequence[int]) -> np.ndarray:
        """Rewards (N,) of N sub-envs in one detector call: ``obs`` holds batched clips (N, 4, H, W, 3) per
        camera, ``infos[i]`` sub-env i's info (read for the instruction, written with the verdict as in
        :meth:`__call__`) and ``slots[i]`` its slot."""
        frames = np.stack([obs[c][:, -1] for c in self.detector.config.cameras], axis=1)  # (N, V, H, W, 3)
        probabilities = self.detector.predict_proba(frames, [str(info.get("instruction", "")) for info in infos])
        rewards = np.zeros(len(infos), np.float64)
        for k, (p, info, slot) in enumerate(zip(probabilities, infos, slots)):
            frame = bool(p > self.threshold)
            self._runs[slot] = self._runs.get(slot, 0) + 1 if frame else 0
            info["success_probability"], info["success_frame"] = float(p), frame
            info["success"] = self._runs[slot] >= self.consecutive_steps
            rewards[k] = 1.0 if info["success"] else 0.0
        return rewards

    def __call__(self, obs: dict, info: dict, slot: int = 0) -> float:
        """The reward of one env (``obs`` unbatched); see :meth:`score`."""
        return float(self.score({c: obs[c][None] for c in self.detector.config.cameras}, [info], [slot])[0])
