"""``persistworld posttrain`` on a tiny model: the group procedure, a full run, exact resume, the NaN guard."""
from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from data_helpers import INSTRUCTIONS
from persistworld_env.constants import CAMERAS
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.models.world_model import WorldModel
from persistworld_env.posttrain.groups import GroupSpec, collect_group, draw_group, generate_candidates, rollout_prefix
from persistworld_env.posttrain.truth import DatasetTruth
from persistworld_env.rewards import RewardScorer, RewardWeights
from persistworld_env.rollout import RolloutEngine
from posttrain_helpers import H, W, write_tiny_setup
from training.posttrain import PosttrainConfig, posttrain


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_setup(tmp_path_factory.mktemp("posttrain"))


def _config(tiny, out, **kw) -> PosttrainConfig:
    data, model = tiny
    base = PosttrainConfig(data_dir=str(data), out_dir=str(out), model=str(model), groups=4, candidates=3,
                           max_prefix=1, max_clips=2, sampling_steps=2, lpips="off", checkpoint_every=2, eval_every=4,
                           eval_steps=2, val_episodes=(3,), num_threads=1)
    return dataclasses.replace(base, **kw)


def test_draw_group_stays_inside_episodes_and_covers_the_ranges():
    rng = np.random.default_rng(0)
    available = {0: 3, 1: 9, 2: 1}
    specs = [draw_group(rng, available, max_prefix=6, max_clips=2) for _ in range(400)]
    assert all(0 <= s.start and s.start + s.prefix_steps + s.clips <= available[s.episode] for s in specs)
    assert {s.prefix_steps for s in specs if s.episode == 1} == set(range(7))
    assert {s.clips for s in specs} == {1, 2} and {s.episode for s in specs} == {0, 1, 2}
    assert all(s.prefix_steps == 0 and s.clips == 1 for s in specs if s.episode == 2)
    with pytest.raises(ValueError, match="max_clips"):
        draw_group(rng, available, 1, 0)
    with pytest.raises(ValueError, match="no episode"):
        draw_group(rng, {0: 0}, 1, 1)


def test_collect_group_branches_k_candidates_from_one_prefix(tiny):
    data, model_dir = tiny
    model = WorldModel.from_pretrained(model_dir)
    truth = DatasetTruth(LeRobotEpisodes(data), [1])
    spec = GroupSpec(episode=1, start=1, prefix_steps=1, clips=2)
    episode = truth.episode(1, spec.start + spec.steps).window(spec.start, spec.steps)
    engine = RolloutEngine(model).with_sampler(steps=2)
    scorer = RewardScorer(RewardWeights.parse("psnr=1,ssim=1,lpips=0,psnr_moving=1"))
    samples = collect_group(engine, episode, spec, seeds=[0, 1, 2, 3], scorer=scorer)
    k, c = 3, 2
    # The moving region is found against the true frame before the continuation (the prefix's last).
    expected = scorer(samples.frames, episode.frames[1:3], episode.frames[0, -1])
    np.testing.assert_array_equal(samples.scores.view_rewards, expected.view_rewards)
    assert len(samples) == k * c and samples.frames.shape == (k, c, 4, 3, H, W, 3)
    np.testing.assert_array_equal(samples.candidate, [0, 0, 1, 1, 2, 2])
    assert samples.x0.shape == (k * c, 5, *samples.current.shape[1:]) and samples.poses.shape == (k * c, 11, 7)
    assert samples.instructions == [INSTRUCTIONS[1]] * (k * c)
    first_clips = samples.history[0::c]  # every candidate's first clip: the same frozen prefix state
    assert torch.equal(first_clips[0], first_clips[1]) and torch.equal(first_clips[0], first_clips[2])
    assert not torch.equal(samples.x0[0], samples.x0[2])  # different noise, different candidates
    assert not torch.equal(samples.history[0], samples.history[1])  # clip 2 remembers clip 1
    assert samples.scores.clip_metrics["psnr"].shape == (k, c, 3) and samples.rewards.shape == (k,)
    assert set(samples.timings) == {"prefix", "candidates", "rewards"}
    batch = samples.batch(slice(1, 3))
    assert torch.equal(batch["x0"], samples.x0[1:3]) and len(batch["instructions"]) == 2
    # The candidates' sampler can differ from the prefix's (the engine's): with no prefix, the samples are
    # those of an engine sampling the candidates' way.
    no_prefix = GroupSpec(episode=1, start=1, prefix_steps=0, clips=1)
    window = truth.episode(1, 2).window(1, 1)
    mixed = collect_group(RolloutEngine(model).with_sampler(steps=1), window, no_prefix, [0, 1, 2], RewardScorer(),
                          candidate_sampler=engine.sampler)
    plain = collect_group(RolloutEngine(model).with_sampler(steps=2), window, no_prefix, [0, 1, 2], RewardScorer())
    one_step = collect_group(RolloutEngine(model).with_sampler(steps=1), window, no_prefix, [0, 1, 2], RewardScorer())
    assert torch.equal(mixed.x0, plain.x0) and not torch.equal(mixed.x0, one_step.x0)


