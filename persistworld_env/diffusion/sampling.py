"""Sampling: Karras noise schedule, Euler steps, classifier-free guidance with a per-frame ramp.

Written as small pure functions in the style of k-diffusion; ``denoiser(x, sigma) -> x0`` is any
callable (the world model's preconditioned network, or an analytic one in tests).
"""
from __future__ import annotations

from typing import Callable

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def karras_sigmas(steps: int, sigma_min: float = 0.002, sigma_max: float = 700.0, rho: float = 7.0,
                  device: torch.device | str = "cpu") -> torch.Tensor:
    """Karras et al. (2022) schedule: ``steps`` decreasing noise levels followed by a final 0."""
    if steps < 1:
        raise ValueError(f"need at least one sampling step, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64, device=device)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (hi + ramp * (lo - hi)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)]).float()


def frame_guidance_scales(num_frames: int, max_scale: float, min_scale: float = 1.0,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """Per-frame guidance, ramped linearly from ``min_scale`` (first frame) to ``max_scale`` (last)."""
    return torch.linspace(min_scale, max_scale, num_frames, device=device)


def classifier_free_guidance(cond: torch.Tensor, uncond: torch.Tensor, scales: torch.Tensor,
                             frame_dim: int = 1) -> torch.Tensor:
    """uncond + s * (cond - uncond), with ``scales`` (F,) broadcast along ``frame_dim`` of (B, F, ...)."""
    shape = [1] * cond.ndim
    shape[frame_dim] = -1
    return uncond + scales.reshape(shape) * (cond - uncond)


@torch.no_grad()
def sample_euler(denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Deterministic Euler integration of the probability-flow ODE from ``noise`` (unit variance).

    x starts at noise * sigmas[0]; each step moves along d = (x - x0) / sigma to the next level.
    """
    x = noise * sigmas[0]
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        sigma_b = sigma.expand(x.shape[0])
        x0 = denoiser(x, sigma_b)
        d = (x - x0) / sigma
        x = x + d * (sigma_next - sigma)
    return x
