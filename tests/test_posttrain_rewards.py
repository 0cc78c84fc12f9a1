"""Multi-view rewards: per clip and camera metrics, group normalisation, weights, and the LPIPS-weights policy."""
from __future__ import annotations

import numpy as np
import pytest

from persistworld_env.constants import CAMERAS
from persistworld_env.metrics import psnr, ssim
from persistworld_env.perceptual import LPIPSWeightsMissing, build_lpips
from persistworld_env.rewards import (PSNR_CAP_DB, RewardScorer, RewardWeights, clip_metrics, combine_rewards,
                                      view_rewards)

K, C, F, V, H, W = 4, 2, 4, 3, 32, 40


def _truth(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (C, F, V, H, W, 3), dtype=np.uint8)


def _candidates(truth: np.ndarray, noise: list[float], seed: int = 1) -> np.ndarray:
    """Candidate k = truth + Gaussian noise of std noise[k] (uint8)."""
    rng = np.random.default_rng(seed)
    out = [np.clip(truth + rng.normal(0, s, truth.shape), 0, 255).astype(np.uint8) for s in noise]
    return np.stack(out)


def test_clip_metrics_are_frame_means_per_camera():
    truth = _truth()
    gen = _candidates(truth, [5, 10, 20, 40])
    got = clip_metrics(gen, np.repeat(truth[None], K, 0), metrics=("psnr", "ssim"))
    assert got["psnr"].shape == (K, C, V)
    for k, c, v in [(0, 0, 0), (3, 1, 2), (2, 0, 1)]:
        frames = [psnr(gen[k, c, f, v], truth[c, f, v]) for f in range(F)]
        assert got["psnr"][k, c, v] == pytest.approx(np.mean(frames))
        assert got["ssim"][k, c, v] == pytest.approx(np.mean([ssim(gen[k, c, f, v], truth[c, f, v]) for f in range(F)]))
    same = clip_metrics(truth, truth, metrics=("psnr",))["psnr"]
    assert np.all(same == PSNR_CAP_DB)  # identical frames: capped, not inf


def test_combined_reward_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    metrics = {"psnr": rng.normal(20, 3, (K, V)), "ssim": rng.uniform(0.3, 0.9, (K, V)),
               "lpips": rng.uniform(0.05, 0.4, (K, V))}
    weights = RewardWeights({"psnr": 1.0, "ssim": 2.0, "lpips": 0.5},
                            {"exterior_1_left": 1.0, "exterior_2_left": 1.0, "wrist_left": 3.0})
    expected = np.zeros(K)
    norm = 0.0
    for m, sign in (("psnr", 1), ("ssim", 1), ("lpips", -1)):
        for v, cam in enumerate(CAMERAS):
            col = metrics[m][:, v]
            z = sign * (col - col.mean()) / (np.sqrt(((col - col.mean()) ** 2).mean()) + 1e-4)
            w = weights.metrics[m] * weights.cameras[cam]
            expected += w * z
            norm += w
    np.testing.assert_allclose(combine_rewards(metrics, weights), expected / norm, rtol=1e-10)
    # Per view: the metric-weighted z of that camera alone; their camera-weighted mean is the reward.
    per_view = view_rewards(metrics, weights)
    for v in range(V):
        by_hand = sum(weights.metrics[m] * sign * (metrics[m][:, v] - metrics[m][:, v].mean())
                      / (metrics[m][:, v].std() + 1e-4) for m, sign in (("psnr", 1), ("ssim", 1), ("lpips", -1)))
        np.testing.assert_allclose(per_view[:, v], by_hand / 3.5, rtol=1e-10)
    np.testing.assert_allclose(per_view @ [1.0, 1.0, 3.0] / 5.0, expected / norm, rtol=1e-10)


def test_closer_candidates_earn_higher_rewards_with_all_three_metrics():
    truth = _truth()
    scorer = RewardScorer(RewardWeights(), build_lpips("random"))
    scores = scorer(_candidates(truth, [2, 8, 30, 80]), truth)
    assert scorer.metrics == ("psnr", "ssim", "lpips") and "lpips(alexnet-random)" in scorer.description
    assert np.all(np.diff(scores.rewards) < 0), scores.rewards
    assert scores.clip_metrics["lpips"].shape == (K, C, V)
    means = scores.camera_means()
    assert set(means) == {f"{m}/{c}" for m in ("psnr", "ssim", "lpips") for c in CAMERAS}
    spreads = scores.camera_spreads()  # population std over the candidates of each one's mean over clips
    assert set(spreads) == set(means)
    psnr_wrist = scores.clip_metrics["psnr"][:, :, 2].mean(axis=1)
    by_hand = np.sqrt(((psnr_wrist - psnr_wrist.sum() / K) ** 2).sum() / K)
    assert spreads["psnr/wrist_left"] == pytest.approx(by_hand, rel=1e-12) and by_hand > 1.0


def test_camera_weights_select_what_is_rewarded():
    truth = _truth()
    gen = _candidates(truth, [10, 10, 10, 10])
    gen[0, :, :, 2] = truth[:, :, 2]  # candidate 0: perfect wrist camera
    gen[1, :, :, 0] = truth[:, :, 0]  # candidate 1: perfect first exterior camera
    wrist = RewardScorer(RewardWeights.parse("psnr=1,ssim=0,lpips=0", "exterior_1_left=0,exterior_2_left=0"))
    ext = RewardScorer(RewardWeights.parse("psnr=1,ssim=0,lpips=0", "exterior_2_left=0,wrist_left=0"))
    assert np.argmax(wrist(gen, truth).rewards) == 0 and np.argmax(ext(gen, truth).rewards) == 1


