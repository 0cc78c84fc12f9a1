"""Sampling one clip of the world model: Euler on Karras sigmas with per-frame-ramped CFG.

Conditional and unconditional branches run in one batched forward; each batch element draws its
noise from its own ``torch.Generator`` so a rollout is reproducible whatever it is batched with.
On a CPU a large batch is run in denoiser forwards of at most :data:`CPU_MAX_BATCH` elements: past that the
activations leave the cache and every element costs more (docs/benchmarks.md: 8 until the feed-forward
layers ran in token chunks, 16 since).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from persistworld_env.diffusion.sampling import (
    classifier_free_guidance, frame_guidance_scales, karras_sigmas, sample_euler,
)
from persistworld_env.models.denoiser import WorldModelDenoiser

CPU_MAX_BATCH = 16  # denoiser elements per forward on a CPU (best of 4-24 for the default model, docs/benchmarks.md)


def default_max_batch(device: torch.device | str) -> int | None:
    """Elements per denoiser forward for sampling on ``device``: :data:`CPU_MAX_BATCH` on a CPU, no limit elsewhere."""
    return CPU_MAX_BATCH if torch.device(device).type == "cpu" else None


def in_micro_batches(fn: Callable[..., torch.Tensor], max_batch: int | None, *tensors: torch.Tensor) -> torch.Tensor:
    """``fn(*tensors)`` computed on slices of at most ``max_batch`` elements along dim 0, concatenated."""
    n = tensors[0].shape[0]
    if max_batch is None or n <= max_batch:
        return fn(*tensors)
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1 or None, got {max_batch}")
    return torch.cat([fn(*(t[i:i + max_batch] for t in tensors)) for i in range(0, n, max_batch)])


@dataclass
class SamplerConfig:
    """Sampling settings (stored with every model as its defaults; overridable per call)."""

    steps: int = 3  # DIAMOND samples with 3 Euler steps; on MiniDROID 3 beats 4 and 8 in one-clip PSNR
    guidance: float = 1.0  # 1 = no classifier-free guidance (one branch)
    sigma_min: float = 0.002
    sigma_max: float = 80.0
    rho: float = 7.0

    def to_dict(self) -> dict:
        return asdict(self)


def clip_noise(shape: Sequence[int], generators: Sequence[torch.Generator] | None, device, dtype) -> torch.Tensor:
    """Unit Gaussian noise (B, ...), element b drawn from ``generators[b]`` when given."""
    if generators is None:
        return torch.randn(*shape, device=device, dtype=dtype)
    if len(generators) != shape[0]:
        raise ValueError(f"need one generator per batch element ({shape[0]}), got {len(generators)}")
    return torch.stack([torch.randn(*shape[1:], generator=g, device=g.device, dtype=dtype)
                        for g in generators]).to(device)


@torch.no_grad()
def sample_clip(denoiser: WorldModelDenoiser, history: torch.Tensor, current: torch.Tensor, tokens: torch.Tensor,
                config: SamplerConfig = SamplerConfig(),
                generators: Sequence[torch.Generator] | None = None, max_batch: int | None = None) -> torch.Tensor:
    """Generate the clip latents (B, 5, C, H, W) given history (B, 6, C, H, W), current (B, C, H, W), tokens (B, 11, d).

    ``max_batch``: at most this many elements per denoiser forward (both CFG branches count); None = one forward.
    """
    b = history.shape[0]
    shape = (b, denoiser.config.num_clip, *history.shape[2:])
    noise = clip_noise(shape, generators, history.device, history.dtype)
    sigmas = karras_sigmas(config.steps, config.sigma_min, config.sigma_max, config.rho, device=history.device)
    sigmas = sigmas.to(history.dtype)
    if config.guidance == 1.0:
        def x0_fn(x, sigma):
            return in_micro_batches(denoiser, max_batch, x, sigma, history, current, tokens)
    else:
        scales = frame_guidance_scales(denoiser.config.num_clip, config.guidance, device=history.device)
        history2, current2 = torch.cat([history, history]), torch.cat([current, current])
        tokens2 = torch.cat([tokens, torch.zeros_like(tokens)])

        def x0_fn(x, sigma):
            both = in_micro_batches(denoiser, max_batch, torch.cat([x, x]), torch.cat([sigma, sigma]), history2,
                                    current2, tokens2)
            cond, uncond = both.chunk(2)
            return classifier_free_guidance(cond, uncond, scales.to(x.dtype))
    return sample_euler(x0_fn, noise, sigmas)
