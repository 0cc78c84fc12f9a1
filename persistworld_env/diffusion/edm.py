"""EDM preconditioning with v-prediction, as Stable Video Diffusion and Ctrl-World use it (DESIGN.md section 2).

For noise level sigma (data scaled to unit variance):

    c_skip = 1 / (sigma^2 + 1)          c_out   = -sigma / sqrt(sigma^2 + 1)
    c_in   = 1 / sqrt(sigma^2 + 1)      c_noise = ln(sigma) / 4
    x0     = c_skip * x + c_out * F(c_in * x, c_noise)

Training draws ln(sigma) ~ N(P_mean, P_std^2) and weights the squared x0 error by (sigma^2 + 1) / sigma^2.
Optionally a fraction ``top_fraction`` of the training levels is ``top_sigma`` instead: the level a
sampler starts from. A few-step sampler makes its first (with one step, its only) network call there,
while the log-normal puts ~1 % of its draws above sigma = 80.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class EDMConfig:
    """Noise-level constants of training and sampling."""

    p_mean: float = 0.7
    p_std: float = 1.6
    sigma_min: float = 0.002
    sigma_max: float = 700.0
    rho: float = 7.0
    #: Share of training levels set to ``top_sigma`` instead of drawn from the log-normal (0 = plain EDM).
    top_fraction: float = 0.0
    #: That level: the sampler's first, e.g. a model's ``SamplerConfig.sigma_max``.
    top_sigma: float = 80.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.top_fraction <= 1.0:
            raise ValueError(f"top_fraction must be in [0, 1], got {self.top_fraction}")
        if self.top_sigma <= 0:
            raise ValueError(f"top_sigma must be > 0, got {self.top_sigma}")


def _expand(sigma: torch.Tensor, ndim: int) -> torch.Tensor:
    """Reshape per-sample sigmas (B,) to broadcast against a (B, ...) tensor of ``ndim`` dims."""
    sigma = torch.as_tensor(sigma)
    return sigma.reshape(sigma.shape + (1,) * (ndim - sigma.ndim))


def precondition(sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in, c_noise) for noise levels ``sigma`` (any shape)."""
    sigma = torch.as_tensor(sigma)
    var = sigma**2 + 1.0
    return 1.0 / var, -sigma / var.sqrt(), 1.0 / var.sqrt(), sigma.log() / 4.0


def denoise(network: Callable[..., torch.Tensor], x: torch.Tensor, sigma: torch.Tensor, **conditioning) -> torch.Tensor:
    """Clean-sample estimate x0 = c_skip x + c_out F(c_in x, c_noise; conditioning).

    ``sigma`` has shape (B,) and ``x`` (B, ...); the network receives the scaled input and c_noise (B,).
    """
    c_skip, c_out, c_in, c_noise = precondition(sigma)
    c_skip, c_out, c_in = (_expand(c, x.ndim) for c in (c_skip, c_out, c_in))
    return c_skip * x + c_out * network(c_in * x, c_noise, **conditioning)


def sample_training_sigma(batch: int, config: EDMConfig = EDMConfig(), generator: torch.Generator | None = None,
                          device: torch.device | str = "cpu") -> torch.Tensor:
    """Training noise levels: sigma = exp(P_mean + P_std * n), n ~ N(0, 1); a ``top_fraction`` share of
    them (a second, uniform draw) replaced by ``top_sigma``."""
    n = torch.randn(batch, generator=generator, device=device)
    sigma = (config.p_mean + config.p_std * n).exp()
    if config.top_fraction > 0:
        top = torch.rand(batch, generator=generator, device=device) < config.top_fraction
        sigma = torch.where(top, torch.full_like(sigma, config.top_sigma), sigma)
    return sigma


def loss_weight(sigma: torch.Tensor) -> torch.Tensor:
    """EDM loss weight (sigma^2 + 1) / sigma^2 for unit-variance data."""
    sigma = torch.as_tensor(sigma)
    return (sigma**2 + 1.0) / sigma**2
