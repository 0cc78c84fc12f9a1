"""Per-episode latents of the decoded frames, computed once by a frozen encoder (training speed-up).

A world-model training step otherwise re-encodes 11 frames x 3 cameras per sample through the
autoencoder. Latents are small (a 48x80 MiniDROID episode: ~100 KB in float16), so every episode's
latents stay in memory once computed, and optionally on disk (keyed by the encoder's identity).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np

from persistworld_env.data.frame_cache import FrameCache
from persistworld_env.data.io_utils import atomic_path

#: Encodes uint8 frames (N, V, H, W, 3) to latents (N, C, V*h, w) (numpy float).
EncodeFn = Callable[[np.ndarray], np.ndarray]


class LatentCache:
    """Latents of ``frames.get(ep)`` rows (the same 5 Hz grid), via ``encode``.

    Args:
        frames: the decoded-frame cache whose rows are encoded.
        encode: frozen encoder of uint8 frames (N, V, H, W, 3) -> (N, C, V*h, w).
        encoder_id: identity of the encoder (e.g. a hash of its weights), part of on-disk file names.
        cache_dir: optional on-disk folder; None keeps latents in memory only.
        batch: frames encoded per call.
    """

    def __init__(self, frames: FrameCache, encode: EncodeFn, encoder_id: str,
                 cache_dir: str | os.PathLike | None = None, batch: int = 64) -> None:
        self.frames, self.encode, self.encoder_id = frames, encode, encoder_id
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch = batch
        self._memory: dict[int, np.ndarray] = {}

    def get(self, episode_index: int) -> np.ndarray:
        """float16 latents (rows, C, V*h, w) of an episode; row k belongs to frame row k of the frame cache."""
        ep = int(episode_index)
        if ep not in self._memory:
            self._memory[ep] = self._load(ep)
        return self._memory[ep]

    def _load(self, ep: int) -> np.ndarray:
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"latents-{self.encoder_id}-{self.frames.cache_key(ep)}.npy"
            if path.is_file():
                try:
                    return np.load(path)
                except (ValueError, OSError):
                    pass  # unreadable: recompute and overwrite
        frames = self.frames.get(ep)
        latents = np.concatenate([np.asarray(self.encode(np.asarray(frames[i:i + self.batch])), dtype=np.float16)
                                  for i in range(0, len(frames), self.batch)])
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                np.save(tmp, latents)
        return latents
