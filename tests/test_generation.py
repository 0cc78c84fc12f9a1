"""`persistworld generate`: deterministic whatever the workers, and an interrupted run resumes."""
from __future__ import annotations

import json

import numpy as np

from persistworld_env.constants import CAMERAS
from persistworld_env.data import LeRobotEpisodes
from persistworld_env.sim.generation import episode_seed, generate_dataset


def test_resumed_parallel_generation_equals_a_fresh_serial_one(tmp_path):
    fresh = tmp_path / "fresh"
    generate_dataset(fresh, 3, seed=7, workers=1, height=24, width=40, progress=False)
    resumed = tmp_path / "resumed"
    generate_dataset(resumed, 2, seed=7, workers=1, height=24, width=40, progress=False)  # "interrupted" at 2
    summary = generate_dataset(resumed, 3, seed=7, workers=2, height=24, width=40, progress=False)
    assert summary["episodes_written"] == 1 and summary["episodes_total"] == 3
    for name in ("data/chunk-000/episode_000000.parquet", "data/chunk-000/episode_000002.parquet",
                 "meta/episodes.jsonl", "meta/tasks.jsonl"):
        assert (fresh / name).read_bytes() == (resumed / name).read_bytes(), name
    a, b = LeRobotEpisodes(fresh), LeRobotEpisodes(resumed)
    np.testing.assert_array_equal(a.load_pose(2), b.load_pose(2))
    for i in range(3):  # the frames too, not only the states (whatever process encoded them)
        for camera in CAMERAS:
            np.testing.assert_array_equal(a.load_frames(i, camera), b.load_frames(i, camera))
    seeds = [json.loads(line)["seed"] for line in (fresh / "meta/episodes.jsonl").read_text().splitlines()]
    assert seeds == [episode_seed(7, i) for i in range(3)]


def test_min_seconds_gives_long_episodes_and_is_validated(tmp_path):
    import pytest

    from persistworld_env.constants import DATA_FPS

    generate_dataset(tmp_path / "long", 1, seed=7, workers=1, height=24, width=40, progress=False, min_seconds=12)
    assert LeRobotEpisodes(tmp_path / "long").length(0) >= 12 * DATA_FPS
    with pytest.raises(ValueError, match="min-seconds"):
        generate_dataset(tmp_path / "bad", 1, min_seconds=99, progress=False)


def test_resuming_with_other_settings_is_refused_and_changes_nothing(tmp_path):
    import pytest

    from persistworld_env.sim.generation import SETTINGS_FILE

    out = tmp_path / "set"
    generate_dataset(out, 1, seed=7, workers=1, height=24, width=40, progress=False)
    before = (out / "meta/episodes.jsonl").read_bytes()
    with pytest.raises(ValueError, match="seed: 7 in the dataset, 8 now"):
        generate_dataset(out, 2, seed=8, workers=1, height=24, width=40, progress=False)
    with pytest.raises(ValueError, match="min_ticks"):
        generate_dataset(out, 2, seed=7, workers=1, height=24, width=40, progress=False, min_seconds=12)
    assert (out / "meta/episodes.jsonl").read_bytes() == before
    (out / SETTINGS_FILE).unlink()  # a dataset from before settings were stored: resumed, with a warning
    with pytest.warns(UserWarning, match="cannot check"):
        generate_dataset(out, 1, seed=7, workers=1, height=24, width=40, progress=False)
    assert json.loads((out / SETTINGS_FILE).read_text())["seed"] == 7


def test_the_renderer_version_is_recorded_and_a_resume_with_another_one_warns(tmp_path):
    import mujoco
    import pytest

    from persistworld_env.sim.generation import SETTINGS_FILE

    out = tmp_path / "sw"
    generate_dataset(out, 1, seed=3, workers=1, height=24, width=40, progress=False)
    stored = json.loads((out / SETTINGS_FILE).read_text())
    assert stored["software"] == {"mujoco": mujoco.__version__}
    stored["software"]["mujoco"] = "0.0.1"
    (out / SETTINGS_FILE).write_text(json.dumps(stored))
    with pytest.warns(UserWarning, match=f"mujoco 0.0.1 in the dataset, {mujoco.__version__} now"):
        generate_dataset(out, 2, seed=3, workers=1, height=24, width=40, progress=False)
    assert len((out / "meta/episodes.jsonl").read_text().splitlines()) == 2
    assert json.loads((out / SETTINGS_FILE).read_text())["software"]["mujoco"] == "0.0.1"  # the first record stays


def test_an_error_before_the_first_episode_is_the_error_reported(tmp_path, monkeypatch):
    import pytest

    from persistworld_env.sim import generation

    with pytest.raises(ValueError, match="unknown task family 'foo'"):
        generate_dataset(tmp_path / "task", 1, workers=1, task="foo", height=24, width=40, progress=False)
    assert not (tmp_path / "task" / generation.SETTINGS_FILE).exists()  # nothing stored for a refused run

    def interrupted(job):
        raise KeyboardInterrupt

    monkeypatch.setattr(generation, "_record", interrupted)  # Ctrl-C during the first episode
    with pytest.raises(KeyboardInterrupt):  # not "no episodes written": the CLI's resume hint must run
        generate_dataset(tmp_path / "ctrl_c", 1, workers=1, height=24, width=40, progress=False)
