"""Write :class:`EpisodeRecord` s in the LeRobot v2.1 layout DROID uses (see :mod:`.layout`).

Crash safety and resumability:

* every file is written under a temporary name and moved into place (``os.replace``);
* an episode enters ``meta/episodes.jsonl`` (append + flush + fsync) only after its parquet file and
  all its videos are in place, so the index never points at a missing or partial file;
* files of an episode that is not in the index are garbage from an interrupted run: they are simply
  overwritten when the episode is written again, and stray temporary files are removed on open;
* ``info.json`` is rewritten atomically after every episode; :meth:`LeRobotWriter.finalize`
  recomputes totals, ``stats.json`` and ``episodes_stats.jsonl`` from the indexed episodes and makes
  the global ``index`` / ``task_index`` columns canonical in episode order, so a resumed or
  out-of-order dataset ends up with parquet and meta files byte-identical to a single ordered pass.

Episodes may be written in any order (parallel workers finish in any order); the writer itself is
meant to be used from one process.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from persistworld_env.constants import (
    ACTION_CARTESIAN, ACTION_GRIPPER, ACTION_JOINT, CAMERAS, DATA_FPS, FRAME_SUCCESS, STATE_CARTESIAN, STATE_GRIPPER,
    STATE_JOINT, image_key,
)
from persistworld_env.data import layout
from persistworld_env.data.episode import EpisodeRecord
from persistworld_env.data.io_utils import (
    append_jsonl, atomic_path, read_json, read_jsonl, truncate_torn_tail, write_json_atomic, write_jsonl_atomic,
)
from persistworld_env.data.stats import RunningStats, image_stats, quantiles
from persistworld_env.data.video import DEFAULT_CODEC, DEFAULT_CRF, DEFAULT_PIX_FMT, encode_video, probe_video


class LeRobotWriter:
    """Create or resume a LeRobot-layout dataset at ``root`` and add episodes to it.

    Args:
        root: dataset directory (created if needed).
        fps: recording rate (must match an existing dataset's).
        robot_type: ``info.json`` robot type.
        chunks_size: episodes per ``chunk-XXX`` folder (must match an existing dataset's).
        cameras: camera names written as ``observation.images.<camera>`` videos.
        codec, pix_fmt, crf: video encoding (see :mod:`.video`).
        max_quantile_rows: cap on rows kept in memory for the q01/q99 of :meth:`finalize`; above it a
            deterministic evenly spaced subsample is used.
    """

    def __init__(self, root: str | os.PathLike, fps: int = DATA_FPS, robot_type: str = "franka",
                 chunks_size: int = 1000, cameras: tuple[str, ...] = CAMERAS, codec: str = DEFAULT_CODEC,
                 pix_fmt: str = DEFAULT_PIX_FMT, crf: int = DEFAULT_CRF, max_quantile_rows: int = 2_000_000):
        self.root = Path(root)
        self.fps, self.robot_type, self.chunks_size = int(fps), robot_type, int(chunks_size)
        self.cameras = tuple(cameras)
        self.codec, self.pix_fmt, self.crf = codec, pix_fmt, int(crf)
        self.max_quantile_rows = int(max_quantile_rows)
        self._features: dict[str, dict] | None = None
        self._episodes: dict[int, dict] = {}
        self._tasks: dict[str, int] = {}
        self._open()

    # ---------------------------------------------------------------- opening / resuming
    def _meta(self, rel: str) -> Path:
        return self.root / rel

    def _open(self) -> None:
        (self.root / "meta").mkdir(parents=True, exist_ok=True)
        self._remove_stray_temporaries()
        for rel in (layout.EPISODES_FILE, layout.EPISODES_STATS_FILE, layout.TASKS_FILE):
            truncate_torn_tail(self._meta(rel))
        info_path = self._meta(layout.INFO_FILE)
        if info_path.is_file():
            info = read_json(info_path)
            for key, mine in (("fps", self.fps), ("chunks_size", self.chunks_size)):
                if int(info[key]) != mine:
                    raise ValueError(f"{info_path} has {key}={info[key]}, writer was opened with {mine}")
            self.robot_type = info.get("robot_type", self.robot_type)
            self._features = info["features"]
            missing = [c for c in self.cameras if image_key(c) not in self._features]
            if missing:
                raise ValueError(f"{info_path} has no video features for cameras {missing}")
        if self._meta(layout.TASKS_FILE).is_file():
            self._tasks = {r["task"]: int(r["task_index"]) for r in read_jsonl(self._meta(layout.TASKS_FILE))}
        if self._meta(layout.EPISODES_FILE).is_file():
            for r in read_jsonl(self._meta(layout.EPISODES_FILE)):
                self._episodes[int(r["episode_index"])] = r
        if self._episodes and self._features is None:
            raise ValueError(f"{self.root}: episodes are indexed but {info_path} is missing")
        self._prune_orphan_episode_stats()

    def _remove_stray_temporaries(self) -> None:
        for sub in ("data", "videos", "meta"):
            for p in (self.root / sub).rglob("*.tmp-*"):
                if p.is_file():
                    p.unlink()

    def _prune_orphan_episode_stats(self) -> None:
        """Drop per-episode stats lines of episodes that never made it into the index (or duplicates)."""
        path = self._meta(layout.EPISODES_STATS_FILE)
        if not path.is_file():
            return
        rows = read_jsonl(path)
        kept = {int(r["episode_index"]): r for r in rows if int(r["episode_index"]) in self._episodes}
        if len(kept) != len(rows):
            write_jsonl_atomic(path, [kept[k] for k in sorted(kept)])

    # ---------------------------------------------------------------- public API
    def completed_episodes(self) -> set[int]:
        """Indices of the episodes in ``meta/episodes.jsonl`` (complete on disk); skip these on resume."""
        return set(self._episodes)

    @property
    def total_frames(self) -> int:
        return sum(int(e["length"]) for e in self._episodes.values())

    def write_episode(self, episode_index: int, record: EpisodeRecord) -> None:
        """Write one episode (parquet + one mp4 per camera) and then index it.

        Raises:
            ValueError: the episode is already indexed, or its resolution/cameras differ from the dataset's.
        """
        episode_index = int(episode_index)
        if episode_index < 0:
            raise ValueError(f"episode_index must be >= 0, got {episode_index}")
        if episode_index in self._episodes:
            raise ValueError(f"episode {episode_index} is already in {self._meta(layout.EPISODES_FILE)}")
        record.validate()
        height, width = record.frames[self.cameras[0]].shape[1:3]
        if self._features is not None:
            expected = self._features[image_key(self.cameras[0])]["shape"][:2]
            if [height, width] != list(expected):
                raise ValueError(f"episode {episode_index} frames are {height}x{width}, dataset is "
                                 f"{expected[0]}x{expected[1]}")
        if int(record.fps) != self.fps:
            raise ValueError(f"episode {episode_index} was recorded at {record.fps} fps, dataset is {self.fps}")
        # per-frame success labels: the first episode decides; a dataset without the column (an older one
        # being resumed) stays without it, one with it needs it in every episode
        if self._features is not None and FRAME_SUCCESS in self._features and record.frame_success is None:
            raise ValueError(f"episode {episode_index} has no per-frame success labels (frame_success), but the "
                             f"dataset at {self.root} has the {FRAME_SUCCESS!r} column")
        features = self._features or layout.data_features(record.frame_success is not None)

        task_index = self._task_index(record.instruction)
        offset = sum(int(e["length"]) for i, e in self._episodes.items() if i < episode_index)
        columns = episode_columns(record, episode_index, task_index, offset)
        info = self._info_templates()
        self._write_parquet(layout.data_file(self.root, info, episode_index), columns, features)
        for cam in self.cameras:
            with atomic_path(layout.video_file(self.root, info, episode_index, cam), fsync=True) as tmp:
                encode_video(record.frames[cam], tmp, fps=self.fps, codec=self.codec, pix_fmt=self.pix_fmt,
                             crf=self.crf)
        if self._features is None:
            self._features = self._build_features(episode_index, height, width, features)
        self._write_info()  # info.json exists before the first episode is indexed

        ep_stats = {k: s.to_dict() for k, s in numeric_stats(columns, self._features).items()}
        for cam in self.cameras:
            ep_stats[image_key(cam)] = _image_stats_dict(image_stats(record.frames[cam]))
        append_jsonl(self._meta(layout.EPISODES_STATS_FILE), {"episode_index": episode_index, "stats": ep_stats})
        entry = {"episode_index": episode_index, "tasks": [record.instruction], "length": record.length,
                 "success": bool(record.success), "seed": int(record.seed), "task_family": record.task,
                 "extra": record.extra}
        append_jsonl(self._meta(layout.EPISODES_FILE), entry)  # commit point
        self._episodes[episode_index] = entry
        self._write_info()

    def finalize(self) -> dict:
        """Recompute totals, ``stats.json`` and ``episodes_stats.jsonl`` from the indexed episodes.

        Streams over the parquet files (numeric columns only; video stats are aggregated from the
        per-episode stats). Also rewrites ``episodes.jsonl`` sorted by episode index, renumbers tasks
        in order of first use, and fixes the ``index`` / ``task_index`` columns of episodes written out of
        order (those parquet files are rewritten atomically). Idempotent. Returns ``info``.
        """
        if self._features is None:
            raise ValueError(f"{self.root}: no episodes written, nothing to finalize")
        info = self._info_templates()
        feats = self._features
        numeric = [k for k, ft in feats.items() if layout.is_numeric(ft)]
        # canonical task numbering: order of first use in episode order (independent of write order)
        tasks: dict[str, int] = {}
        for ep in sorted(self._episodes):
            for task in self._episodes[ep]["tasks"]:
                tasks.setdefault(task, len(tasks))
        running = 0
        keep_every = max(1, -(-self.total_frames // self.max_quantile_rows))
        glob = {k: RunningStats(int(np.prod(feats[k]["shape"]))) for k in numeric}
        samples: dict[str, list[np.ndarray]] = {k: [] for k in numeric}
        old_stats = self._load_episode_stats()
        new_ep_stats = []
        for ep in sorted(self._episodes):
            path = layout.data_file(self.root, info, ep)
            table = pq.read_table(path)
            length = int(self._episodes[ep]["length"])
            if table.num_rows != length:
                raise ValueError(f"{path} has {table.num_rows} rows, episodes.jsonl says {length}")
            cols = {k: layout.column_to_numpy(table.column(k)) for k in table.column_names}
            expected_index = np.arange(running, running + length)
            expected_task = np.full(length, tasks[self._episodes[ep]["tasks"][0]])
            if not (np.array_equal(cols["index"].ravel(), expected_index)
                    and np.array_equal(cols["task_index"].ravel(), expected_task)):
                cols["index"], cols["task_index"] = expected_index.reshape(-1, 1), expected_task.reshape(-1, 1)
                self._write_parquet(path, cols)
            keep = expected_index % keep_every == 0  # evenly spaced subsample for the quantiles
            running += length
            ep_stats = numeric_stats(cols, feats)
            for k in numeric:
                glob[k].merge(ep_stats[k])
                samples[k].append(cols[k][keep])
            entry = {k: s.to_dict() for k, s in ep_stats.items()}
            for cam in self.cameras:
                key = image_key(cam)
                if key in old_stats.get(ep, {}):
                    entry[key] = old_stats[ep][key]
            new_ep_stats.append({"episode_index": ep, "stats": entry})

        stats = {}
        for k in numeric:
            stats[k] = glob[k].to_dict()
            stats[k]["q01"], stats[k]["q99"] = quantiles(np.concatenate(samples[k]))
        for cam in self.cameras:
            key, agg = image_key(cam), None
            for row in new_ep_stats:
                if key in row["stats"]:
                    agg = agg or RunningStats(3)
                    agg.merge(RunningStats.from_dict(row["stats"][key]))
            if agg is not None:
                stats[key] = _image_stats_dict(agg)
        self._tasks = tasks
        write_jsonl_atomic(self._meta(layout.TASKS_FILE), [{"task_index": i, "task": t} for t, i in tasks.items()])
        write_jsonl_atomic(self._meta(layout.EPISODES_STATS_FILE), new_ep_stats)
        write_jsonl_atomic(self._meta(layout.EPISODES_FILE), [self._episodes[k] for k in sorted(self._episodes)])
        write_json_atomic(self._meta(layout.STATS_FILE), stats)
        return self._write_info()

    # ---------------------------------------------------------------- helpers
    def _task_index(self, task: str) -> int:
        if task not in self._tasks:
            self._tasks[task] = len(self._tasks)
            append_jsonl(self._meta(layout.TASKS_FILE), {"task_index": self._tasks[task], "task": task})
        return self._tasks[task]

    def _info_templates(self) -> dict:
        return {"chunks_size": self.chunks_size, "data_path": layout.DATA_PATH, "video_path": layout.VIDEO_PATH}

    def _build_features(self, episode_index: int, height: int, width: int, data_features: dict) -> dict:
        info = self._info_templates()
        feats = {}
        for cam in self.cameras:
            probe = probe_video(layout.video_file(self.root, info, episode_index, cam))
            feats[image_key(cam)] = layout.video_feature(height, width, probe)
        feats.update(data_features)
        return feats

    def _write_info(self) -> dict:
        n = len(self._episodes)
        info = {
            "codebase_version": layout.CODEBASE_VERSION,
            "robot_type": self.robot_type,
            "total_episodes": n,
            "total_frames": self.total_frames,
            "total_tasks": len(self._tasks),
            "total_videos": n * len(self.cameras),
            "total_chunks": (max(self._episodes) // self.chunks_size + 1) if n else 0,
            "chunks_size": self.chunks_size,
            "fps": self.fps,
            "splits": {"train": f"0:{n}"},
            "data_path": layout.DATA_PATH,
            "video_path": layout.VIDEO_PATH,
            "features": self._features,
        }
        write_json_atomic(self._meta(layout.INFO_FILE), info)
        return info

    def _write_parquet(self, path: Path, columns: dict[str, np.ndarray], features: dict | None = None) -> None:
        """Write the columns of ``features`` (default: the dataset's); other columns are left out."""
        schema = layout.arrow_schema(features or self._features)
        arrays = [layout.array_to_arrow(columns[f.name], f.type) for f in schema]
        table = pa.Table.from_arrays(arrays, schema=schema)
        with atomic_path(path, fsync=True) as tmp:
            pq.write_table(table, tmp, compression="snappy")

    def _load_episode_stats(self) -> dict[int, dict]:
        path = self._meta(layout.EPISODES_STATS_FILE)
        return {int(r["episode_index"]): r["stats"] for r in read_jsonl(path)} if path.is_file() else {}


def episode_columns(record: EpisodeRecord, episode_index: int, task_index: int, index_offset: int
                    ) -> dict[str, np.ndarray]:
    """Per-frame columns of one episode under DROID's feature names, each (T, dim) (strings: (T,))."""
    t = record.length
    f32 = lambda a: np.asarray(a, dtype=np.float32).reshape(t, -1)  # noqa: E731
    last = np.arange(t) == t - 1
    success = bool(record.success)
    return {
        "is_first": (np.arange(t) == 0).reshape(t, 1),
        "is_last": last.reshape(t, 1),
        # terminal = the episode ended in a terminal (task-solved) state; failures end by time limit
        "is_terminal": (last & success).reshape(t, 1),
        "language_instruction": np.array([record.instruction] * t, dtype=object),
        STATE_CARTESIAN: f32(record.cartesian_position),
        STATE_GRIPPER: f32(record.gripper_position),
        STATE_JOINT: f32(record.joint_position),
        layout.STATE: f32(np.concatenate([record.joint_position, record.gripper_position], axis=1)),
        ACTION_CARTESIAN: f32(record.action_cartesian_position),
        ACTION_GRIPPER: f32(record.action_gripper_position),
        ACTION_JOINT: f32(record.action_joint_position),
        layout.ACTION: f32(np.concatenate([record.action_joint_position, record.action_gripper_position], axis=1)),
        "discount": np.ones((t, 1), np.float32),
        "reward": (last & success).astype(np.float32).reshape(t, 1),
        "is_episode_successful": np.full((t, 1), success),
        "timestamp": (np.arange(t, dtype=np.float32) / np.float32(record.fps)).reshape(t, 1),
        "frame_index": np.arange(t, dtype=np.int64).reshape(t, 1),
        "episode_index": np.full((t, 1), episode_index, np.int64),
        "index": np.arange(index_offset, index_offset + t, dtype=np.int64).reshape(t, 1),
        "task_index": np.full((t, 1), task_index, np.int64),
        **({FRAME_SUCCESS: np.asarray(record.frame_success, bool).reshape(t, 1)}
           if record.frame_success is not None else {}),
    }


def numeric_stats(columns: dict[str, np.ndarray], features: dict[str, dict]) -> dict[str, RunningStats]:
    """Stats of every numeric (incl. bool) column present in ``columns``."""
    out = {}
    for k, ft in features.items():
        if layout.is_numeric(ft) and k in columns:
            s = RunningStats(int(np.prod(ft["shape"])))
            s.update(np.asarray(columns[k], dtype=np.float64).reshape(len(columns[k]), -1))
            out[k] = s
    return out


def _image_stats_dict(s: RunningStats) -> dict:
    """Image stats in LeRobot's (3, 1, 1) nesting."""
    d = s.to_dict()
    return {k: (v if k == "count" else [[[x]] for x in v]) for k, v in d.items()}

