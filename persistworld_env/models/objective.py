"""The world model's pretraining objective: EDM denoising loss on the clip frames only.

Per sample: ln(sigma) ~ N(P_mean, P_std^2) for the clip; each history frame gets its own small noise
sigma_h ~ |N(0, 0.3^2)| (and the c_in scaling of that level), so the model learns to tolerate imperfect
memories; the current-frame conditioning latent is augmented with sigma_c ~ U(0, 0.2); the tokens of a
sample are zeroed with probability 0.05 (the unconditional branch of classifier-free guidance).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from persistworld_env.diffusion.edm import EDMConfig, loss_weight, sample_training_sigma
from persistworld_env.models.denoiser import WorldModelDenoiser


@dataclass(frozen=True)
class TrainingNoise:
    """Noise and dropout levels of pretraining."""

    edm: EDMConfig = EDMConfig()
    history_sigma_std: float = 0.3
    current_sigma_max: float = 0.2
    token_dropout: float = 0.05


def augment(latents: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Variance-preserving noise augmentation: (x + sigma * n) / sqrt(sigma^2 + 1), sigma broadcast."""
    return (latents + sigma * noise) / (sigma**2 + 1).sqrt()


def edm_loss(denoiser: WorldModelDenoiser | torch.nn.Module, latents: torch.Tensor, poses: torch.Tensor,
             instructions: Sequence[str] | None = None, noise: TrainingNoise = TrainingNoise(),
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Weighted x0 regression loss of a batch.

    Args:
        denoiser: the denoiser, or a distributed wrapper of it (its forward is what gets called).
        latents: (B, 11, C, H, W) scaled latents: 6 history frames, then the clip (its frame 0 = current).
        poses: (B, 11, 7) normalised poses of those frames.
    """
    cfg = getattr(denoiser, "module", denoiser).config
    b, dev = latents.shape[0], latents.device

    def randn(*shape):
        return torch.randn(*shape, generator=generator, device=dev, dtype=latents.dtype)

    history, clip = latents[:, :cfg.num_history], latents[:, cfg.num_history:]
    sigma = sample_training_sigma(b, noise.edm, generator=generator, device=dev).to(latents.dtype)
    sigma_h = (randn(b, cfg.num_history, 1, 1, 1) * noise.history_sigma_std).abs()
    sigma_c = torch.rand(b, 1, 1, 1, generator=generator, device=dev, dtype=latents.dtype) * noise.current_sigma_max
    noisy_clip = clip + sigma.reshape(b, 1, 1, 1, 1) * randn(*clip.shape)
    noisy_history = augment(history, sigma_h, randn(*history.shape))
    current = augment(clip[:, 0], sigma_c, randn(*clip[:, 0].shape))
    drop = torch.rand(b, generator=generator, device=dev) < noise.token_dropout
    x0 = denoiser(noisy_clip, sigma, noisy_history, current, poses=poses, instructions=instructions, drop=drop)
    weight = loss_weight(sigma).reshape(b, 1, 1, 1, 1)
    return (weight * (x0 - clip) ** 2).mean()