def test_bad_weights_and_shapes_are_clear_errors():
    with pytest.raises(ValueError, match="unknown metrics"):
        RewardWeights({"psnr": 1, "fid": 1})
    with pytest.raises(ValueError, match="unknown cameras"):
        RewardWeights.parse(cameras="top_cam=1")
    with pytest.raises(ValueError, match="not all 0"):
        RewardWeights({"psnr": 0, "ssim": 0, "lpips": 0})
    with pytest.raises(ValueError, match=">= 0"):
        RewardWeights({"psnr": -1})
    with pytest.raises(ValueError, match="name=number"):
        RewardWeights.parse("psnr")
    with pytest.raises(ValueError, match="no reward metric left"):
        RewardScorer(RewardWeights({"psnr": 0, "ssim": 0, "lpips": 1}), lpips=None)
    with pytest.raises(ValueError, match=r"\(K, C, F, V, H, W, 3\)"):
        RewardScorer()(_truth(), _truth())


def test_lpips_policy_real_missing_random_labelled_off_drops_it(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PERSISTWORLD_ALEXNET_WEIGHTS", raising=False)
    with pytest.raises(LPIPSWeightsMissing, match="--lpips random"):
        build_lpips("real")
    off = RewardScorer(RewardWeights(), build_lpips("off"))
    assert off.metrics == ("psnr", "ssim") and "lpips" not in off.description
    assert "cameras exterior_1_left=1 exterior_2_left=1 wrist_left=1" in off.description
    assert "lpips" not in off(_candidates(_truth(), [1, 2, 3, 4]), _truth()).clip_metrics
    with pytest.raises(ValueError, match="at least 31x31"):
        build_lpips("random")(np.zeros((2, 24, 40, 3), np.uint8), np.zeros((2, 24, 40, 3), np.uint8))


def test_posttrain_command_stops_before_any_work_without_real_lpips_weights(monkeypatch, tmp_path):
    from training.cli import main

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    monkeypatch.delenv("PERSISTWORLD_ALEXNET_WEIGHTS", raising=False)
    with pytest.raises(SystemExit, match="--lpips random.*--lpips off"):
        main(["posttrain", "--data", str(tmp_path / "no_data"), "--out", str(tmp_path / "run"), "--model",
              str(tmp_path / "no_model")])
    assert not (tmp_path / "run").exists()


def test_moving_region_and_region_psnr_match_a_hand_computation():
    from persistworld_env.metrics import moving_region, region_psnr

    previous = np.full((12, 14, 3), 100, np.uint8)
    clip = np.repeat(previous[None], 3, axis=0)
    clip[1, 5, 6, 2] = 113  # one channel of one pixel moves by 13 > 12 in frame 1
    clip[2, 0, 0, 0] = 112  # exactly 12: not moving
    mask = moving_region(clip, previous, threshold=12, dilation=1)
    expected = np.zeros((12, 14), bool)
    expected[4:7, 5:8] = True  # the pixel grown by 1 in each direction
    np.testing.assert_array_equal(mask, expected)
    exact = moving_region(clip, previous, threshold=12, dilation=0)
    assert exact.sum() == 1 and exact[5, 6]
    pred = clip.copy()
    pred[0, 4, 5, :] += 10  # inside the region
    pred[2, 11, 13, :] += 50  # outside it: ignored
    mse = 3 * (10 / 255) ** 2 / (9 * 3 * 3)  # one pixel's 3 channels, over 9 pixels x 3 frames x 3 channels
    assert region_psnr(pred, clip, mask) == pytest.approx(10 * np.log10(1 / mse))
    assert np.isnan(region_psnr(pred, clip, np.zeros_like(mask)))  # still clip: undefined
    assert region_psnr(clip, clip, mask) == np.inf


def test_moving_psnr_reward_ranks_by_the_moving_region_and_ignores_still_cameras():
    rng = np.random.default_rng(0)
    previous = rng.integers(0, 200, (V, H, W, 3), dtype=np.uint8)
    truth = np.repeat(np.repeat(previous[None, None], F, 1), C, 0).copy()  # (C, F, V, H, W, 3), still
    truth[:, :, 0, 10:16, 10:16] = 255  # an "arm" appears in camera 0 only
    moving = np.zeros((H, W), bool)
    moving[8:18, 8:18] = True  # its region grown by 2
    cands = np.repeat(truth[None], K, 0).copy()
    for k, (arm_err, background_err) in enumerate([(5, 40), (10, 0), (20, 30), (40, 0)]):
        cands[k, :, :, :, moving] = np.clip(cands[k, :, :, :, moving].astype(int) - arm_err, 0, 255)
        cands[k, :, :, :, ~moving] = np.clip(cands[k, :, :, :, ~moving].astype(int) + background_err, 0, 255)
    scorer = RewardScorer(RewardWeights.parse("psnr=0,ssim=0,lpips=0,psnr_moving=1"))
    assert scorer.metrics == ("psnr_moving",)
    with pytest.raises(ValueError, match="frame before"):
        scorer(cands, truth)
    scores = scorer(cands, truth, previous)
    assert np.all(np.diff(scores.view_rewards[:, 0]) < 0)  # ordered by the arm's error, not the background's
    np.testing.assert_array_equal(scores.view_rewards[:, 1:], 0.0)  # cameras that do not move: no signal
    assert np.isnan(scores.clip_metrics["psnr_moving"][:, :, 1:]).all()
    assert set(scores.camera_means()) == {"psnr_moving/exterior_1_left"}
    full = RewardScorer(RewardWeights.parse("psnr=1,ssim=0,lpips=0"))(cands, truth, previous)
    assert np.argmax(full.view_rewards[:, 0]) != 0  # the full frame prefers a candidate with the arm further off
