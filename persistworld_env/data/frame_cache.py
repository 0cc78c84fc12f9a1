"""Decoded-frame cache so training epochs do not re-decode video.

Each episode is decoded once into one uint8 array (T', V, H, W, 3) holding every ``step``-th frame
(``T' = ceil(T / step)``) of the cameras in order. Two levels:

* an optional **on-disk** ``.npy`` cache (``cache_dir``), written atomically and read back as a
  read-only memmap, shared by all DataLoader workers and across runs; file names carry a
  signature of the source videos (size + mtime), so a regenerated dataset is never served stale frames;
* a small per-process **in-memory LRU** of arrays / memmaps.

Workers may race to decode the same episode; each writes its own temporary file and the last
``os.replace`` wins with identical content, so no locking is needed.
"""
from __future__ import annotations

import hashlib
import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Generic, Hashable, TypeVar

import numpy as np

from persistworld_env.data.io_utils import atomic_path
from persistworld_env.data.lerobot_reader import LeRobotEpisodes

V = TypeVar("V")


class LRU(Generic[V]):
    """A minimal least-recently-used map with a fixed capacity (``capacity <= 0`` disables it)."""

    def __init__(self, capacity: int):
        self.capacity = int(capacity)
        self._data: OrderedDict[Hashable, V] = OrderedDict()

    def get_or_create(self, key: Hashable, create: Callable[[], V]) -> V:
        if key in self._data:
            self._data.move_to_end(key)
            return self._data[key]
        value = create()
        if self.capacity > 0:
            self._data[key] = value
            while len(self._data) > self.capacity:
                self._data.popitem(last=False)
        return value

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class FrameCache:
    """Per-episode decoded frames of ``reader``'s cameras, every ``step``-th frame.

    Args:
        reader: the dataset reader (its cameras define V and their order).
        step: keep frames ``0, step, 2*step, ...`` (ticks a sampler can never ask for are not stored).
        cache_dir: on-disk cache directory, or None for the in-memory LRU only.
        max_in_memory: episodes kept in the in-memory LRU per process.
    """

    def __init__(self, reader: LeRobotEpisodes, step: int = 1, cache_dir: str | os.PathLike | None = None,
                 max_in_memory: int = 16):
        self.reader, self.step = reader, int(step)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._lru: LRU[np.ndarray] = LRU(max_in_memory)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_lru"] = LRU(self._lru.capacity)  # never pickle arrays/memmaps into DataLoader workers
        return state

    def get(self, episode_index: int) -> np.ndarray:
        """uint8 (ceil(T / step), V, H, W, 3); row k is data frame ``k * step``."""
        return self._lru.get_or_create(int(episode_index), lambda: self._load(int(episode_index)))

    def _load(self, ep: int) -> np.ndarray:
        if self.cache_dir is None:
            return self._decode(ep)
        path = self.cache_path(ep)
        expected_rows = -(-self.reader.length(ep) // self.step)
        if path.is_file():
            try:
                arr = np.load(path, mmap_mode="r")
                if arr.dtype == np.uint8 and arr.shape[:2] == (expected_rows, len(self.reader.cameras)):
                    return arr
            except (ValueError, OSError):
                pass  # unreadable cache file: decode again and overwrite it
        frames = self._decode(ep)
        with atomic_path(path) as tmp:
            np.save(tmp, frames)
        return frames

    def _decode(self, ep: int) -> np.ndarray:
        return np.stack([self.reader.load_frames(ep, cam, step=self.step) for cam in self.reader.cameras], axis=1)

    def cache_key(self, episode_index: int) -> str:
        """Name of an episode's decoded frames: changes when the dataset's videos change."""
        h = hashlib.sha1(f"{self.reader.root.resolve()}|{self.reader.cameras}|{self.step}".encode())
        h.update(self.reader.file_stamp(episode_index, data=False).encode())
        return f"episode_{episode_index:06d}-{h.hexdigest()[:16]}"

    def cache_path(self, episode_index: int) -> Path:
        """On-disk cache file of an episode (requires ``cache_dir``)."""
        assert self.cache_dir is not None
        return self.cache_dir / f"{self.cache_key(episode_index)}.npy"