def test_candidates_one_by_one_or_undecoded_are_the_same_samples(tiny):
    data, model_dir = tiny
    model = WorldModel.from_pretrained(model_dir)
    episode = DatasetTruth(LeRobotEpisodes(data), [1]).episode(1, 3)
    engine = RolloutEngine(model).with_sampler(steps=2)
    rollout_prefix(engine, episode, 1, seed=0)
    poses, seeds = episode.poses[1:3], [5, 6, 7]
    frames, inputs = generate_candidates(engine, poses, seeds)
    serial_frames, serial_inputs = generate_candidates(engine, poses, seeds, batch_size=1)
    latent_only, latent_inputs = generate_candidates(engine, poses, seeds, decode=False)
    assert frames.shape == (3, 2, 4, 3, H, W, 3) and latent_only is None
    # float rounding may differ between batch sizes; the decoded frames agree to a grey level
    assert np.abs(frames.astype(int) - serial_frames.astype(int)).max() <= 1
    for a, b, c in zip(inputs, serial_inputs, latent_inputs):
        torch.testing.assert_close(b.clip, a.clip, rtol=1e-4, atol=1e-4)
        assert torch.equal(c.clip, a.clip)


def test_run_writes_a_loadable_model_and_resume_equals_an_uninterrupted_run(tiny, tmp_path):
    import gymnasium as gym
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import persistworld_env  # noqa: F401

    # The exported model is the running average of the trained weights (kept in the checkpoints too).
    full = posttrain(_config(tiny, tmp_path / "full", lpips="random", groups=3, average_decay=0.5))
    assert full["step"] == 3 and full["bad_steps"] == 0 and full["lpips_backbone"] == "alexnet-random"
    posttrain(_config(tiny, tmp_path / "split", lpips="random", groups=2, average_decay=0.5))  # "interrupted"
    with pytest.raises(FileExistsError, match="--resume"):
        posttrain(_config(tiny, tmp_path / "split", lpips="random", groups=3, average_decay=0.5))
    posttrain(_config(tiny, tmp_path / "split", lpips="random", groups=3, average_decay=0.5, resume=True))
    for name in ("model.safetensors", "custom_checkpoint_0.pkl", "optimizer.bin"):  # adapters, old/average, Adam
        a, b = (tmp_path / run / "checkpoints" / "checkpoint-00000003" / name for run in ("full", "split"))
        if name.endswith(".safetensors"):
            sa, sb = load_file(a), load_file(b)
            assert any(".lora_B.old." in k for k in sa) and all(torch.equal(sa[k], sb[k]) for k in sa)
        else:
            ta, tb = torch.load(a, weights_only=False), torch.load(b, weights_only=False)
            assert repr(ta) == repr(tb), name
            assert name != "custom_checkpoint_0.pkl" or ta["average"] is not None
    base = WorldModel.from_pretrained(tiny[1]).denoiser.state_dict()
    merged = [WorldModel.from_pretrained(tmp_path / run / "model").denoiser.state_dict() for run in ("full", "split")]
    assert all(torch.equal(merged[0][k], merged[1][k]) for k in base)
    assert any(not torch.equal(merged[0][k], base[k]) for k in base)  # the update changed the model
    card = (tmp_path / "full" / "model" / "README.md").read_text()
    assert "RL post-trained" in card and "running average of the trained weights (EMA decay 0.5)" in card
    env = gym.make("PersistWorld-DROID-v0", model=str(tmp_path / "full" / "model"), sampling_steps=2)
    env.reset(seed=0)
    env.close()
    assert list((tmp_path / "full" / "samples").glob("replay-*.mp4"))
    events = EventAccumulator(str(tmp_path / "full" / "logs"))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"reward/psnr/wrist_left", "reward/lpips/exterior_1_left", "train/loss", "train/positive",
            "train/negative", "train/reference_l2", "train/grad_norm", "time/step_seconds", "time/prefix_seconds",
            "time/candidates_seconds", "time/rewards_seconds", "time/update_seconds", "val/psnr/wrist_left"} <= scalars
    assert "train/r" in events.Tags()["histograms"]
    summary = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert summary["reward"] == ("psnr=1 ssim=1 lpips(alexnet-random)=1; "
                                 "cameras exterior_1_left=1 exterior_2_left=1 wrist_left=1")


