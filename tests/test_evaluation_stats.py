"""Evaluation statistics against hand values and scipy: sign test, Bradley-Terry / Elo, Pearson, MMRV."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, pearsonr

from persistworld_env.evaluation.comparisons import (
    bradley_terry, elo_from_strengths, elo_ratings, episode_outcomes, paired_comparison, sign_test_p_value,
)
from persistworld_env.evaluation.policy_agreement import agreement, mmrv, pearson_r


# -- sign test --------------------------------------------------------------------------------------
def test_sign_test_hand_values_and_scipy():
    # 9 of 10: P = 2 * (C(10,9) + C(10,10)) / 2^10 = 22 / 1024
    assert sign_test_p_value(9, 1) == pytest.approx(22 / 1024)
    assert sign_test_p_value(5, 5) == pytest.approx(1.0)
    assert sign_test_p_value(0, 0) == 1.0
    for wins, losses in [(98, 2), (30, 20), (0, 7), (13, 40)]:
        ref = binomtest(wins, wins + losses, 0.5, alternative="two-sided").pvalue
        assert sign_test_p_value(wins, losses) == pytest.approx(ref, rel=1e-12)
    assert sign_test_p_value(98, 2) < 1e-6  # the paper's "p < 1e-6" at 98 of 100
    with pytest.raises(ValueError, match=">= 0"):
        sign_test_p_value(-1, 3)


def test_paired_comparison_counts_direction_and_ties():
    a = np.array([20.0, 21.0, 19.0, 25.0, 22.0])
    b = np.array([19.0, 21.0, 20.0, 24.0, 21.5])
    psnr = paired_comparison(a, b)  # higher is better
    assert (psnr.wins, psnr.losses, psnr.ties, psnr.n) == (3, 1, 1, 4)
    assert psnr.win_rate == pytest.approx(0.75)
    assert psnr.p_value == pytest.approx(binomtest(3, 4).pvalue)
    lpips = paired_comparison(a, b, higher_is_better=False)  # lower is better: roles swap
    assert (lpips.wins, lpips.losses, lpips.ties) == (1, 3, 1)
    none = paired_comparison([1.0, 2.0], [1.0, 2.0])
    assert none.n == 0 and none.win_rate == 0.5 and none.p_value == 1.0
    with pytest.raises(ValueError, match="one length"):
        paired_comparison([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="finite"):
        paired_comparison([np.inf], [1.0])


# -- Bradley-Terry / Elo ------------------------------------------------------------------------------
def test_bradley_terry_two_models_hand_value():
    # A beats B 3 times of 4: the MLE has p_A / p_B = 3, i.e. log-strength gap ln 3.
    theta = bradley_terry(np.array([[0, 3], [1, 0]]), prior=0.0)
    assert theta[0] - theta[1] == pytest.approx(math.log(3), abs=1e-8)
    assert theta.sum() == pytest.approx(0.0, abs=1e-12)
    elo = elo_from_strengths(theta)
    assert elo[0] - elo[1] == pytest.approx(400 * math.log10(3), abs=1e-6)
    assert elo.mean() == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="prior > 0"):
        bradley_terry(np.array([[0, 4], [0, 0]]), prior=0.0)  # B never wins: no finite MLE
    assert np.isfinite(bradley_terry(np.array([[0, 4], [0, 0]]), prior=0.5)).all()


def test_bradley_terry_recovers_a_known_ordering():
    rng = np.random.default_rng(0)
    true = np.array([1.5, -0.5, 0.7, -1.7, 0.0])
    m = len(true)
    wins = np.zeros((m, m))
    for i in range(m):
        for j in range(i + 1, m):
            p = 1 / (1 + np.exp(-(true[i] - true[j])))
            k = rng.binomial(400, p)
            wins[i, j], wins[j, i] = k, 400 - k
    theta = bradley_terry(wins)
    assert list(np.argsort(-theta)) == list(np.argsort(-true))
    np.testing.assert_allclose(theta, true - true.mean(), atol=0.15)


def test_episode_outcomes_and_elo_with_bootstrap_intervals():
    scores = np.array([[[3.0, 1.0]], [[2.0, 1.0]]])  # 2 models, 1 episode, 2 comparisons: one win, one tie
    out = episode_outcomes(scores)
    np.testing.assert_allclose(out[0], [[0.0, 1.5], [0.5, 0.0]])
    rng = np.random.default_rng(1)
    quality = {"good": 1.0, "mid": 0.0, "bad": -1.0}
    per_model = {k: q + rng.normal(0, 1.0, (60, 2)) for k, q in quality.items()}
    ratings = elo_ratings(per_model, bootstrap=200, seed=0)
    assert ratings["good"]["elo"] > ratings["mid"]["elo"] > ratings["bad"]["elo"]
    for r in ratings.values():
        assert r["ci_low"] <= r["elo"] <= r["ci_high"]
    assert ratings["good"]["ci_low"] > ratings["bad"]["ci_high"]
    assert elo_ratings(per_model, bootstrap=200, seed=0) == ratings  # reproducible
    assert elo_ratings({"only": per_model["good"]})["only"]["elo"] == 1000.0
    with pytest.raises(ValueError, match="one shape"):
        elo_ratings({"a": np.zeros((3, 2)), "b": np.zeros((4, 2))})


# -- policy agreement ---------------------------------------------------------------------------------
def test_mmrv_hand_values_and_argument_order():
    real = [0.9, 0.5, 0.1]
    perfect = [0.8, 0.4, 0.0]
    assert mmrv(perfect, real) == 0.0
    # The model swaps policies 0 and 1 (real gap 0.4; model gap 0.05):
    model = [0.3, 0.35, 0.0]
    assert mmrv(model, real) == pytest.approx((0.4 + 0.4 + 0.0) / 3)
    # Swapping the arguments weights the violation by the model's gap instead: a different number.
    assert mmrv(real, model) == pytest.approx((0.05 + 0.05 + 0.0) / 3)
    # A tie on one side and an order on the other is a violation (SIMPLER's strict comparison): only for
    # policy 0 (0.6 > 0.2 really, 0.5 > 0.5 false in the model); policy 1 (false on both sides) is fine.
    assert mmrv([0.5, 0.5], [0.6, 0.2]) == pytest.approx((0.4 + 0.0) / 2)
    with pytest.raises(ValueError, match="one rate per policy"):
        mmrv([0.1, 0.2], [0.1, 0.2, 0.3])


def test_pearson_hand_value_and_scipy():
    model, real = [0.1, 0.4, 0.5, 0.9], [0.0, 0.5, 0.4, 1.0]
    x, y = np.array(model), np.array(real)
    hand = ((x - x.mean()) * (y - y.mean())).sum() / np.sqrt(((x - x.mean()) ** 2).sum() * ((y - y.mean()) ** 2).sum())
    assert pearson_r(model, real) == pytest.approx(hand)
    assert pearson_r(model, real) == pytest.approx(pearsonr(x, y).statistic)
    assert pearson_r(model, real) == pytest.approx(pearson_r(real, model))  # symmetric, unlike MMRV
    assert math.isnan(pearson_r([0.5, 0.5, 0.5], real[:3]))


def test_agreement_bootstrap_over_seeds():
    rng = np.random.default_rng(0)
    rates = np.array([0.9, 0.7, 0.5, 0.3, 0.1, 0.0])
    real = rng.random((6, 40)) < rates[:, None]
    good_model = real.copy()
    good_model[:, :3] = ~good_model[:, :3]  # a few disagreements
    out = agreement(good_model, real, bootstrap=300, seed=0)
    assert out["pearson"]["value"] == pytest.approx(pearson_r(good_model.mean(1), real.mean(1)))
    assert out["mmrv"]["value"] == pytest.approx(mmrv(good_model.mean(1), real.mean(1)))
    assert out["pearson"]["ci_low"] <= out["pearson"]["value"] <= out["pearson"]["ci_high"]
    assert out["pearson"]["value"] > 0.8 and out["mmrv"]["ci_low"] >= 0.0
    flat = agreement(np.zeros((6, 40)), real, bootstrap=50)  # a model that never succeeds: r undefined
    assert flat["pearson"]["value"] is None and flat["pearson"]["valid_draws"] == 0
    assert flat["mmrv"]["value"] == pytest.approx(mmrv(np.zeros(6), real.mean(1)))
    with pytest.raises(ValueError, match="one shape"):
        agreement(np.zeros((6, 40)), np.zeros((6, 39)))
