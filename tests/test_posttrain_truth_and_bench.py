"""Simulator ground truth for post-training, and ``persistworld bench posttrain`` on a tiny model."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_helpers import make_episode, write_dataset
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.metrics import psnr
from posttrain_helpers import H, W, write_tiny_setup


def test_sim_truth_replays_a_minidroid_scene_under_perturbed_actions(tmp_path):
    from persistworld_env.posttrain.truth import SimTruth
    from persistworld_env.sim.generation import generate_dataset

    generate_dataset(tmp_path / "ds", 1, seed=0, workers=1, height=H, width=W, progress=False)
    reader = LeRobotEpisodes(tmp_path / "ds")
    normalizer = PoseNormalizer.from_dataset(tmp_path / "ds")
    truth = SimTruth(reader, [0], normalizer, action_noise=0.1)
    a = truth.episode(0, 2, np.random.default_rng(0))
    b = truth.episode(0, 2, np.random.default_rng(1))
    truth.close()
    recorded = np.stack([reader.load_frames(0, cam)[0] for cam in reader.cameras])
    assert psnr(a.first_frames, recorded).min() > 30  # the episode's very scene (the recording is mp4-compressed)
    assert a.frames.shape == (2, 4, 3, H, W, 3) and a.poses.shape == (2, 4, 7)
    assert not np.allclose(a.poses, b.poses) and not np.array_equal(a.frames, b.frames)  # new actions, new truth
    write_dataset(tmp_path / "no_seed", [dataclasses.replace(make_episode(0, 45, H, W), seed=-1)])
    with pytest.raises(ValueError, match="needs a MiniDROID dataset"):
        SimTruth(LeRobotEpisodes(tmp_path / "no_seed"), [0], normalizer)


@pytest.fixture
def fresh_accelerate_state():
    """accelerate keeps one state per process (its mixed precision included): start and leave this test with none."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.parametrize("mixed_precision", ["no", "bf16"])
def test_bench_posttrain_reports_the_split_and_the_batching_gain(tmp_path, mixed_precision, fresh_accelerate_state):
    from training.bench import bench_posttrain

    _, model = write_tiny_setup(tmp_path)
    figures = bench_posttrain(str(model), candidates=3, prefix_steps=1, clips=1, repeats=1,
                              mixed_precision=mixed_precision)
    assert figures["mixed_precision"] == mixed_precision
    parts = [figures[f"{k}_seconds"] for k in ("prefix", "candidates", "rewards", "update")]
    assert figures["seconds_per_group"] == pytest.approx(sum(parts), abs=0.01)
    assert figures["batched_vs_one_by_one_speedup"] > 0 and figures["candidates"] == 3
    assert figures["sampling_only_speedup"] > 0
