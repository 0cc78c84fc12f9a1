"""Per-frame success labels of MiniDROID datasets: read from the data, or recovered by re-simulation.

Datasets written since the ``is_success`` column existed (:data:`persistworld_env.constants.FRAME_SUCCESS`)
carry the labels. For an older one, every episode is re-simulated from its seed (``meta/episodes.jsonl``)
**without rendering** (physics only, several times faster) and its task's success predicate evaluated
at every frame. Re-simulation is checked against the recording: same length, recorded poses reproduced
to ``tolerance`` and the same episode outcome; any mismatch raises :class:`ResimulationError` naming the
episode, so wrong labels are never written.

A labels file is a parquet table (``episode_index``, ``frame_index``, ``is_success``) with the dataset
path and the largest pose error in its metadata; :func:`load_frame_success` reads it back, checking it
covers the dataset's episodes with their lengths.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm.auto import tqdm

from persistworld_env.constants import DATA_FPS, DEFAULT_HEIGHT, DEFAULT_WIDTH, FRAME_SUCCESS
from persistworld_env.data.errors import DatasetError
from persistworld_env.data.io_utils import atomic_path
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.sim.generation import generation_settings

#: Largest allowed difference between a recorded and a re-simulated pose entry (the recording is float32).
POSE_TOLERANCE = 1e-4
_METADATA_KEY = b"persistworld"

_SIM = None  # one simulator per worker process


class ResimulationError(DatasetError):
    """Re-simulating an episode did not reproduce its recording (labels would be wrong)."""


def resimulate_episode(sim, seed: int, task_family: str | None, recorded_pose: np.ndarray,
                       recorded_success: bool | None = None, tolerance: float = POSE_TOLERANCE,
                       name: str = "episode", min_ticks: int = 0) -> tuple[np.ndarray, float]:
    """Per-frame success of one recorded episode, re-simulated by seed without rendering.

    Args:
        sim: a :class:`~persistworld_env.sim.simulator.MiniDROIDSimulator` (its renderer is not used).
        seed, task_family: as in ``meta/episodes.jsonl``.
        recorded_pose: (T, 7) recorded measured poses, compared with the re-simulated ones.
        recorded_success: the recorded episode outcome, compared when given.
        tolerance: largest allowed absolute pose difference.
        name: how errors name the episode.
        min_ticks: the episode's least length as generated (``generate --min-seconds``: ``min_ticks`` in the
            dataset's ``meta/persistworld_generation.json``).
    Returns:
        ((T,) bool labels, largest absolute pose difference).
    Raises:
        ResimulationError: the re-simulation differs in length, poses or outcome.
    """
    from persistworld_env.sim.recording import run_expert

    run = run_expert(sim, int(seed), task_family or None, render=False, min_ticks=int(min_ticks))
    recorded_pose = np.asarray(recorded_pose, dtype=np.float32)
    if len(run.state) != len(recorded_pose):
        raise ResimulationError(f"{name} (seed {seed}): re-simulation has {len(run.state)} frames, the recording "
                                f"{len(recorded_pose)}; the dataset was not made by this version of MiniDROID")
    error = float(np.abs(run.state.astype(np.float32) - recorded_pose).max())
    if not error <= tolerance:
        raise ResimulationError(f"{name} (seed {seed}): re-simulated poses differ from the recorded ones by up to "
                                f"{error:.3g} (> {tolerance:g}); the dataset was made by another simulator version "
                                "or mesh setting (persistworld generate --full-meshes: pass low_poly=False)")
    if recorded_success is not None and bool(recorded_success) != run.success:
        raise ResimulationError(f"{name} (seed {seed}): re-simulated outcome {run.success} != recorded "
                                f"{bool(recorded_success)}")
    return run.frame_success, error


def _init_worker(low_poly: bool) -> None:
    global _SIM
    import persistworld_env  # noqa: F401  (headless rendering defaults before MuJoCo loads)
    from persistworld_env.sim.simulator import MiniDROIDSimulator

    _SIM = MiniDROIDSimulator(DEFAULT_HEIGHT, DEFAULT_WIDTH, low_poly=low_poly)


def _label_job(job: tuple) -> tuple[int, np.ndarray, float]:
    episode, seed, family, pose, success, tolerance, min_ticks = job
    labels, error = resimulate_episode(_SIM, seed, family, pose, success, tolerance, name=f"episode {episode}",
                                       min_ticks=min_ticks)
    return episode, labels, error


def label_dataset(root: str | os.PathLike, out: str | os.PathLike, workers: int = 1, low_poly: bool = True,
                  tolerance: float = POSE_TOLERANCE, episodes: Sequence[int] | None = None,
                  progress: bool = True) -> dict:
    """Re-simulate a MiniDROID dataset's episodes and write their per-frame success labels to ``out``.

    Args:
        root: LeRobot-layout MiniDROID dataset (read only).
        out: labels parquet file to write (atomically; its folder is created).
        workers: simulator processes.
        low_poly: the mesh setting the dataset was generated with (``persistworld generate``'s default: True).
        tolerance: largest allowed recorded-vs-re-simulated pose difference.
        episodes: a subset of episodes (default: all).
    Returns a summary: episodes, frames, positive frames, largest pose error, output path.
    """
    reader = LeRobotEpisodes(root, cameras=())
    if reader.fps != DATA_FPS:
        raise DatasetError(f"{root}: recorded at {reader.fps} fps, MiniDROID records at {DATA_FPS}")
    chosen = reader.episode_indices if episodes is None else [int(e) for e in episodes]
    min_ticks = int(generation_settings(root).get("min_ticks", 0))  # generate --min-seconds lengthens episodes
    jobs = []
    for ep in chosen:
        meta = reader.episode_meta(ep)
        if "seed" not in meta or int(meta["seed"]) < 0:
            raise DatasetError(f"{root}: episode {ep} has no seed in {reader.root / 'meta/episodes.jsonl'}; only "
                               "MiniDROID episodes can be re-simulated")
        jobs.append((ep, int(meta["seed"]), meta.get("task_family"), reader.load_pose(ep), meta.get("success"),
                     tolerance, min_ticks))
    results: dict[int, np.ndarray] = {}
    worst = 0.0
    bar = tqdm(total=len(jobs), desc="re-simulating for success labels", unit="ep", disable=not progress)
    pool = None
    try:
        if workers <= 1:
            _init_worker(low_poly)
            outputs = map(_label_job, jobs)
        else:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(low_poly,))
            outputs = pool.imap_unordered(_label_job, jobs)
        for ep, labels, error in outputs:
            results[ep] = labels
            worst = max(worst, error)
            bar.update(1)
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
    meta = {"dataset": str(Path(root).resolve()), "max_pose_error": worst, "tolerance": tolerance,
            "low_poly": low_poly, "source": "re-simulation"}
    write_labels(out, results, meta)
    frames = sum(len(v) for v in results.values())
    return {"episodes": len(results), "frames": frames, "positive_frames": int(sum(v.sum() for v in results.values())),
            "max_pose_error": worst, "labels": str(out)}


def write_labels(path: str | os.PathLike, labels: dict[int, np.ndarray], metadata: dict | None = None) -> Path:
    """Write per-episode (T,) bool labels as a parquet table (atomically)."""
    eps = sorted(labels)
    table = pa.table({
        "episode_index": pa.array(np.concatenate([np.full(len(labels[e]), e, np.int64) for e in eps])),
        "frame_index": pa.array(np.concatenate([np.arange(len(labels[e]), dtype=np.int64) for e in eps])),
        FRAME_SUCCESS: pa.array(np.concatenate([np.asarray(labels[e], bool) for e in eps])),
    })
    table = table.replace_schema_metadata({_METADATA_KEY: json.dumps(metadata or {}).encode()})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return path


def read_labels(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """Per-episode (T,) bool labels of a labels file written by :func:`write_labels`."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"labels file not found: {path}")
    try:
        table = pq.read_table(path)
        ep = table.column("episode_index").to_numpy()
        frame = table.column("frame_index").to_numpy()
        value = table.column(FRAME_SUCCESS).to_numpy(zero_copy_only=False).astype(bool)
    except (pa.ArrowException, OSError, KeyError) as e:
        raise DatasetError(f"cannot read labels file {path} (truncated, corrupt or not a labels file?): {e}") from e
    out: dict[int, np.ndarray] = {}
    order = np.lexsort((frame, ep))
    ep, frame, value = ep[order], frame[order], value[order]
    for e in np.unique(ep):
        sel = ep == e
        if not np.array_equal(frame[sel], np.arange(sel.sum())):
            raise DatasetError(f"{path}: frames of episode {int(e)} are not 0..T-1")
        out[int(e)] = value[sel]
    return out


def load_frame_success(root: str | os.PathLike, labels: str | os.PathLike | None = None,
                       episodes: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """(T,) bool per-frame success of a dataset's episodes: its ``is_success`` column, else a labels file.

    Raises:
        DatasetError: neither is available, or the labels file does not match the dataset.
    """
    reader = LeRobotEpisodes(root, cameras=())
    chosen = reader.episode_indices if episodes is None else [int(e) for e in episodes]
    if reader.has_frame_success and labels is None:
        return {ep: reader.load_frame_success(ep) for ep in chosen}
    if labels is None:
        raise DatasetError(f"{root} has no per-frame {FRAME_SUCCESS!r} column: pass a labels file (made by "
                           "persistworld_env.sim.labels.label_dataset, or `persistworld train-success --labels`)")
    table = read_labels(labels)
    out = {}
    for ep in chosen:
        if ep not in table:
            raise DatasetError(f"labels file {labels} has no labels for episode {ep} of {root}")
        if len(table[ep]) != reader.length(ep):
            raise DatasetError(f"labels file {labels}: episode {ep} has {len(table[ep])} labels, the dataset "
                               f"{reader.length(ep)} frames (labels of another dataset?)")
        out[ep] = table[ep]
    return out
