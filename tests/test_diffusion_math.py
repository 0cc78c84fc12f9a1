"""EDM preconditioning and the sampler against hand computations and an analytic denoiser."""
from __future__ import annotations

import math

import pytest
import torch

from persistworld_env.diffusion import (
    EDMConfig, classifier_free_guidance, denoise, frame_guidance_scales, karras_sigmas, loss_weight,
    precondition, sample_euler, sample_training_sigma,
)


def test_precondition_hand_values():
    c_skip, c_out, c_in, c_noise = precondition(torch.tensor([1.0, 2.0]))
    # sigma = 1: 1/2, -1/sqrt(2), 1/sqrt(2), 0;  sigma = 2: 1/5, -2/sqrt(5), 1/sqrt(5), ln(2)/4
    torch.testing.assert_close(c_skip, torch.tensor([0.5, 0.2]))
    torch.testing.assert_close(c_out, torch.tensor([-1 / math.sqrt(2), -2 / math.sqrt(5)]))
    torch.testing.assert_close(c_in, torch.tensor([1 / math.sqrt(2), 1 / math.sqrt(5)]))
    torch.testing.assert_close(c_noise, torch.tensor([0.0, math.log(2) / 4]))
    torch.testing.assert_close(loss_weight(torch.tensor([1.0, 2.0])), torch.tensor([2.0, 1.25]))


def test_denoise_combines_skip_and_network():
    x = torch.tensor([[3.0, -1.0]])
    seen = {}

    def net(x_in, c_noise):
        seen["x_in"], seen["c_noise"] = x_in, c_noise
        return torch.full_like(x_in, 0.5)

    out = denoise(net, x, torch.tensor([2.0]))
    torch.testing.assert_close(seen["x_in"], x / math.sqrt(5))
    torch.testing.assert_close(out, 0.2 * x - 2 / math.sqrt(5) * 0.5)


def test_training_sigma_is_lognormal():
    g = torch.Generator().manual_seed(0)
    log_sigma = sample_training_sigma(200_000, EDMConfig(), generator=g).log()
    assert abs(log_sigma.mean().item() - 0.7) < 0.02
    assert abs(log_sigma.std().item() - 1.6) < 0.02


def test_karras_schedule_endpoints():
    s = karras_sigmas(5, 0.002, 700.0)
    assert s.shape == (6,) and s[-1] == 0
    torch.testing.assert_close(s[0], torch.tensor(700.0))
    torch.testing.assert_close(s[-2], torch.tensor(0.002))
    assert torch.all(s[:-1][1:] < s[:-1][:-1])
    with pytest.raises(ValueError):
        karras_sigmas(0)


def test_guidance_ramp_and_scale_one_is_conditional():
    scales = frame_guidance_scales(5, 2.0)
    torch.testing.assert_close(scales, torch.tensor([1.0, 1.25, 1.5, 1.75, 2.0]))
    cond, uncond = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    torch.testing.assert_close(classifier_free_guidance(cond, uncond, torch.ones(5)), cond)
    out = classifier_free_guidance(cond, uncond, scales)
    torch.testing.assert_close(out[:, 4], uncond[:, 4] + 2.0 * (cond[:, 4] - uncond[:, 4]))


def test_euler_sampler_recovers_gaussian_data():
    """Data N(mu, s^2): the exact denoiser is E[x0 | x] = mu + s^2 / (s^2 + sigma^2) (x - mu)."""
    mu, s = 0.3, 0.5

    def exact_x0(x, sigma):
        sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return mu + s**2 / (s**2 + sig2) * (x - mu)

    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20_000, 1, generator=g, dtype=torch.float64)
    sigmas = karras_sigmas(64, 0.002, 80.0).double()
    x = sample_euler(exact_x0, noise, sigmas)
    assert abs(x.mean().item() - mu) < 0.02
    assert abs(x.std().item() - s) < 0.02


def test_one_euler_step_is_the_denoisers_estimate_and_a_second_step_at_sigma_min_barely_moves_it():
    """Why the embedded default samples with 1 step: Karras with 2 steps is [sigma_max, sigma_min, 0], and
    2 steps end sigma_min * noise away from 1 step's estimate (a 1/500 of the unit noise, far below a pixel)."""
    mu, s = 0.3, 0.5

    def exact_x0(x, sigma):
        sig2 = sigma.reshape(-1, *([1] * (x.ndim - 1))) ** 2
        return mu + s**2 / (s**2 + sig2) * (x - mu)

    noise = torch.randn(1000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    one = sample_euler(exact_x0, noise, karras_sigmas(1, 0.002, 80.0).double())
    torch.testing.assert_close(one, exact_x0(80.0 * noise, torch.tensor([80.0], dtype=torch.float64)))
    two = sample_euler(exact_x0, noise, karras_sigmas(2, 0.002, 80.0).double())
    assert karras_sigmas(2, 0.002, 80.0).tolist() == pytest.approx([80.0, 0.002, 0.0])
    torch.testing.assert_close(two, one + 0.002 * noise, rtol=0, atol=1e-4)
