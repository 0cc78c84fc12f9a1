"""Data pipeline: MiniDROID/DROID episodes in the LeRobot layout, and world-model training samples.

Names are imported lazily (PEP 562), so ``import persistworld_env.data.episode`` in simulator
worker processes does not pull in torch or PyAV.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DatasetError": "errors",
    "EpisodeRecord": "episode",
    "FrameCache": "frame_cache",
    "LeRobotEpisodes": "lerobot_reader",
    "LeRobotWriter": "lerobot_writer",
    "PoseNormalizer": "stats",
    "RunningStats": "stats",
    "SamplingConfig": "dataset",
    "WorldModelDataset": "dataset",
    "bench_loader": "bench",
    "collate_samples": "dataset",
    "decode_video": "video",
    "encode_video": "video",
    "probe_video": "video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
