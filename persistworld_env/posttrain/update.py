"""Step S4 on a minibatch of candidate clips: DiffusionNFT through the world model's EDM denoiser.

Each sample gets a noise level drawn as in pretraining (ln sigma ~ N(P_mean, P_std^2)) and one noise
draw; the trained, old and (optionally) reference denoisers predict x0 from the same noisy clip and
the same conditioning (the history, current frame and poses it was generated from, without noise
augmentation or token dropout: exactly what the model sees in a rollout). The loss itself is
:func:`persistworld_env.diffusion.nft.nft_loss`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from persistworld_env.diffusion.edm import EDMConfig, sample_training_sigma
from persistworld_env.diffusion.nft import NFTLoss, nft_loss
from persistworld_env.models.lora import PolicyWeights


def nft_batch_loss(denoiser: Callable[..., torch.Tensor], policy: PolicyWeights, history: torch.Tensor,
                   current: torch.Tensor, poses: torch.Tensor, x0: torch.Tensor, r: torch.Tensor,
                   instructions: Sequence[str] | None = None, beta: float = 1.0, ref_weight: float = 0.0,
                   edm: EDMConfig = EDMConfig(), generator: torch.Generator | None = None) -> NFTLoss:
    """Per-sample NFT loss terms of a minibatch.

    Args:
        denoiser: the trained denoiser's forward (the distributed wrapper under accelerate).
        policy: its :class:`PolicyWeights` (gives the old and reference predictions).
        history, current, poses, x0: the samples' conditioning and clean clips (see ``GroupSamples.batch``).
        r: (B,) optimality probabilities.
        generator: noise-level and noise draws (seeded per step for exact resume).
    """
    b, dev = x0.shape[0], x0.device
    sigma = sample_training_sigma(b, edm, generator=generator, device=dev).to(x0.dtype)
    noise = torch.randn(x0.shape, generator=generator, device=dev, dtype=x0.dtype)
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
    return nft_loss(x_theta, x_old, x0, r, beta=beta, x_ref=x_ref, ref_weight=ref_weight)
