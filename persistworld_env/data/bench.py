"""Throughput of the training data path (decode + sample assembly + collation)."""
from __future__ import annotations

import os
import tempfile
import time
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from persistworld_env.data.dataset import WorldModelDataset, collate_samples


def bench_loader(root: str | os.PathLike, num_samples: int = 256, batch_size: int = 8, num_workers: int = 0,
                 split: str = "all", cache_dir: str | os.PathLike | None = None, seed: int = 0) -> dict[str, Any]:
    """Samples/s through a torch DataLoader, cold (decoding video) and warm (decoded-frame cache).

    Batches are assembled with :func:`collate_samples`. Both passes read the same ``num_samples`` random samples. The cold pass starts from an empty
    on-disk cache (a temporary directory unless ``cache_dir`` is given, which is then expected empty)
    and fresh worker processes; the warm pass uses new workers too, so it measures the on-disk cache
    (memmap reads), not a per-process memory LRU.
    """
    with tempfile.TemporaryDirectory(prefix="pw_frame_cache_") as tmp:
        cache = cache_dir if cache_dir is not None else tmp
        ds = WorldModelDataset(root, split=split, seed=seed, cache_dir=cache)
        if len(ds) == 0:
            raise ValueError(f"dataset {root} has no samples in split {split!r}")
        g = torch.Generator().manual_seed(seed)
        picks = torch.randint(len(ds), (num_samples,), generator=g).tolist()
        out: dict[str, Any] = {"num_samples": num_samples, "batch_size": batch_size, "num_workers": num_workers,
                               "episodes": int(len(ds.episodes)), "dataset_samples": len(ds)}
        for name in ("cold", "warm"):
            ds.frames._lru.clear()
            loader = DataLoader(Subset(ds, picks), batch_size=batch_size, num_workers=num_workers, shuffle=False,
                                collate_fn=collate_samples)
            t0 = time.perf_counter()
            n = sum(len(batch["episode_index"]) for batch in loader)
            dt = time.perf_counter() - t0
            out[f"{name}_seconds"] = dt
            out[f"{name}_samples_per_s"] = n / dt if dt > 0 else float("inf")
        sample = ds[picks[0]]
        out["sample_video_shape"] = list(sample["video"].shape)
        return out