def test_non_finite_loss_is_skipped_and_counted(tiny, tmp_path, monkeypatch):
    import persistworld_env.posttrain.update as update

    real, calls = update.nft_batch_loss, []

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            terms.total = terms.total * float("nan")
        return terms

    monkeypatch.setattr(update, "nft_batch_loss", poisoned)
    summary = posttrain(_config(tiny, tmp_path / "nan", groups=2, max_clips=1, eval_every=100))
    assert summary["bad_steps"] == 1 and summary["step"] == 2
    weights = WorldModel.from_pretrained(tmp_path / "nan" / "model").denoiser.state_dict().values()
    assert all(torch.isfinite(v).all() for v in weights)


def test_bad_settings_are_clear_errors(tiny, tmp_path):
    with pytest.raises(ValueError, match="truth"):
        _config(tiny, tmp_path, truth="replay")
    with pytest.raises(ValueError, match="candidates must be >= 2"):
        _config(tiny, tmp_path, candidates=1)
    with pytest.raises(ValueError, match="--truth sim"):
        _config(tiny, tmp_path, action_noise=0.1)
    with pytest.raises(ValueError, match="top_sigma_fraction"):
        _config(tiny, tmp_path, top_sigma_fraction=-0.1)


def test_per_view_rewards_give_each_camera_its_own_optimality(tiny, tmp_path):
    from types import SimpleNamespace

    from persistworld_env.diffusion.nft import optimality_probability
    from training.posttrain import optimality_per_sample

    view_rewards = np.array([[1.0, -1.0, 0.0], [-1.0, 1.0, 0.0]])  # K=2 candidates, one reward per camera
    samples = SimpleNamespace(candidate=np.array([0, 0, 1]), rewards=view_rewards.mean(axis=1),
                              scores=SimpleNamespace(view_rewards=view_rewards))
    config = _config(tiny, tmp_path, per_view_rewards=True, camera_weights="exterior_1_left=1,exterior_2_left=1,"
                                                                          "wrist_left=2")
    r, view_weights = optimality_per_sample(samples, config, CAMERAS)
    by_view = [optimality_probability(torch.tensor(view_rewards[:, v])[None], config.adv_clip)[0] for v in range(3)]
    expected = torch.stack(by_view, dim=1)[[0, 0, 1]]
    torch.testing.assert_close(r, expected.to(r.dtype))
    assert r[0, 0] > 0.5 > r[0, 1] and r[2, 0] < 0.5 < r[2, 1]  # candidate 0 wins camera 0, loses camera 1
    assert view_weights.tolist() == [1.0, 1.0, 2.0]
    r_scalar, none = optimality_per_sample(samples, dataclasses.replace(config, per_view_rewards=False), CAMERAS)
    assert r_scalar.shape == (3,) and none is None
    summary = posttrain(_config(tiny, tmp_path / "per_view", groups=2, max_clips=2, eval_every=100,
                                per_view_rewards=True, top_sigma_fraction=0.5,
                                metric_weights="psnr=0,ssim=1,psnr_moving=2"))
    assert summary["step"] == 2 and summary["bad_steps"] == 0
    assert summary["reward"].startswith("ssim=1 psnr_moving=2;")
    assert not any(k.startswith("psnr/") for k in summary["recent_rewards"])


def test_permute_rewards_control_shuffles_whole_candidates():
    from persistworld_env.rewards import GroupScores
    from training.posttrain import add_arguments, config_from_args, permute_candidates

    view = np.arange(12.0).reshape(4, 3)
    scores = GroupScores(clip_metrics={}, rewards=view.mean(axis=1), view_rewards=view.copy())
    permute_candidates(scores, np.random.default_rng(0))
    assert sorted(scores.rewards.tolist()) == view.mean(axis=1).tolist()
    assert scores.rewards.tolist() != view.mean(axis=1).tolist()  # this seed moves them
    np.testing.assert_array_equal(scores.view_rewards.mean(axis=1), scores.rewards)  # rows move together
    args = add_arguments(argparse.ArgumentParser()).parse_args(["--data", "d", "--out", "o", "--permute-rewards"])
    assert config_from_args(args).permute_rewards
