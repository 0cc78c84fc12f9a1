"""DiffusionNFT on an EDM x0 predictor: formulas against hand computations, and a toy run that raises the reward."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from persistworld_env.diffusion.edm import EDMConfig, denoise, loss_weight, sample_training_sigma
from persistworld_env.diffusion.nft import (
    group_advantages, implicit_predictions, nft_loss, old_decay, optimality_probability,
)
from persistworld_env.diffusion.sampling import karras_sigmas, sample_euler
from persistworld_env.models.lora import PolicyWeights


def test_r_from_group_normalised_advantages_by_hand():
    rewards = np.array([[1.0, 2.0, 3.0, 6.0], [10.0, 10.0, 10.0, 11.0]])
    expected = []
    for row in rewards:
        mean = sum(row) / len(row)
        std = (sum((x - mean) ** 2 for x in row) / len(row)) ** 0.5  # population std
        expected.append([0.5 + max(-5, min(5, (x - mean) / (std + 1e-4))) / 10 for x in row])
    np.testing.assert_allclose(optimality_probability(torch.tensor(rewards)).numpy(), expected, rtol=1e-6)
    # Each group is normalised on its own: an affine change of one group's rewards changes nothing (up to
    # the 1e-4 in the denominator), and the other group is untouched.
    scaled = rewards.copy()
    scaled[1] = 100 * scaled[1] - 7
    r = optimality_probability(torch.tensor(scaled)).numpy()
    np.testing.assert_allclose(r[1], expected[1], atol=1e-4)
    np.testing.assert_allclose(r[0], expected[0], rtol=1e-6)


def test_advantages_are_clipped_at_a_max():
    rewards = torch.zeros(50, dtype=torch.float64)
    rewards[0] = 1.0  # A = 0.98 / 0.14 = 7 > 5
    advantages = group_advantages(rewards)
    std = (0.02 * 0.98) ** 0.5  # population std of one 1 among 50
    assert advantages[0] == pytest.approx(0.98 / (std + 1e-4)) and advantages[1] == pytest.approx(-0.02 / (std + 1e-4))
    r = optimality_probability(rewards, adv_clip=5.0)
    assert r[0] == pytest.approx(1.0) and r[1] == pytest.approx(0.5 + advantages[1].item() / 10)
    assert optimality_probability(rewards, adv_clip=10.0)[0] == pytest.approx(0.5 + advantages[0].item() / 20)
    assert torch.all(optimality_probability(torch.ones(4)) == 0.5)  # equal rewards: no preference
    with pytest.raises(ValueError, match="NaN"):
        optimality_probability(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="adv_clip"):
        optimality_probability(rewards, adv_clip=0)


def _hand_loss(x_theta, x_old, x0, r, beta, x_ref=None, ref_weight=0.0):
    """Plain-Python DiffusionNFT loss per sample (lists of lists)."""
    out = []
    for b in range(len(x0)):
        pos = [(1 - beta) * o + beta * t for o, t in zip(x_old[b], x_theta[b])]
        neg = [(1 + beta) * o - beta * t for o, t in zip(x_old[b], x_theta[b])]
        n = len(x0[b])
        w_pos = max(sum(abs(p - y) for p, y in zip(pos, x0[b])) / n, 1e-5)
        w_neg = max(sum(abs(p - y) for p, y in zip(neg, x0[b])) / n, 1e-5)
        l_pos = sum((p - y) ** 2 for p, y in zip(pos, x0[b])) / n / w_pos
        l_neg = sum((p - y) ** 2 for p, y in zip(neg, x0[b])) / n / w_neg
        total = (r[b] * l_pos + (1 - r[b]) * l_neg) / beta
        if x_ref is not None:
            total += ref_weight * sum((t - q) ** 2 for t, q in zip(x_theta[b], x_ref[b])) / n
        out.append(total)
    return out


def test_loss_matches_a_hand_computation():
    x_theta = [[0.5, -1.0, 2.0], [0.0, 0.3, 0.1]]
    x_old = [[0.2, -0.5, 1.0], [0.4, 0.1, -0.2]]
    x0 = [[1.0, 0.0, 1.5], [0.1, 0.2, 0.0]]
    x_ref = [[0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]
    r, t = [0.9, 0.2], lambda v: torch.tensor(v, dtype=torch.float64)
    for beta in (1.0, 0.1):
        got = nft_loss(t(x_theta), t(x_old), t(x0), t(r), beta=beta, x_ref=t(x_ref), ref_weight=0.5)
        np.testing.assert_allclose(got.total.numpy(), _hand_loss(x_theta, x_old, x0, r, beta, x_ref, 0.5), rtol=1e-12)
    pos, neg = implicit_predictions(t(x_theta), t(x_old), 0.5)
    np.testing.assert_allclose(pos.numpy(), 0.5 * t(x_old).numpy() + 0.5 * t(x_theta).numpy())
    np.testing.assert_allclose(neg.numpy(), 1.5 * t(x_old).numpy() - 0.5 * t(x_theta).numpy())


def test_per_view_loss_matches_a_hand_computation():
    # Two samples, each a (1, 4, 2) clip holding two views of 2 rows stacked along the height.
    rng = np.random.default_rng(3)
    x_theta, x_old, x0 = (rng.normal(size=(2, 1, 4, 2)) for _ in range(3))
    r, weights, beta = [[0.9, 0.1], [0.3, 0.6]], [1.0, 3.0], 0.5

    def rows(x, b, v):  # view v of sample b as a flat list
        return [float(e) for row in x[b, 0, 2 * v:2 * v + 2] for e in row]

    expected = []
    for b in range(2):
        per_view = [_hand_loss([rows(x_theta, b, v)], [rows(x_old, b, v)], [rows(x0, b, v)], [r[b][v]], beta)[0]
                    for v in range(2)]
        expected.append(sum(w * loss for w, loss in zip(weights, per_view)) / sum(weights))
    t = lambda v: torch.tensor(np.asarray(v), dtype=torch.float64)  # noqa: E731
    got = nft_loss(t(x_theta), t(x_old), t(x0), t(r), beta=beta, view_weights=t(weights))
    np.testing.assert_allclose(got.total.numpy(), expected, rtol=1e-12)
    # One view is the per-sample loss; equal per-view r with uniform weights is not (the adaptive weights differ).
    scalar = nft_loss(t(x_theta), t(x_old), t(x0), t([0.9, 0.3]), beta=beta)
    torch.testing.assert_close(nft_loss(t(x_theta), t(x_old), t(x0), t([[0.9], [0.3]]), beta=beta).total, scalar.total)
    with pytest.raises(ValueError, match="second-last axis"):
        nft_loss(t(x_theta), t(x_old), t(x0), torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="view_weights"):
        nft_loss(t(x_theta), t(x_old), t(x0), t(r), view_weights=t([1.0, -1.0]))


def test_gradient_treats_the_adaptive_weights_as_constants():
    torch.manual_seed(0)
    x_theta = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    x_old, x0 = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    r, beta = torch.tensor([1.0, 0.3, 0.0], dtype=torch.float64), 0.7
    nft_loss(x_theta, x_old, x0, r, beta=beta).total.sum().backward()
    pos, neg = implicit_predictions(x_theta.detach(), x_old, beta)
    w_pos = (pos - x0).abs().mean(1, keepdim=True)
    w_neg = (neg - x0).abs().mean(1, keepdim=True)
    # d/dx_theta of [r |x+ - x0|^2 / (n w+) + (1 - r) |x- - x0|^2 / (n w-)] / beta, w held fixed
    expected = 2 / 4 * (r[:, None] * (pos - x0) / w_pos - (1 - r[:, None]) * (neg - x0) / w_neg)
    torch.testing.assert_close(x_theta.grad, expected)


def test_bad_inputs_are_clear_errors():
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="beta"):
        nft_loss(x, x, x, torch.ones(2), beta=0)
    with pytest.raises(ValueError, match="one shape"):
        nft_loss(x, torch.zeros(2, 4), x, torch.ones(2))
    with pytest.raises(ValueError, match="r must have shape"):
        nft_loss(x, x, x, torch.ones(3))


def test_old_decay_rises_linearly_then_holds():
    assert [old_decay(s, 0.1, 0.5) for s in (0, 1, 3, 5, 50)] == pytest.approx([0, 0.1, 0.3, 0.5, 0.5])
    assert old_decay(5, 0.1, 0.5, flat=10) == 0.0 and old_decay(12, 0.1, 0.5, flat=10) == pytest.approx(0.2)
    with pytest.raises(ValueError):
        old_decay(1, 0.1, 1.0)


def test_with_every_r_one_the_update_moves_the_prediction_toward_the_sample():
    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.posttrain.update import nft_batch_loss
    from persistworld_env.sim.env import default_pose_normalizer

    torch.manual_seed(0)
    denoiser = WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40).denoiser
    policy = PolicyWeights(denoiser, lora_root=denoiser.unet, fully_trained=[denoiser.action_encoder], lora_rank=4)
    b = 2
    batch = {"history": torch.randn(b, 6, 4, 9, 5), "current": torch.randn(b, 4, 9, 5),
             "poses": torch.rand(b, 11, 7) * 2 - 1, "x0": torch.randn(b, 5, 4, 9, 5)}
    optimizer = torch.optim.SGD(policy.trainable_parameters(), lr=0.05)

    def error() -> torch.Tensor:  # trained prediction vs the sample, on a fixed noisy input
        g = torch.Generator().manual_seed(7)
        sigma = torch.full((b,), 1.0)
        noisy = batch["x0"] + sigma[:, None, None, None, None] * torch.randn(batch["x0"].shape, generator=g)
        with torch.no_grad():
            x = denoiser(noisy, sigma, batch["history"], batch["current"], poses=batch["poses"])
        return (x - batch["x0"]).pow(2).flatten(1).mean(1)

    before = error()
    for step in range(3):
        loss = nft_batch_loss(denoiser, policy, r=torch.ones(b), generator=torch.Generator().manual_seed(step),
                              **batch).total.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.all(error() < before), (before, error())


def test_shared_training_noise_gives_one_draw_per_key():
    from persistworld_env.posttrain.update import shared_training_noise

    keys = [0, 1, 0, 1, 0, 1]  # K = 3 candidates x C = 2 clips, candidate-major
    sigma, noise = shared_training_noise(keys, (2, 3), generator=torch.Generator().manual_seed(0))
    assert sigma.shape == (6,) and noise.shape == (6, 2, 3)
    for k in (0, 1):
        rows = [i for i, key in enumerate(keys) if key == k]
        assert all(torch.equal(sigma[i], sigma[rows[0]]) and torch.equal(noise[i], noise[rows[0]]) for i in rows)
    assert not torch.equal(noise[0], noise[1]) and sigma[0] != sigma[1]
    again = shared_training_noise(keys, (2, 3), generator=torch.Generator().manual_seed(0))
    assert torch.equal(again[0], sigma) and torch.equal(again[1], noise)
    with pytest.raises(ValueError, match="non-empty"):
        shared_training_noise([], (2,))
    keys = np.repeat(np.arange(400), 2)  # 400 clip positions, 2 candidates each
    sigma, _ = shared_training_noise(keys, (1,), EDMConfig(top_fraction=0.5, top_sigma=80.0),
                                     generator=torch.Generator().manual_seed(0))
    top = sigma == 80.0
    assert torch.equal(top[0::2], top[1::2]) and 0.4 < float(top.float().mean()) < 0.6  # shared, about half


def test_shared_noise_cancels_the_noise_driven_gradient_within_a_group():
    """Two identical candidates with r = 0.7 and 0.3: at theta = old the update is (2r - 1)-weighted, so with
    shared noise the two terms cancel exactly, with independent noise they do not."""
    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.posttrain.update import nft_batch_loss, shared_training_noise
    from persistworld_env.sim.env import default_pose_normalizer

    torch.manual_seed(0)
    denoiser = WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40).denoiser
    policy = PolicyWeights(denoiser, lora_root=denoiser.unet, fully_trained=[denoiser.action_encoder], lora_rank=4)
    one = {"history": torch.randn(1, 6, 4, 9, 5), "current": torch.randn(1, 4, 9, 5),
           "poses": torch.rand(1, 11, 7) * 2 - 1, "x0": torch.randn(1, 5, 4, 9, 5)}
    batch = {k: v.repeat(2, *([1] * (v.ndim - 1))) for k, v in one.items()}
    r = torch.tensor([0.7, 0.3])

    def grad_norm(**draws) -> float:
        policy_params = policy.trainable_parameters()
        for p in policy_params:
            p.grad = None
        nft_batch_loss(denoiser, policy, r=r, generator=torch.Generator().manual_seed(1), **batch,
                       **draws).total.sum().backward()
        return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in policy_params if p.grad is not None)))

    sigma, noise = shared_training_noise([0, 0], batch["x0"].shape[1:], generator=torch.Generator().manual_seed(1))
    assert grad_norm(sigma=sigma, noise=noise) < 1e-6
    assert grad_norm() > 1e-3
    with pytest.raises(ValueError, match="both sigma and noise"):
        nft_batch_loss(denoiser, policy, r=r, sigma=sigma, **batch)


class _Toy2D(nn.Module):
    """EDM-preconditioned x0 predictor of 2-D points."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 2))

    def forward(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return denoise(lambda x_in, c_noise: self.net(torch.cat([x_in, c_noise[:, None]], 1)), x, sigma)


def test_toy_2d_diffusion_objective_raises_the_expected_reward():
    """Pretrain on two modes (x = -1 and x = +1), reward = -|x - (1, 0)|^2, then DiffusionNFT with an EMA old model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    edm = EDMConfig(p_mean=-0.5, p_std=1.2)
    model = _Toy2D()
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(300):
        side = torch.randint(0, 2, (256,), generator=g) * 2.0 - 1
        x0 = torch.stack([side, torch.zeros(256)], 1) + 0.2 * torch.randn(256, 2, generator=g)
        sigma = sample_training_sigma(256, edm, g)
        noisy = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        loss = (loss_weight(sigma)[:, None] * (model(noisy, sigma) - x0) ** 2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sigmas = karras_sigmas(8, 0.002, 10.0)

    def sample(n: int, seed: int) -> torch.Tensor:
        return sample_euler(model, torch.randn(n, 2, generator=torch.Generator().manual_seed(seed)), sigmas)

    def reward(x: torch.Tensor) -> torch.Tensor:
        return -((x - torch.tensor([1.0, 0.0])) ** 2).sum(1)

    before = reward(sample(2000, 1)).mean().item()
    policy = PolicyWeights(model, full_finetune=True, keep_reference=False)
    optimizer = torch.optim.Adam(policy.trainable_parameters(), 1e-3)
    groups, k = 16, 16
    for it in range(30):
        with policy.old():
            x0 = sample(groups * k, 100 + it)  # candidates from the old model, no gradients
        r = optimality_probability(reward(x0).reshape(groups, k)).reshape(-1)
        sigma = sample_training_sigma(groups * k, edm, g)
        noisy = x0 + sigma[:, None] * torch.randn(x0.shape, generator=g)
        with torch.no_grad(), policy.old() as old:
            x_old = old(noisy, sigma)
        loss = nft_loss(model(noisy, sigma), x_old, x0, r, beta=1.0).total.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        policy.update_old(old_decay(it + 1, rate=0.01, maximum=0.5))
    after = reward(sample(2000, 1)).mean().item()
    assert before < -1.5 and after > before + 1.0, (before, after)
