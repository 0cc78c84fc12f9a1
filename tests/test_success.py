"""Success labels (generator column, re-simulation), the success detector, its training, reward="success", videos."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import persistworld_env  # noqa: F401
from persistworld_env.constants import CAMERAS, FRAME_SUCCESS, MODEL_FPS
from persistworld_env.data import DatasetError, LeRobotEpisodes
from persistworld_env.models.autoencoder import ModelLoadError
from persistworld_env.models.success_detector import (
    DETECTOR_SUBDIR, WEIGHTS_FILE, SuccessDetector, detector_config,
)
from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from persistworld_env.sim.generation import generate_dataset
from persistworld_env.sim.labels import (
    ResimulationError, label_dataset, load_frame_success, resimulate_episode, write_labels,
)
from persistworld_env.sim.simulator import MiniDROIDSimulator
from persistworld_env.world_model_env import PersistWorldEnv
from training.train_success import (
    SuccessTrainConfig, augment, balanced_indices, blur3, classification_metrics, train_success_detector,
)

from data_helpers import make_episodes, write_dataset

H, W = 24, 40


@pytest.fixture(scope="module")
def minidroid(tmp_path_factory) -> Path:
    """Two MiniDROID episodes (pick, place; both succeed) written by the generator, with per-frame labels."""
    root = tmp_path_factory.mktemp("minidroid") / "ds"
    generate_dataset(root, 2, seed=0, workers=1, height=H, width=W, progress=False)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W).save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("det") / "detector"
    SuccessDetector(detector_config("tiny", height=H, width=W)).save_pretrained(d)
    return d


# ------------------------------------------------------------------------------------------ labels
def test_generator_writes_per_frame_success(minidroid):
    reader = LeRobotEpisodes(minidroid)
    assert reader.has_frame_success and reader.features[FRAME_SUCCESS]["dtype"] == "bool"
    for ep in reader.episode_indices:
        labels = reader.load_frame_success(ep)
        assert labels.dtype == bool and labels.shape == (reader.length(ep),)
        assert not labels[0] and labels.any()  # both episodes succeed, none at the start
        np.testing.assert_array_equal(reader.load_record(ep).frame_success, labels)
    # the DROID feature names are untouched
    table = pq.read_table(reader.data_path(0))
    assert {"observation.state.cartesian_position", "is_terminal", "is_episode_successful"} <= set(table.column_names)
    # against the recorded gripper (independent of the predicate code): a picked cube is held (gripper
    # closed), a placed one released (gripper open) after having been carried (gripper closed earlier)
    grip0 = reader.load_pose(0)[:, 6]
    assert reader.episode_meta(0)["task_family"] == "pick" and (grip0[reader.load_frame_success(0)] > 0.2).all()
    grip1, place = reader.load_pose(1)[:, 6], reader.load_frame_success(1)
    assert reader.episode_meta(1)["task_family"] == "place" and (grip1[place] < 0.5).all()
    assert (grip1[: np.flatnonzero(place)[0]] > 0.2).any()


def test_resimulated_labels_equal_the_recorded_ones(minidroid, tmp_path):
    out = tmp_path / "labels.parquet"
    summary = label_dataset(minidroid, out, progress=False)
    assert summary["episodes"] == 2 and summary["max_pose_error"] == 0.0
    from_file = load_frame_success(minidroid, out)
    from_column = load_frame_success(minidroid)
    for ep in (0, 1):
        np.testing.assert_array_equal(from_file[ep], from_column[ep])
    # a labels file that does not fit the dataset is refused
    write_labels(tmp_path / "short.parquet", {0: from_file[0][:-1], 1: from_file[1]})
    with pytest.raises(DatasetError, match="another dataset"):
        load_frame_success(minidroid, tmp_path / "short.parquet")
    write_labels(tmp_path / "one.parquet", {0: from_file[0]})
    with pytest.raises(DatasetError, match="no labels for episode 1"):
        load_frame_success(minidroid, tmp_path / "one.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"not parquet")
    with pytest.raises(DatasetError, match="cannot read labels"):
        load_frame_success(minidroid, tmp_path / "bad.parquet")


def test_resimulated_labels_of_a_long_horizon_dataset(tmp_path):
    root = tmp_path / "long"  # generate --min-seconds: the expert returns home and holds, the episode is longer
    generate_dataset(root, 1, seed=0, workers=1, height=H, width=W, progress=False, min_seconds=12)
    label_dataset(root, tmp_path / "labels.parquet", progress=False)
    np.testing.assert_array_equal(load_frame_success(root, tmp_path / "labels.parquet")[0],
                                  load_frame_success(root)[0])


def test_resimulation_refuses_a_recording_it_does_not_reproduce(minidroid):
    reader = LeRobotEpisodes(minidroid, cameras=())
    meta, pose = reader.episode_meta(0), reader.load_pose(0)
    sim = MiniDROIDSimulator(H, W)
    try:
        moved = pose.copy()
        moved[40, 0] += 0.01
        with pytest.raises(ResimulationError, match="differ"):
            resimulate_episode(sim, meta["seed"], meta["task_family"], moved)
        with pytest.raises(ResimulationError, match="frames"):
            resimulate_episode(sim, meta["seed"], meta["task_family"], pose[:-3])
        with pytest.raises(ResimulationError, match="outcome"):
            resimulate_episode(sim, meta["seed"], meta["task_family"], pose, recorded_success=not meta["success"])
    finally:
        sim.close()


def test_datasets_without_the_column(tmp_path):
    root = tmp_path / "old"
    episodes = make_episodes()[:2]  # synthetic episodes: no per-frame labels
    episodes[0].seed = -1  # as for DROID: no seed to re-simulate from
    write_dataset(root, episodes)
    reader = LeRobotEpisodes(root)
    assert not reader.has_frame_success and reader.load_record(0).frame_success is None
    with pytest.raises(DatasetError, match="labels file"):
        load_frame_success(root)
    with pytest.raises(DatasetError, match="no seed"):
        label_dataset(root, tmp_path / "l.parquet", progress=False)


def test_writer_keeps_the_label_column_consistent(tmp_path):
    labelled = make_episodes()[:2]
    for ep in labelled:
        ep.frame_success = np.arange(ep.length) > ep.length // 2
    root = tmp_path / "ds"
    writer = write_dataset(root, labelled[:1], finalize=False)
    with pytest.raises(ValueError, match="no per-frame success"):
        writer.write_episode(1, make_episodes()[1])
    writer.write_episode(1, labelled[1])
    writer.finalize()
    np.testing.assert_array_equal(LeRobotEpisodes(root).load_frame_success(1), labelled[1].frame_success)
    old = tmp_path / "old"  # an older dataset resumed by the new generator stays without the column
    writer = write_dataset(old, make_episodes()[:1], finalize=False)
    writer.write_episode(1, labelled[1])
    writer.finalize()
    assert not LeRobotEpisodes(old).has_frame_success
    bad = make_episodes()[0]
    bad.frame_success = np.zeros(3, bool)
    with pytest.raises(ValueError, match="frame_success"):
        bad.validate()


# ------------------------------------------------------------------------------------------ detector
def test_detector_round_trip_and_inputs(detector_dir):
    det = SuccessDetector.from_pretrained(detector_dir)
    frames = np.random.default_rng(0).integers(0, 256, (2, 3, H, W, 3), dtype=np.uint8)
    p = det.predict_proba(frames, ["pick up the red cube", "push the blue cup to the left"])
    assert p.shape == (2,) and p.dtype == np.float32 and ((0 < p) & (p < 1)).all()
    assert det.predict_proba(frames[:1], "pick up the red cube") != det.predict_proba(frames[:1], "push the cup")
    again = SuccessDetector.from_pretrained(detector_dir).predict_proba(frames, "pick up the red cube")
    np.testing.assert_allclose(det.predict_proba(frames, "pick up the red cube"), again, rtol=1e-6)
    assert det.predict_proba(frames[0], "pick up the red cube").shape == (1,)
    with pytest.raises(ValueError, match="uint8 frames"):
        det.predict_proba(frames[:, :2], "pick up the red cube")
    with pytest.raises(ValueError, match="uint8 frames"):
        det.predict_proba(frames.astype(np.float32), "pick up the red cube")
    with pytest.raises(ValueError, match="multiples"):
        detector_config("default", height=25)


def test_detector_load_errors(detector_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        SuccessDetector.from_pretrained(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="missing"):
        SuccessDetector.from_pretrained(empty)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(detector_dir, corrupt)
    data = (corrupt / WEIGHTS_FILE).read_bytes()
    (corrupt / WEIGHTS_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match="corrupt"):
        SuccessDetector.from_pretrained(corrupt)
    mismatch = tmp_path / "mismatch"
    shutil.copytree(detector_dir, mismatch)
    cfg = json.loads((mismatch / "config.json").read_text())
    cfg["channels"] = [4, 16]
    (mismatch / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="does not match"):
        SuccessDetector.from_pretrained(mismatch)
    (mismatch / "config.json").write_text("{")
    with pytest.raises(ModelLoadError, match="config"):
        SuccessDetector.from_pretrained(mismatch)


# ------------------------------------------------------------------------------------------ training
def test_classification_metrics_by_hand():
    m = classification_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 1, 0], bool), 0.5)
    assert m["accuracy"] == pytest.approx(0.75) and m["tpr"] == pytest.approx(2 / 3) and m["tnr"] == 1.0
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2) and (m["frames"], m["positives"]) == (4, 3)
    m = classification_metrics(np.array([0.9, 0.2, 0.6, 0.4]), np.array([1, 0, 0, 1], bool), 0.5)
    assert m["accuracy"] == m["balanced_accuracy"] == m["tpr"] == m["tnr"] == 0.5
    m = classification_metrics(np.array([0.2, 0.7]), np.array([0, 0], bool), 0.5)
    assert np.isnan(m["tpr"]) and m["balanced_accuracy"] == m["tnr"] == 0.5


def test_balanced_batches_and_augmentation():
    labels = np.zeros(100, bool)
    labels[[3, 50]] = True
    idx = balanced_indices(labels, 9, np.random.default_rng(0))
    assert len(idx) == 9 and labels[idx].sum() == 4
    with pytest.raises(ValueError, match="both"):
        balanced_indices(np.zeros(5, bool), 4, np.random.default_rng(0))
    x = torch.rand(2, 3, 3, 8, 16) * 2 - 1
    off = SuccessTrainConfig("", "", shift=0, brightness=0.0, noise_std=0.0, blur=0.0)
    assert torch.equal(augment(x, off, np.random.default_rng(0)), x)
    on = augment(x, SuccessTrainConfig("", ""), np.random.default_rng(0))
    assert on.shape == x.shape and not torch.equal(on, x) and on.abs().max() <= 1
    dot = torch.zeros(1, 1, 5, 5)
    dot[0, 0, 2, 2] = 16.0
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = torch.tensor([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]])
    torch.testing.assert_close(blur3(dot)[0, 0], expected)


def test_train_success_command_writes_a_loadable_detector(minidroid, tmp_path):
    from training.cli import main

    out = tmp_path / "det"
    assert main(["train-success", "--data", str(minidroid), "--out", str(out), "--scale", "tiny", "--steps", "6",
                 "--batch-size", "8", "--val-episodes", "1", "--eval-every", "3", "--no-progress",
                 "--num-threads", "1"]) == 0
    det = SuccessDetector.from_pretrained(out)
    assert (det.config.height, det.config.width) == (H, W)
    card = (out / "README.md").read_text()
    summary = json.loads((out / "training_summary.json").read_text())
    assert "Held-out results" in card and "- command:" in card and f"{summary['val']['accuracy']:.3f}" in card
    assert summary["val"]["episodes"] == 1 and summary["train_episodes"] == 1 and summary["steps"] == 6
    assert summary["val"]["frames"] == -(-LeRobotEpisodes(minidroid).length(1) // 3)
    assert (out / "val_curves.png").stat().st_size > 0 and any((out / "logs").iterdir())
    assert "is_success" in summary["labels_source"]


def test_training_learns_from_resimulated_labels(minidroid, tmp_path):
    """Labels come from re-simulation when asked (file made once, then reused); a few steps fit them."""
    labels = tmp_path / "labels.parquet"
    config = SuccessTrainConfig(str(minidroid), str(tmp_path / "out"), labels=str(labels), scale="tiny", steps=40,
                                batch_size=16, lr=1e-2, warmup_steps=5, val_episodes=(1,), eval_every=1000,
                                progress=False, shift=0, brightness=0.0, noise_std=0.0, blur=0.0)
    summary = train_success_detector(config)
    assert labels.is_file() and "re-simulation" in summary["labels_source"]
    assert np.mean(summary["loss_history"][-5:]) < np.mean(summary["loss_history"][:5])


# ------------------------------------------------------------------------------------------ env
def test_success_reward(model_dir, detector_dir):
    det = SuccessDetector.from_pretrained(detector_dir)
    for threshold, expected in ((1e-6, 1.0), (1 - 1e-6, 0.0)):
        env = PersistWorldEnv(model=str(model_dir), sampling_steps=2, reward="success",
                              success_detector=str(detector_dir), success_threshold=threshold)
        obs, info = env.reset(seed=0, options={"task": "pick"})
        obs, reward, terminated, truncated, info = env.step(np.tile(obs["pose"], (4, 1)))
        by_hand = det.predict_proba(np.stack([obs[c][-1] for c in CAMERAS]), info["instruction"])[0]
        assert info["success_probability"] == pytest.approx(float(by_hand), abs=1e-6)
        assert reward == expected and terminated == (expected == 1.0) and not truncated
        assert info["success"] == (expected == 1.0)
        env.close()


def test_batched_env_success_reward_terminates_and_resets_in_place(model_dir, detector_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = PersistWorldVectorEnv(num_envs=2, model=str(model_dir), sampling_steps=2, reward="success",
                                 success_detector=str(detector_dir), success_threshold=1e-6, autoreset="same_step")
    obs, _ = venv.reset(seed=0)
    obs, reward, terminated, truncated, info = venv.step(np.tile(obs["pose"][:, None], (1, 4, 1)))
    assert reward.tolist() == [1.0, 1.0] and terminated.all() and not truncated.any()
    assert info["final_info"]["success"].all() and info["_final_info"].all()
    venv.close()
    with pytest.raises(ValueError, match="single env"):
        PersistWorldVectorEnv(num_envs=2, model=str(model_dir), reward="goal")


def test_batched_env_scores_every_slot_in_one_detector_call(model_dir, detector_dir):
    """The vector env runs the detector once per step for all sub-envs; each verdict equals the detector on
    that sub-env's own frames."""
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = PersistWorldVectorEnv(num_envs=3, model=str(model_dir), sampling_steps=1, reward="success",
                                 success_detector=str(detector_dir))
    detector, calls = venv.reward_fn.detector, []
    predict = detector.predict_proba
    detector.predict_proba = lambda frames, instructions: calls.append(len(frames)) or predict(frames, instructions)
    obs, _ = venv.reset(seed=[0, 1, 2], options={"task": "pick"})
    obs, reward, _, _, info = venv.step(np.tile(obs["pose"][:, None], (1, 4, 1)))
    assert calls == [3]
    det = SuccessDetector.from_pretrained(detector_dir)
    for i in range(3):
        by_hand = float(det.predict_proba(np.stack([obs[c][i, -1] for c in CAMERAS]), info["instruction"][i])[0])
        assert info["success_probability"][i] == pytest.approx(by_hand, abs=1e-5)
        assert reward[i] == float(info["success_probability"][i] > venv.reward_fn.threshold)
    venv.close()


