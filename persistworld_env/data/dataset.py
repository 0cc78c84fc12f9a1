"""World-model training samples: sparse history + clip, Ctrl-World's sampling scheme.

Reference: Ctrl-World's DROID dataset (``dataset/dataset_droid_exp33.py``, class ``Dataset_mix``,
read from the public forks ``sai-prasanna/Ctrl-World`` and ``tenny-yinyijun/Ctrl-World``). Its video is
stored at 5 Hz and all its skips count **5 Hz model frames**; poses are read at ``5 Hz index * 3``::

    skip = randint(1, 2)                        # future skip, model frames
    skip_his = 4 * skip; skip_his = 0 w.p. 0.15 # history spacing, model frames; 0 = all-current
    ids = [now - i*skip_his for i in 6..1] + [now] + [now + i*skip for i in 1..4]
    ids = clip(ids, 0, floor((T_15Hz - 1) / 3))

Candidate ``now`` values are every 5 Hz frame from 0 up to the last one whose clip fits at skip 1.

The same scheme here, in 15 Hz data ticks (``stride = 3`` ticks per model frame), current tick ``c``::

    history = [c - i * h * 3 for i in (6, 5, 4, 3, 2, 1)]   h = history_skip (model frames)
    clip    = [c + i * s * 3 for i in (0, 1, 2, 3, 4)]      s = future_skip (model frames)

with ``s`` uniform in ``future_skips`` (default (1, 2)), ``h = history_factor * s`` (default 4, i.e.
12 or 24 ticks = 0.8 or 1.6 s apart) except with probability ``p_all_current`` (0.15) where ``h = 0``
and all six history frames repeat the current frame. Indices below 0 are clamped to 0 (history
before the episode start repeats frame 0); indices past the end are clamped to the last tick on the
clip's 3-tick grid (the clip's final frames repeat). Current ticks are ``0, 3, 6, ...`` (5 Hz aligned,
``current_stride``) whose clip fits inside the episode at the smallest skip (``fit_max_skip=True``:
at the largest); an episode too short for any gets ``c = 0`` only, as in Ctrl-World.

Randomness (skip and the all-current branch) is drawn from ``np.random.default_rng((seed, epoch,
index))``, so a sample depends only on (seed, epoch, index): reproducible across DataLoader workers
and runs. Call :meth:`WorldModelDataset.set_epoch` to vary it per epoch (non-persistent workers).

A sample (dict; default collation batches it):

* ``video``: uint8 tensor (11, V, H, W, 3): 6 history frames then the 5-frame clip (clip[0] = current)
  (``latents`` (11, C, V*h, w) float32 instead, after :meth:`WorldModelDataset.use_latents`),
  cameras in ``cameras`` order;
* ``pose``: float32 (11, 7) normalised to [-1, 1] (:class:`PoseNormalizer`); ``pose_raw``: float32 (11, 7);
* ``frame_indices``: int64 (11,) data ticks (15 Hz) of the 11 frames;
* ``instruction``: str; ``episode_index``, ``current_index`` (tick), ``future_skip``, ``history_skip``
  (model frames): int.

Batch with :func:`collate_samples` (same result as torch's default collation, faster for uint8 video).

Split: an episode is validation when ``episode_index % val_mod == val_rem`` (DROID convention: 100, 99),
or, with ``val_episodes``, when it is listed there.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from persistworld_env.constants import CAMERAS, FRAME_STRIDE, NUM_CLIP_FRAMES, NUM_HISTORY_FRAMES
from persistworld_env.data.frame_cache import LRU, FrameCache
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.data.stats import PoseNormalizer


@dataclass(frozen=True)
class SamplingConfig:
    """Which frames make a sample (see module docstring). Skips count model frames (``stride`` ticks)."""

    num_history: int = NUM_HISTORY_FRAMES
    num_clip: int = NUM_CLIP_FRAMES
    stride: int = FRAME_STRIDE
    future_skips: tuple[int, ...] = (1, 2)
    history_factor: int = 4
    p_all_current: float = 0.15
    fixed_skip: int | None = None
    current_stride: int = FRAME_STRIDE
    fit_max_skip: bool = False

    def __post_init__(self) -> None:
        if not self.future_skips or min(self.future_skips) < 1:
            raise ValueError(f"future_skips must be positive, got {self.future_skips}")
        if not 0.0 <= self.p_all_current <= 1.0:
            raise ValueError(f"p_all_current must be in [0, 1], got {self.p_all_current}")
        if self.stride < 1 or self.current_stride < 1 or self.num_clip < 1 or self.num_history < 0:
            raise ValueError("stride, current_stride and num_clip must be >= 1, num_history >= 0")

    @property
    def num_frames(self) -> int:
        return self.num_history + self.num_clip

    @property
    def skips(self) -> tuple[int, ...]:
        return (self.fixed_skip,) if self.fixed_skip is not None else tuple(self.future_skips)

    @property
    def tick_grid(self) -> int:
        """Every index a sample can use is a multiple of this (so only those frames need caching)."""
        return math.gcd(self.current_stride, self.stride)

    def current_frames(self, length: int) -> np.ndarray:
        """Valid current ticks of an episode of ``length`` frames."""
        skip = max(self.skips) if self.fit_max_skip else min(self.skips)
        need = (self.num_clip - 1) * self.stride * skip
        cs = np.arange(0, length, self.current_stride)
        cs = cs[cs + need <= length - 1]
        return cs if len(cs) else np.zeros(1, dtype=np.int64)

    def draw(self, rng: np.random.Generator) -> tuple[int, int]:
        """(future_skip, history_skip) in model frames. A fixed skip never takes the all-current branch."""
        if self.fixed_skip is not None:
            return self.fixed_skip, self.fixed_skip * self.history_factor
        skip = int(rng.choice(self.future_skips))
        all_current = rng.random() < self.p_all_current
        return skip, 0 if all_current else skip * self.history_factor

    def frame_indices(self, current: int, length: int, future_skip: int, history_skip: int) -> np.ndarray:
        """int64 (num_history + num_clip,) data ticks, clamped into the episode (see module docstring)."""
        hist = [current - i * history_skip * self.stride for i in range(self.num_history, 0, -1)]
        clip = [current + i * future_skip * self.stride for i in range(self.num_clip)]
        last = current + self.stride * ((length - 1 - current) // self.stride)  # last tick on the clip grid
        return np.clip(np.array(hist + clip, dtype=np.int64), 0, last)


class WorldModelDataset(Dataset):
    """(history, clip, poses, instruction) samples over a LeRobot-layout dataset.

    Args:
        root: dataset directory.
        split: ``"train"``, ``"val"`` or ``"all"``.
        cameras: cameras stacked in ``video`` (default ``constants.CAMERAS``).
        sampling: frame-selection scheme (default: Ctrl-World's).
        normalizer: pose normaliser; default from the dataset (``meta/stats.json`` q01/q99 or a scan).
        val_mod, val_rem, val_episodes: validation split (see module docstring).
        seed: base seed of the per-sample randomness.
        cache_dir: on-disk decoded-frame cache (recommended with DataLoader workers); None = memory only.
        max_episodes_in_memory: per-process in-memory LRU size (episodes).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", cameras: Sequence[str] = CAMERAS,
                 sampling: SamplingConfig | None = None, normalizer: PoseNormalizer | None = None,
                 val_mod: int = 100, val_rem: int = 99, val_episodes: Sequence[int] | None = None, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, max_episodes_in_memory: int = 16):
        if split not in ("train", "val", "all"):
            raise ValueError(f"split must be 'train', 'val' or 'all', got {split!r}")
        self.reader = LeRobotEpisodes(root, cameras=cameras)
        self.cameras = self.reader.cameras
        self.sampling = sampling or SamplingConfig()
        self.normalizer = normalizer or PoseNormalizer.from_dataset(root)
        self.split, self.seed, self.epoch = split, int(seed), 0
        val_set = set(int(e) for e in val_episodes) if val_episodes is not None else None

        def is_val(ep: int) -> bool:
            return ep in val_set if val_set is not None else ep % val_mod == val_rem

        self.episodes = np.array([ep for ep in self.reader.episode_indices
                                  if split == "all" or is_val(ep) == (split == "val")], dtype=np.int64)
        counts = np.array([len(self.sampling.current_frames(self.reader.length(ep))) for ep in self.episodes],
                          dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)])
        self.frames = FrameCache(self.reader, step=self.sampling.tick_grid, cache_dir=cache_dir,
                                 max_in_memory=max_episodes_in_memory)
        self._poses: LRU[np.ndarray] = LRU(4096)
        self.latents = None  # set by use_latents()

    def use_latents(self, encode, encoder_id: str, cache_dir: str | os.PathLike | None = None) -> None:
        """Return precomputed ``latents`` (11, C, V*h, w) float32 instead of ``video`` in every sample.

        ``encode`` maps uint8 frames (N, V, H, W, 3) to latents (N, C, V*h, w); see :class:`LatentCache`.
        """
        from persistworld_env.data.latent_cache import LatentCache

        self.latents = LatentCache(self.frames, encode, encoder_id, cache_dir)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def set_epoch(self, epoch: int) -> None:
        """Change the per-sample random draws (skips, all-current branch) for a new epoch."""
        self.epoch = int(epoch)

    def locate(self, index: int) -> tuple[int, int]:
        """(episode_index, current tick) of sample ``index``."""
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range [0, {len(self)})")
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        ep = int(self.episodes[k])
        current = self.sampling.current_frames(self.reader.length(ep))[index - self._starts[k]]
        return ep, int(current)

    def __getitem__(self, index: int) -> dict[str, Any]:
        ep, current = self.locate(int(index))
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        future_skip, history_skip = self.sampling.draw(rng)
        return self.sample(ep, current, future_skip, history_skip)

    def sample(self, episode_index: int, current: int, future_skip: int, history_skip: int) -> dict[str, Any]:
        """The sample of an explicit (episode, current tick, skips) choice."""
        length = self.reader.length(episode_index)
        idx = self.sampling.frame_indices(current, length, future_skip, history_skip)
        pose_raw = self._poses.get_or_create(episode_index, lambda: self.reader.load_pose(episode_index))[idx]
        rows = idx // self.sampling.tick_grid
        if self.latents is not None:
            visual = {"latents": torch.from_numpy(self.latents.get(episode_index)[rows].astype(np.float32))}
        else:
            visual = {"video": torch.from_numpy(np.ascontiguousarray(self.frames.get(episode_index)[rows]))}
        return {
            **visual,
            "pose": torch.from_numpy(np.asarray(self.normalizer.normalize(pose_raw), dtype=np.float32)),
            "pose_raw": torch.from_numpy(pose_raw.astype(np.float32)),
            "frame_indices": torch.from_numpy(idx),
            "instruction": self.reader.instruction(episode_index),
            "episode_index": int(episode_index),
            "current_index": int(current),
            "future_skip": int(future_skip),
            "history_skip": int(history_skip),
        }


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Batch samples like torch's ``default_collate`` (tensors stacked, ints to an int64 tensor, strings
    to a list), but stacks through numpy: ``torch.stack`` of uint8 video was ~15x slower on CPU here."""
    out: dict[str, Any] = {}
    for key, first in batch[0].items():
        values = [sample[key] for sample in batch]
        if isinstance(first, torch.Tensor):
            out[key] = torch.from_numpy(np.stack([v.numpy() for v in values]))
        elif isinstance(first, str):
            out[key] = values
        else:
            out[key] = torch.tensor(values)
    return out
