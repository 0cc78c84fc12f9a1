"""The LeRobot v2.x on-disk layout DROID uses, and DROID's feature schema.

Layout (paths relative to the dataset root)::

    meta/info.json                 codebase_version, totals, fps, path templates, features
    meta/episodes.jsonl            one line per episode: episode_index, tasks, length (+ success, seed, ...)
    meta/episodes_stats.jsonl      per-episode min/max/mean/std/count (LeRobot v2.1)
    meta/tasks.jsonl               task_index, task (the language instruction)
    meta/stats.json                dataset stats per numeric feature (+ q01/q99)
    data/chunk-000/episode_000000.parquet
    videos/chunk-000/observation.images.exterior_1_left/episode_000000.mp4

Feature names follow LeRobot's DROID port (``examples/port_datasets/droid_rlds/port_droid.py`` in
huggingface/lerobot, which produced ``cadene/droid_1.0.1``): ``observation.state`` is joint position +
gripper (8) and ``action`` is commanded joint position + gripper (8), both added by that port "to
follow the LeRobot standard"; the 6-D/1-D/7-D ``observation.state.*`` and ``action.*`` parts are kept.
Features with shape (1,) are scalar parquet columns, vectors are fixed-size lists (as LeRobot writes them).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from persistworld_env.constants import (
    ACTION_CARTESIAN, ACTION_GRIPPER, ACTION_JOINT, FRAME_SUCCESS, STATE_CARTESIAN, STATE_GRIPPER, STATE_JOINT,
    image_key,
)

CODEBASE_VERSION = "v2.1"
DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"

INFO_FILE = "meta/info.json"
EPISODES_FILE = "meta/episodes.jsonl"
EPISODES_STATS_FILE = "meta/episodes_stats.jsonl"
TASKS_FILE = "meta/tasks.jsonl"
STATS_FILE = "meta/stats.json"

STATE = "observation.state"
ACTION = "action"

_CART_AXES = ["x", "y", "z", "roll", "pitch", "yaw"]
_JOINT_AXES = [f"joint_{i}" for i in range(7)]


def _feat(dtype: str, dim: int, axes: list[str] | None = None) -> dict:
    return {"dtype": dtype, "shape": [dim], "names": {"axes": axes} if axes else None}


#: Non-video features MiniDROID writes, in column order (DROID names; see module docstring).
DROID_FEATURES: dict[str, dict] = {
    "is_first": _feat("bool", 1),
    "is_last": _feat("bool", 1),
    "is_terminal": _feat("bool", 1),
    "language_instruction": _feat("string", 1),
    STATE_CARTESIAN: _feat("float32", 6, _CART_AXES),
    STATE_GRIPPER: _feat("float32", 1, ["gripper"]),
    STATE_JOINT: _feat("float32", 7, _JOINT_AXES),
    STATE: _feat("float32", 8, _JOINT_AXES + ["gripper"]),
    ACTION_CARTESIAN: _feat("float32", 6, _CART_AXES),
    ACTION_GRIPPER: _feat("float32", 1, ["gripper"]),
    ACTION_JOINT: _feat("float32", 7, _JOINT_AXES),
    ACTION: _feat("float32", 8, _JOINT_AXES + ["gripper"]),
    "discount": _feat("float32", 1),
    "reward": _feat("float32", 1),
    "is_episode_successful": _feat("bool", 1),
    "timestamp": _feat("float32", 1),
    "frame_index": _feat("int64", 1),
    "episode_index": _feat("int64", 1),
    "index": _feat("int64", 1),
    "task_index": _feat("int64", 1),
}



def data_features(frame_success: bool) -> dict[str, dict]:
    """Non-video features of a new dataset: DROID's, plus MiniDROID's per-frame ``is_success`` label
    (:data:`persistworld_env.constants.FRAME_SUCCESS`) when the episodes carry it. Readers accept
    datasets without it (DROID, or MiniDROID written before it existed)."""
    feats = dict(DROID_FEATURES)
    if frame_success:
        feats[FRAME_SUCCESS] = _feat("bool", 1)
    return feats


_ARROW_TYPES = {"float32": pa.float32(), "float64": pa.float64(), "int64": pa.int64(),
                "bool": pa.bool_(), "string": pa.string()}


def video_feature(height: int, width: int, video_info: dict) -> dict:
    """``features`` entry of one camera stream."""
    return {"dtype": "video", "shape": [height, width, 3], "names": ["height", "width", "channels"],
            "info": video_info}


def arrow_schema(features: dict[str, dict]) -> pa.Schema:
    """Parquet schema for the non-video ``features``: scalars for shape (1,), fixed-size lists otherwise."""
    fields = []
    for name, ft in features.items():
        if ft["dtype"] in ("video", "image"):
            continue
        t = _ARROW_TYPES[ft["dtype"]]
        dim = int(ft["shape"][0])
        fields.append(pa.field(name, t if list(ft["shape"]) == [1] else pa.list_(t, dim)))
    return pa.schema(fields)


def is_numeric(feature: dict) -> bool:
    """Whether stats are computed for a feature (numbers and booleans; not strings or videos)."""
    return feature["dtype"] in ("float32", "float64", "int64", "int32", "bool")


def episode_chunk(episode_index: int, chunks_size: int) -> int:
    return episode_index // chunks_size


def data_file(root: Path, info: dict, episode_index: int) -> Path:
    """Path of an episode's parquet file, from ``info['data_path']``."""
    chunk = episode_chunk(episode_index, int(info["chunks_size"]))
    return Path(root) / info["data_path"].format(episode_chunk=chunk, episode_index=episode_index)


def video_file(root: Path, info: dict, episode_index: int, camera: str) -> Path:
    """Path of an episode's video for ``camera``, from ``info['video_path']``."""
    chunk = episode_chunk(episode_index, int(info["chunks_size"]))
    return Path(root) / info["video_path"].format(episode_chunk=chunk, episode_index=episode_index,
                                                  video_key=image_key(camera))


def array_to_arrow(values: np.ndarray, type_: pa.DataType) -> pa.Array:
    """Numpy column ((T, dim), or (T,) strings) as an arrow array of ``type_``."""
    if pa.types.is_fixed_size_list(type_):
        flat = np.ascontiguousarray(values).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(flat, type=type_.value_type), type_.list_size)
    if pa.types.is_string(type_):
        return pa.array([str(v) for v in np.asarray(values).reshape(-1)], type=type_)
    return pa.array(np.asarray(values).reshape(-1), type=type_)


def column_to_numpy(column: pa.ChunkedArray) -> np.ndarray:
    """A parquet column as (T, dim) numpy (list columns flattened); strings as a (T,) object array."""
    arr = column.combine_chunks()
    n = len(arr)
    if arr.null_count:
        raise ValueError(f"column has {arr.null_count} null values")
    if pa.types.is_list(arr.type) or pa.types.is_fixed_size_list(arr.type) or pa.types.is_large_list(arr.type):
        return arr.flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
    out = arr.to_numpy(zero_copy_only=False)
    return out if out.dtype == object else out.reshape(n, 1)
