"""Step S4 on a minibatch of candidate clips: DiffusionNFT through the world model's EDM denoiser.

Each sample gets a noise level drawn as in pretraining (ln sigma ~ N(P_mean, P_std^2)) and one noise
draw, either its own or, with :func:`shared_training_noise`, one shared by the group's candidates. The
trained, old and (optionally) reference denoisers predict x0 from the same noisy clip and the same
conditioning (the history, current frame and poses it was generated from, without noise
augmentation or token dropout: exactly what the model sees in a rollout). The loss itself is
:func:`persistworld_env.diffusion.nft.nft_loss`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

import torch

from persistworld_env.diffusion.edm import EDMConfig, sample_training_sigma
from persistworld_env.diffusion.nft import NFTLoss, nft_loss
from persistworld_env.models.lora import PolicyWeights


def shared_training_noise(keys: Sequence[int] | np.ndarray, shape: Sequence[int], edm: EDMConfig = EDMConfig(),
                          generator: torch.Generator | None = None, device: torch.device | str = "cpu",
                          dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma (N,), noise (N, *shape)): one draw per distinct key, shared by every sample carrying it.

    Keyed by clip position within a group, the K candidates' clips at one position are noised alike:
    their loss gradients then differ only through the candidates, and since the group-normalised r sum
    to about K / 2 over a group, the part of the update that the noise draw alone would drive cancels
    (common random numbers; a variance reduction, the expected update is unchanged).
    """
    keys = torch.as_tensor(np.asarray(keys), dtype=torch.long)
    if keys.ndim != 1 or len(keys) == 0:
        raise ValueError(f"keys must be a non-empty 1-D sequence, got shape {tuple(keys.shape)}")
    unique, inverse = torch.unique(keys, return_inverse=True)
    sigma = sample_training_sigma(len(unique), edm, generator=generator, device=device).to(dtype)
    noise = torch.randn((len(unique), *shape), generator=generator, device=device, dtype=dtype)
    inverse = inverse.to(device)
    return sigma[inverse], noise[inverse]


def nft_batch_loss(denoiser: Callable[..., torch.Tensor], policy: PolicyWeights, history: torch.Tensor,
                   current: torch.Tensor, poses: torch.Tensor, x0: torch.Tensor, r: torch.Tensor,
                   instructions: Sequence[str] | None = None, beta: float = 1.0, ref_weight: float = 0.0,
                   edm: EDMConfig = EDMConfig(), generator: torch.Generator | None = None,
                   sigma: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   view_weights: torch.Tensor | None = None) -> NFTLoss:
    """Per-sample NFT loss terms of a minibatch.

    Args:
        denoiser: the trained denoiser's forward (the distributed wrapper under accelerate).
        policy: its :class:`PolicyWeights` (gives the old and reference predictions).
        history, current, poses, x0: the samples' conditioning and clean clips (see ``GroupSamples.batch``).
        r: (B,) optimality probabilities, or (B, V) one per camera view (per-view credit; see
            :func:`~persistworld_env.diffusion.nft.nft_loss`, weighted by ``view_weights``).
        generator: noise-level and noise draws (seeded per step for exact resume).
        sigma, noise: given draws ((B,) and x0's shape, e.g. from :func:`shared_training_noise`) instead.
    """
    b, dev = x0.shape[0], x0.device
    if (sigma is None) != (noise is None):
        raise ValueError("give both sigma and noise, or neither")
    if sigma is None:
        sigma = sample_training_sigma(b, edm, generator=generator, device=dev).to(x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
    elif sigma.shape != (b,) or noise.shape != x0.shape:
        raise ValueError(f"sigma must be ({b},) and noise {tuple(x0.shape)}, got {tuple(sigma.shape)} "
                         f"and {tuple(noise.shape)}")
    noisy = x0 + sigma.reshape(b, *([1] * (x0.ndim - 1))) * noise
    conditioning = dict(poses=poses, instructions=instructions)
    with torch.no_grad():
        with policy.old(merged=True) as old:
            x_old = old(noisy, sigma, history, current, **conditioning)
        x_ref = None
        if ref_weight > 0:
            with policy.reference() as reference:
                x_ref = reference(noisy, sigma, history, current, **conditioning)
    x_theta = denoiser(noisy, sigma, history, current, **conditioning)
    return nft_loss(x_theta, x_old, x0, r, beta=beta, x_ref=x_ref, ref_weight=ref_weight, view_weights=view_weights)
