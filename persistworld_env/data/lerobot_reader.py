"""Low-level reader for any dataset in the LeRobot v2.x layout (MiniDROID or a DROID port).

Reads the meta files, lists episodes, loads an episode's parquet columns (pose (T, 7) from
``observation.state.cartesian_position`` + ``observation.state.gripper_position``, instruction) and
its frames per camera. Every problem with a file raises :class:`DatasetError` naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persistworld_env.constants import (
    ACTION_CARTESIAN, ACTION_GRIPPER, ACTION_JOINT, CAMERAS, FRAME_SUCCESS, STATE_CARTESIAN, STATE_GRIPPER, STATE_JOINT,
    image_key,
)
from persistworld_env.data import layout, video
from persistworld_env.data.episode import EpisodeRecord
from persistworld_env.data.errors import DatasetError
from persistworld_env.data.io_utils import read_json, read_jsonl


class LeRobotEpisodes:
    """Episodes of a LeRobot v2.x dataset at ``root``.

    Args:
        root: dataset directory (holding ``meta/info.json``).
        cameras: cameras whose videos :meth:`load_frames` serves, default ``constants.CAMERAS``;
            each must be a video feature of the dataset. Pass ``()`` for a pose-only reader.
    """

    def __init__(self, root: str | os.PathLike, cameras: Sequence[str] = CAMERAS):
        self.root = Path(root)
        info_path = self.root / layout.INFO_FILE
        if not info_path.is_file():
            raise DatasetError(f"not a LeRobot dataset: missing {info_path}")
        self.info: dict = read_json(info_path)
        version = str(self.info.get("codebase_version", ""))
        if not version.startswith("v2"):
            raise DatasetError(f"{info_path}: codebase_version {version!r} is not supported "
                               "(need the v2.x per-episode layout)")
        for key in ("fps", "chunks_size", "data_path", "features"):
            if key not in self.info:
                raise DatasetError(f"{info_path}: missing key {key!r}")
        self.fps = int(self.info["fps"])
        self.features: dict = self.info["features"]
        self.cameras = tuple(cameras)
        for cam in self.cameras:
            ft = self.features.get(image_key(cam))
            if ft is None or ft.get("dtype") != "video":
                videos = [k for k, v in self.features.items() if v.get("dtype") == "video"]
                raise DatasetError(f"{info_path}: no video feature {image_key(cam)!r} (has {videos})")
        self._episodes: dict[int, dict] = {}
        episodes_path = self.root / layout.EPISODES_FILE
        for row in read_jsonl(episodes_path):
            try:
                ep, length = int(row["episode_index"]), int(row["length"])
            except (KeyError, TypeError, ValueError) as e:
                raise DatasetError(f"{episodes_path}: bad episode entry {row!r}: {e}") from e
            if ep in self._episodes:
                raise DatasetError(f"{episodes_path}: episode {ep} is listed twice")
            if length <= 0:
                raise DatasetError(f"{episodes_path}: episode {ep} has length {length}")
            self._episodes[ep] = row
        tasks_path = self.root / layout.TASKS_FILE
        self.tasks: dict[int, str] = (
            {int(r["task_index"]): r["task"] for r in read_jsonl(tasks_path)} if tasks_path.is_file() else {})

    # ------------------------------------------------------------------ meta
    @property
    def episode_indices(self) -> list[int]:
        """Indexed episodes, sorted."""
        return sorted(self._episodes)

    def __len__(self) -> int:
        return len(self._episodes)

    def episode_meta(self, episode_index: int) -> dict:
        """The episode's line of ``meta/episodes.jsonl``."""
        try:
            return self._episodes[int(episode_index)]
        except KeyError:
            raise KeyError(f"episode {episode_index} is not in {self.root / layout.EPISODES_FILE}") from None

    def length(self, episode_index: int) -> int:
        return int(self.episode_meta(episode_index)["length"])

    def instruction(self, episode_index: int) -> str:
        """The episode's first task string (DROID: its language instruction)."""
        tasks = self.episode_meta(episode_index).get("tasks") or [""]
        return str(tasks[0])

    def image_shape(self, camera: str) -> tuple[int, int]:
        """(height, width) of a camera's frames, from ``info.json``."""
        shape = self.features[image_key(camera)]["shape"]
        return int(shape[0]), int(shape[1])

    def stats(self) -> dict | None:
        """``meta/stats.json`` if present."""
        path = self.root / layout.STATS_FILE
        return read_json(path) if path.is_file() else None

    def data_path(self, episode_index: int) -> Path:
        return layout.data_file(self.root, self.info, episode_index)

    def video_path(self, episode_index: int, camera: str) -> Path:
        if "video_path" not in self.info or not self.info["video_path"]:
            raise DatasetError(f"{self.root / layout.INFO_FILE}: no video_path template")
        return layout.video_file(self.root, self.info, episode_index, camera)

    def file_stamp(self, episode_index: int, data: bool = True) -> str:
        """Sizes and modification times of an episode's videos (the reader's cameras) and, with ``data``, of its
        parquet file: it changes whenever the episode is written again, so results keyed on it go stale with it."""
        paths = [self.video_path(episode_index, cam) for cam in self.cameras]
        paths += [self.data_path(episode_index)] if data else []
        stamp = ""
        for path in paths:
            if not path.is_file():
                raise DatasetError(f"missing file of episode {episode_index}: {path}")
            st = path.stat()
            stamp += f"|{st.st_size}:{st.st_mtime_ns}"
        return stamp

    # ------------------------------------------------------------------ data
    def load_columns(self, episode_index: int, columns: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Parquet columns of one episode: numeric as (T, dim) arrays, strings as (T,) object arrays."""
        path = self.data_path(episode_index)
        if not path.is_file():
            raise DatasetError(f"missing parquet file of episode {episode_index}: {path}")
        try:
            table = pq.read_table(path, columns=list(columns) if columns is not None else None)
        except (pa.ArrowException, OSError) as e:
            missing = _missing_columns(path, columns)
            if missing:
                raise DatasetError(f"{path} has no column(s) {missing} (is this dataset in the DROID layout?)") from e
            raise DatasetError(f"cannot read parquet file {path} (truncated or corrupt?): {e}") from e
        expected = self.length(episode_index)
        if table.num_rows != expected:
            raise DatasetError(f"{path} has {table.num_rows} rows, episodes.jsonl says {expected}")
        try:
            return {name: layout.column_to_numpy(table.column(name)) for name in table.column_names}
        except ValueError as e:
            raise DatasetError(f"{path}: bad column: {e}") from e

    def load_pose(self, episode_index: int) -> np.ndarray:
        """(T, 7) float32 measured pose: cartesian position (6) + gripper position (1)."""
        cols = self.load_columns(episode_index, [STATE_CARTESIAN, STATE_GRIPPER])
        return np.concatenate([cols[STATE_CARTESIAN], cols[STATE_GRIPPER]], axis=1).astype(np.float32)

    def load_frames(self, episode_index: int, camera: str, step: int = 1) -> np.ndarray:
        """uint8 frames (ceil(T / step), H, W, 3) of one camera; ``step`` keeps every step-th frame."""
        if camera not in self.cameras:
            raise KeyError(f"camera {camera!r} is not among this reader's cameras {self.cameras}")
        return video.decode_video(self.video_path(episode_index, camera),
                                  expected_frames=self.length(episode_index), step=step)

    @property
    def has_frame_success(self) -> bool:
        """Whether the dataset has MiniDROID's per-frame ``is_success`` label column."""
        return FRAME_SUCCESS in self.features

    def load_frame_success(self, episode_index: int) -> np.ndarray:
        """(T,) bool per-frame success labels (see :data:`persistworld_env.constants.FRAME_SUCCESS`)."""
        if not self.has_frame_success:
            raise DatasetError(f"{self.root / layout.INFO_FILE}: no per-frame {FRAME_SUCCESS!r} column")
        return self.load_columns(episode_index, [FRAME_SUCCESS])[FRAME_SUCCESS].reshape(-1).astype(bool)

    def load_record(self, episode_index: int) -> EpisodeRecord:
        """The whole episode as an :class:`EpisodeRecord` (needs all of ``constants.CAMERAS``)."""
        names = [STATE_CARTESIAN, STATE_GRIPPER, STATE_JOINT, ACTION_CARTESIAN, ACTION_GRIPPER, ACTION_JOINT]
        cols = self.load_columns(episode_index, names + ([FRAME_SUCCESS] if self.has_frame_success else []))
        meta = self.episode_meta(episode_index)
        f32 = {n: cols[n].astype(np.float32) for n in names}
        return EpisodeRecord(
            frames={cam: self.load_frames(episode_index, cam) for cam in self.cameras},
            cartesian_position=f32[STATE_CARTESIAN], gripper_position=f32[STATE_GRIPPER],
            joint_position=f32[STATE_JOINT], action_cartesian_position=f32[ACTION_CARTESIAN],
            action_gripper_position=f32[ACTION_GRIPPER], action_joint_position=f32[ACTION_JOINT],
            instruction=self.instruction(episode_index), task=str(meta.get("task_family", "")),
            success=bool(meta.get("success", False)), seed=int(meta.get("seed", -1)), fps=self.fps,
            extra=dict(meta.get("extra", {})),
            frame_success=cols[FRAME_SUCCESS].reshape(-1).astype(bool) if self.has_frame_success else None,
        )


def _missing_columns(path: Path, columns: Sequence[str] | None) -> list[str]:
    """Which of ``columns`` a readable parquet file lacks (none when the file cannot be read at all)."""
    if columns is None:
        return []
    try:
        names = set(pq.read_schema(path).names)
    except (pa.ArrowException, OSError):
        return []
    return [c for c in columns if c not in names]
