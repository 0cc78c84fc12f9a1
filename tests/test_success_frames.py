"""World-model frames labelled by the simulator (collect-success-frames) and the detector trained on them."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import persistworld_env  # noqa: F401
from persistworld_env.constants import CAMERAS
from persistworld_env.evaluation.policies import expert_spec
from persistworld_env.evaluation.success_frames import SuccessFrames, collect_success_frames
from persistworld_env.models.success_detector import SuccessDetector, detector_config
from persistworld_env.sim.env import MiniDROIDSimEnv
from persistworld_env.vector_env import PersistWorldVectorEnv
from training.success_frames import FRAMES_FILE
from training.train_success import (
    SuccessTrainConfig, evaluate_rollouts, longest_run, train_success_detector, training_batch,
)

H, W = 24, 40


def _frames(n: int, value: int = 0, seeds=None) -> SuccessFrames:
    return SuccessFrames(frames=np.full((n, len(CAMERAS), H, W, 3), value, np.uint8),
                         labels=np.arange(n) % 2 == 0, instructions=np.array(["pick up the red cube"] * n),
                         policies=np.array(["p"] * n), seeds=np.asarray(seeds if seeds is not None else np.arange(n)),
                         steps=np.ones(n, np.int64))


def test_labels_are_the_simulators_verdict_on_the_same_actions(tiny_model_dir):
    spec, seeds, steps = expert_spec("careful", 20), [3, 4], 20
    venv = PersistWorldVectorEnv(num_envs=2, model=str(tiny_model_dir), sampling_steps=1, max_episode_steps=steps + 1)
    try:
        got = collect_success_frames(venv, spec, seeds, steps, progress=False)
        normalizer = venv.model.normalizer
    finally:
        venv.close()
    assert len(got) == 2 * steps and got.frames.shape == (2 * steps, 3, H, W, 3)
    assert set(got.policies) == {"expert-careful"} and sorted(got.steps) == sorted(list(range(1, steps + 1)) * 2)
    # The expert's actions do not depend on what it sees: the same seeds run in the simulator alone give the labels.
    sim = MiniDROIDSimEnv(H, W, pose_normalizer=normalizer, terminate_on_success=False)
    expected = []
    for seed in seeds:
        obs, info = sim.reset(seed=seed)
        policy = spec.build()
        policy.reset(info, normalizer)
        for _ in range(steps):
            obs, *_, info = sim.step(policy.act(obs))
            expected.append(info["success"])
    sim.close()
    order = np.lexsort((got.steps, got.seeds))
    assert got.labels[order].tolist() == expected and any(expected)


def test_success_frames_file_round_trip_and_errors(tmp_path):
    frames = _frames(4)
    path = frames.save(tmp_path / "a" / FRAMES_FILE)
    back = SuccessFrames.load(path)
    assert np.array_equal(back.frames, frames.frames) and back.labels.tolist() == frames.labels.tolist()
    assert back.instructions.tolist() == frames.instructions.tolist()
    with pytest.raises(FileNotFoundError, match="collect-success-frames"):
        SuccessFrames.load(tmp_path / "missing.npz")
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        SuccessFrames.load(tmp_path / "bad.npz")
    np.savez(tmp_path / "foreign.npz", frames=frames.frames)
    with pytest.raises(ValueError, match="missing arrays"):
        SuccessFrames.load(tmp_path / "foreign.npz")
    with pytest.raises(ValueError, match="one entry per row"):
        SuccessFrames(frames.frames, frames.labels[:3], frames.instructions, frames.policies, frames.seeds, frames.steps)


def test_batches_mix_dataset_and_world_model_frames_balanced():
    from training.train_success import LabelledFrames

    data = LabelledFrames(frames=np.zeros((6, 3, H, W, 3), np.uint8), labels=np.arange(6) % 3 == 0,
                          instructions=["push the cube"] * 6, families=np.array(["push"] * 6), episodes=np.zeros(6))
    rollouts = _frames(10, value=255)
    config = SuccessTrainConfig("", "", batch_size=8, rollout_fraction=0.25)
    frames, labels, instructions = training_batch(data, rollouts, config, np.random.default_rng(0))
    from_rollouts = frames.reshape(8, -1)[:, 0] == 255
    assert from_rollouts.sum() == 2 and labels[from_rollouts].sum() == 1  # 2 of 8, half of them successes
    assert labels[~from_rollouts].sum() == 3 and len(instructions) == 8


def test_detector_trains_on_rollout_frames_and_reports_them(sim_dataset, tmp_path):
    torch.manual_seed(0)
    start = SuccessDetector(detector_config("tiny", height=H, width=W))
    start.save_pretrained(tmp_path / "start")
    _frames(16, value=200, seeds=np.repeat(np.arange(8), 2)).save(tmp_path / "roll" / FRAMES_FILE)
    config = SuccessTrainConfig(str(sim_dataset), str(tmp_path / "out"), scale="tiny", steps=3, batch_size=8,
                                val_episodes=(2,), eval_every=1000, progress=False, rollout_frames=(str(tmp_path / "roll"),),
                                rollout_val_mod=4, init_from=str(tmp_path / "start"), lr=1e-12, warmup_steps=0)
    summary = train_success_detector(config)
    rollouts = summary["rollouts"]
    assert rollouts["train_rows"] == 12 and rollouts["val_rows"] == 4  # seeds 3 and 7 held out
    assert rollouts["val"]["per_policy"]["p"]["episodes"] == 2
    trained = SuccessDetector.from_pretrained(tmp_path / "out")
    for (k, a), b in zip(start.state_dict().items(), trained.state_dict().values()):  # lr ~ 0: the init survives
        assert torch.allclose(a, b, atol=1e-6), k
    card = (tmp_path / "out" / "README.md").read_text()
    assert "World-model frames" in card and "false fires" in card
    assert json.loads((tmp_path / "out" / "training_summary.json").read_text())["rollouts"]["val_rows"] == 4
    with pytest.raises(ValueError, match="success and failure"):
        _frames(4, seeds=[0, 1, 2, 3]).select(np.array([1, 3])).save(tmp_path / "neg" / FRAMES_FILE)
        train_success_detector(SuccessTrainConfig(str(sim_dataset), str(tmp_path / "o2"), scale="tiny", steps=1,
                                                  val_episodes=(2,), progress=False,
                                                  rollout_frames=(str(tmp_path / "neg" / FRAMES_FILE),)))


def test_episode_verdicts_need_consecutive_steps():
    assert [longest_run(np.array(f, bool)) for f in ([], [0, 0], [1, 0, 1, 1, 0], [1, 1, 1])] == [0, 0, 2, 3]

    class Fixed:  # P(success) = the first pixel / 255: steps 1..4 of one episode, given out of order
        def predict_proba(self, frames, instructions):
            return frames[:, 0, 0, 0, 0] / 255.0

    data = _frames(4, seeds=[0, 0, 0, 0])
    data.steps[:] = [3, 1, 4, 2]
    data.frames[:, 0, 0, 0, 0] = [200, 200, 0, 200]  # by step: 1 -> 200, 2 -> 200, 3 -> 200, 4 -> 0
    data.labels[:] = False
    for k, fires in ((3, True), (4, False)):
        result = evaluate_rollouts(Fixed(), data, 0.5, consecutive_steps=k)["per_policy"]["p"]
        assert result["detector_success"] == float(fires) and result["false_fires"] == int(fires)