def test_batched_env_passes_the_slot_to_a_stateful_user_reward(model_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    class SlotReward:  # stateful: has reset(slots), so each call names its sub-env
        def reset(self, slots):
            pass

        def __call__(self, obs, info, slot=0):
            return float(slot)

    venv = PersistWorldVectorEnv(num_envs=3, model=str(model_dir), sampling_steps=1, reward=SlotReward())
    obs, _ = venv.reset(seed=0)
    assert venv.step(np.tile(obs["pose"][:, None], (1, 4, 1)))[1].tolist() == [0.0, 1.0, 2.0]
    venv.close()


def test_success_needs_consecutive_steps_per_episode_and_slot(model_dir, detector_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    env = PersistWorldEnv(model=str(model_dir), sampling_steps=1, reward="success", success_detector=str(detector_dir),
                          success_threshold=1e-6, success_steps=3)  # every frame passes; the third in a row counts
    for _ in range(2):  # a reset starts the run again
        obs, _ = env.reset(seed=0)
        hold = np.tile(obs["pose"], (4, 1))
        outcomes = [env.step(hold) for _ in range(3)]
        assert [o[1] for o in outcomes] == [0.0, 0.0, 1.0] and [o[2] for o in outcomes] == [False, False, True]
        assert all(o[4]["success_frame"] for o in outcomes) and [o[4]["success"] for o in outcomes] == [0, 0, 1]
    env.close()
    venv = PersistWorldVectorEnv(num_envs=2, model=str(model_dir), sampling_steps=1, reward="success",
                                 success_detector=str(detector_dir), success_threshold=1e-6, success_steps=2,
                                 autoreset="same_step")
    obs, _ = venv.reset(seed=[0, 1])
    hold = np.tile(obs["pose"][:, None], (1, 4, 1))
    assert venv.step(hold)[1].tolist() == [0.0, 0.0]
    assert venv.step(hold)[1].tolist() == [1.0, 1.0]  # both slots' second frame; both restart in place
    assert venv.step(hold)[1].tolist() == [0.0, 0.0]
    venv.close()
    det = SuccessDetector.from_pretrained(detector_dir)
    from persistworld_env.success import SuccessReward
    assert SuccessReward(det).consecutive_steps == det.config.consecutive_steps == 1
    with pytest.raises(ValueError, match="success_steps"):
        SuccessReward(det, consecutive_steps=0)
    with pytest.raises(ValueError, match="consecutive_steps"):
        detector_config("tiny", consecutive_steps=0)
    with pytest.raises(ValueError, match="only used with reward='success'"):
        PersistWorldEnv(model=str(model_dir), success_steps=2)


def test_success_detector_found_in_the_model_directory(model_dir, detector_dir, tmp_path):
    with_detector = tmp_path / "wm"
    shutil.copytree(model_dir, with_detector)
    shutil.copytree(detector_dir, with_detector / DETECTOR_SUBDIR)
    env = PersistWorldEnv(model=str(with_detector), sampling_steps=2, reward="success")
    assert env.reward_fn.threshold == 0.5
    obs, _ = env.reset(seed=1)
    _, reward, terminated, _, info = env.step(np.tile(obs["pose"], (4, 1)))
    assert reward == float(info["success_probability"] > 0.5) and terminated == (reward == 1.0)
    env.close()
    assert SuccessDetector.from_pretrained(with_detector).config.height == H  # the model dir resolves too


def test_success_reward_bad_input(model_dir, detector_dir, tmp_path):
    with pytest.raises(ModelLoadError, match="success detector"):
        PersistWorldEnv(model=str(model_dir), reward="success")
    with pytest.raises(ModelLoadError, match="success_detector="):
        PersistWorldEnv(model=WorldModel.from_pretrained(model_dir), reward="success")
    with pytest.raises(ModelLoadError, match="does not exist"):
        PersistWorldEnv(model=str(model_dir), reward="success", success_detector=str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="only used with reward='success'"):
        PersistWorldEnv(model=str(model_dir), success_detector=str(detector_dir))
    with pytest.raises(ValueError, match="success_threshold"):
        PersistWorldEnv(model=str(model_dir), reward="success", success_detector=str(detector_dir),
                        success_threshold=1.5)
    big = tmp_path / "big"
    SuccessDetector(detector_config("tiny")).save_pretrained(big)  # 48x80 frames
    with pytest.raises(ValueError, match="48x80"):
        PersistWorldEnv(model=str(model_dir), reward="success", success_detector=str(big))
    with pytest.raises(ValueError, match="reward must be"):
        PersistWorldEnv(model=str(model_dir), reward="win")


# ------------------------------------------------------------------------------------------ video
def test_render_and_record_video(model_dir, tmp_path):
    from gymnasium.wrappers import RecordVideo

    from persistworld_env.data.video import decode_video

    env = PersistWorldEnv(model=str(model_dir), sampling_steps=2, render_mode="rgb_array")
    assert env.metadata["render_fps"] == MODEL_FPS
    obs, _ = env.reset(seed=0)
    frame = env.render()
    assert frame.shape == (H, 3 * W, 3) and frame.dtype == np.uint8
    np.testing.assert_array_equal(frame[:, W:2 * W], obs[CAMERAS[1]][-1])
    env = RecordVideo(env, str(tmp_path / "videos"), episode_trigger=lambda e: True, disable_logger=True)
    obs, _ = env.reset(seed=0)
    for _ in range(2):
        obs, *_ = env.step(np.tile(obs["pose"], (4, 1)))
    env.close()
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 0
    assert decode_video(videos[0]).shape == (3, H, 3 * W, 3)  # the reset frame + one per step
