"""Generate MiniDROID datasets in the DROID LeRobot layout: parallel, deterministic, resumable."""
from __future__ import annotations

import multiprocessing as mp
import os
import time
import warnings
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from persistworld_env.constants import DEFAULT_HEIGHT, DEFAULT_WIDTH
from persistworld_env.data.episode import EpisodeRecord

_SIM = None  # one simulator per worker process

#: settings that decide an episode's content, stored with the dataset and checked when it is resumed
SETTINGS_FILE = "meta/persistworld_generation.json"


def check_generation_settings(root: Path, settings: dict, has_episodes: bool,
                              software: dict | None = None) -> None:
    """Store ``settings`` in a new dataset, or make sure a resumed one was started with the same settings.

    Raises ValueError naming every differing setting (a resume must not mix episodes of two recipes).
    A dataset written before settings were stored is resumed with a warning (nothing to compare).
    ``software`` (e.g. ``{"mujoco": "4.0.1"}``) is stored under ``"software"`` and compared with a warning only:
    another renderer version draws the same episodes a little differently (up to 0.2 dB PSNR between MuJoCo
    4.0.0 and 4.0.1), which is worth knowing but does not change what an episode is.
    """
    from persistworld_env.data.io_utils import write_json_atomic

    path = root / SETTINGS_FILE
    stored = generation_settings(root)
    if stored:
        diff = {k: (stored.get(k), v) for k, v in settings.items() if stored.get(k) != v}
        if diff:
            listed = ", ".join(f"{k}: {a!r} in the dataset, {b!r} now" for k, (a, b) in sorted(diff.items()))
            raise ValueError(f"{root} was generated with other settings ({listed}); resume with the same "
                             f"settings or write to a new folder")
        recorded = stored.get("software", {})
        changed = {k: (recorded[k], v) for k, v in (software or {}).items() if k in recorded and recorded[k] != v}
        if changed:
            listed = ", ".join(f"{k} {a} in the dataset, {b} now" for k, (a, b) in sorted(changed.items()))
            warnings.warn(f"{root}: resuming with other software ({listed}); the new episodes may render slightly "
                          f"differently from the old ones", stacklevel=3)
        return
    if has_episodes:
        warnings.warn(f"{root} has episodes but no {SETTINGS_FILE}: cannot check that the resumed settings "
                      f"match; storing the current ones", stacklevel=3)
    write_json_atomic(path, {**settings, "software": dict(software or {})} if software else settings)


def generation_settings(root: str | os.PathLike) -> dict:
    """The settings a MiniDROID dataset was generated with (``meta/persistworld_generation.json``); ``{}`` for a
    dataset without them (written before they were stored, or not by ``generate``)."""
    from persistworld_env.data.io_utils import read_json

    path = Path(root) / SETTINGS_FILE
    return read_json(path) if path.is_file() else {}


def generation_software() -> dict[str, str]:
    """Versions of the software that renders and simulates an episode (stored with every generated dataset)."""
    import mujoco

    return {"mujoco": mujoco.__version__}


def episode_seed(base_seed: int, index: int) -> int:
    """Seed of episode ``index`` in a dataset generated with ``base_seed`` (independent streams)."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def _init_worker(height: int, width: int, low_poly: bool) -> None:
    global _SIM
    import persistworld_env  # noqa: F401  (headless rendering defaults before MuJoCo loads)
    from persistworld_env.sim.simulator import MiniDROIDSimulator

    _SIM = MiniDROIDSimulator(height, width, low_poly=low_poly)


def _record(job: tuple[int, int, str | None, int]) -> tuple[int, EpisodeRecord]:
    from persistworld_env.sim.recording import record_episode

    index, seed, task, min_ticks = job
    return index, record_episode(_SIM, seed, task_family=task, min_ticks=min_ticks)


def generate_dataset(out: str | os.PathLike, episodes: int, seed: int = 0, height: int = DEFAULT_HEIGHT,
                     width: int = DEFAULT_WIDTH, workers: int = 2, task: str | None = None,
                     low_poly: bool = True, progress: bool = True, min_seconds: float = 0.0) -> dict:
    """Write ``episodes`` scripted-expert episodes to ``out``; already indexed episodes are kept.

    The settings that decide an episode's content are stored in ``meta/persistworld_generation.json``;
    resuming with different ones raises ValueError (raising ``episodes`` is fine).

    Episode ``i`` always has seed ``episode_seed(seed, i)``, so a dataset is the same whatever the
    number of workers or interruptions. ``min_seconds`` > 0 makes every episode at least that long (the
    expert returns the arm to its start after the task and holds it: long-horizon evaluation sets).
    Returns throughput figures and the success rate.
    """
    from persistworld_env.constants import DATA_FPS
    from persistworld_env.data.lerobot_writer import LeRobotWriter
    from persistworld_env.sim.recording import MAX_SECONDS
    from persistworld_env.sim.tasks import TASK_FAMILIES

    if episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {episodes}")
    if not 0.0 <= min_seconds <= MAX_SECONDS:
        raise ValueError(f"--min-seconds must lie in [0, {MAX_SECONDS}], got {min_seconds}")
    if task is not None and task not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {task!r}; choose from {TASK_FAMILIES}")
    min_ticks = int(np.ceil(min_seconds * DATA_FPS))
    writer = LeRobotWriter(Path(out))
    done = writer.completed_episodes()
    check_generation_settings(Path(out), {"seed": int(seed), "height": int(height), "width": int(width),
                                          "task": task, "low_poly": bool(low_poly), "min_ticks": min_ticks},
                              has_episodes=bool(done), software=generation_software())
    jobs = [(i, episode_seed(seed, i), task, min_ticks) for i in range(episodes) if i not in done]
    start, frames, successes = time.perf_counter(), 0, []
    bar = tqdm(total=episodes, initial=episodes - len(jobs), desc="MiniDROID episodes", unit="ep",
               disable=not progress)
    try:
        if workers <= 1:
            _init_worker(height, width, low_poly)
            results = map(_record, jobs)
            pool = None
        else:
            pool = mp.get_context("spawn").Pool(workers, initializer=_init_worker, initargs=(height, width, low_poly))
            results = pool.imap_unordered(_record, jobs)
        for index, record in results:
            writer.write_episode(index, record)
            frames += record.length
            successes.append(record.success)
            bar.update(1)
            bar.set_postfix(success=f"{np.mean(successes):.2f}")
        if pool is not None:
            pool.close()
            pool.join()
    finally:
        bar.close()
        if workers > 1 and "pool" in locals() and pool is not None:
            pool.terminate()
        if writer.completed_episodes():  # an error before the first episode stays the error reported
            writer.finalize()
    elapsed = time.perf_counter() - start
    return {
        "episodes_written": len(jobs),
        "episodes_total": len(writer.completed_episodes()),
        "seconds": round(elapsed, 2),
        "episodes_per_min": round(60 * len(jobs) / elapsed, 2) if jobs else None,
        "frames_per_s": round(frames / elapsed, 1) if jobs else None,
        "success_rate_new": round(float(np.mean(successes)), 3) if successes else None,
    }
