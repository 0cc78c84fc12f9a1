"""The one place where images change representation: uint8 pixels <-> float [-1, 1] <-> scaled latents.

Conventions (DESIGN.md section 3):

* at every API, images are uint8 ``(..., H, W, 3)`` (numpy or torch), cameras in ``constants.CAMERAS`` order;
* networks see float ``(..., 3, H, W)`` in [-1, 1] (``x = u / 127.5 - 1``, exact round trip for integers);
* the world model sees **scaled latents** ``(B, F, C, V * h, w)``: each camera is encoded separately by
  the autoencoder, its latent multiplied by the autoencoder's ``scaling_factor`` (after subtracting its
  ``shift_factor`` if it has one), and the V camera latents are stacked along height, camera ``v``
  occupying rows ``v * h .. (v + 1) * h`` (Ctrl-World's layout: 3 x (4, 24, 40) -> (4, 72, 40)).

:class:`LatentCodec` wraps a diffusers ``AutoencoderKL`` (our ``tiny``/``default`` scales) or SVD's
``AutoencoderKLTemporalDecoder`` (``ctrl-world``), batches work in chunks to bound memory, runs under
``torch.no_grad`` on the autoencoder's device and dtype, and encodes deterministically with the
posterior mode unless asked to sample.
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
from torch import nn

ImageArray = Union[np.ndarray, torch.Tensor]

CPU_CHUNK_SIZE = 16  # images per autoencoder call on a CPU (per-image cost rises past ~24 here)
ACCELERATOR_CHUNK_SIZE = 64


# ---------------------------------------------------------------------------------------------- pixels
def uint8_to_float(images: ImageArray, device: torch.device | str | None = None,
                   dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``(..., H, W, 3)`` (numpy or torch) -> float ``(..., 3, H, W)`` in [-1, 1]."""
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    if images.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {images.dtype}")
    if images.ndim < 3 or images.shape[-1] != 3:
        raise ValueError(f"expected images of shape (..., H, W, 3), got {tuple(images.shape)}")
    x = images.to(device=device).movedim(-1, -3).to(dtype)
    return x / 127.5 - 1.0


def float_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float ``(..., 3, H, W)`` in [-1, 1] -> uint8 ``(..., H, W, 3)`` (rounded, clipped), same device."""
    if images.ndim < 3 or images.shape[-3] != 3:
        raise ValueError(f"expected images of shape (..., 3, H, W), got {tuple(images.shape)}")
    u = ((images.float() + 1.0) * 127.5).round_().clamp_(0, 255)
    return u.to(torch.uint8).movedim(-3, -1).contiguous()


# ---------------------------------------------------------------------------------------------- views
def stack_views(latents: torch.Tensor) -> torch.Tensor:
    """Per-view latents ``(..., V, C, h, w)`` -> stacked ``(..., C, V * h, w)`` (view v in rows v*h..)."""
    *lead, v, c, h, w = latents.shape
    return latents.movedim(-4, -3).reshape(*lead, c, v * h, w)


def unstack_views(latents: torch.Tensor, num_views: int) -> torch.Tensor:
    """Stacked ``(..., C, V * h, w)`` -> per-view ``(..., V, C, h, w)`` (inverse of :func:`stack_views`)."""
    *lead, c, vh, w = latents.shape
    if vh % num_views:
        raise ValueError(f"stacked latent height {vh} is not divisible by {num_views} views")
    return latents.reshape(*lead, c, num_views, vh // num_views, w).movedim(-3, -4)


# ---------------------------------------------------------------------------------------------- codec
def is_temporal_autoencoder(autoencoder: nn.Module) -> bool:
    """Whether the decoder mixes frames (SVD's ``AutoencoderKLTemporalDecoder``: decode needs num_frames)."""
    return type(autoencoder).__name__ == "AutoencoderKLTemporalDecoder"


class LatentCodec:
    """Multi-view frames <-> scaled, height-stacked latents through a diffusers autoencoder.

    Args:
        autoencoder: ``AutoencoderKL`` or ``AutoencoderKLTemporalDecoder`` (its config gives
            ``scaling_factor`` and optional ``shift_factor``); put it on the device/dtype you want first.
        chunk_size: images per encoder/decoder call (temporal decoder: clips per call) to bound memory; None:
            :data:`CPU_CHUNK_SIZE` on a CPU (larger calls cost more per image there: the activations leave the
            cache), :data:`ACCELERATOR_CHUNK_SIZE` elsewhere.
        sample_posterior: encode with a posterior sample instead of its mode (default: mode).
        channels_last: convert the autoencoder (in place) and its inputs to channels-last memory
            format: ~20% faster convolutions on CPU here (3-8x in bfloat16), same results up to float
            rounding; its group norms become :class:`~persistworld_env.models.cpu_layers.LayoutAwareGroupNorm`,
            which keeps bfloat16 inputs off PyTorch's slow channels-last group-norm path.
    """

    def __init__(self, autoencoder: nn.Module, chunk_size: int | None = None, sample_posterior: bool = False,
                 channels_last: bool = False):
        if chunk_size is not None and chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1 or None, got {chunk_size}")
        self.autoencoder = autoencoder.eval()
        self.chunk_size = None if chunk_size is None else int(chunk_size)
        self.sample_posterior = bool(sample_posterior)
        self.temporal = is_temporal_autoencoder(autoencoder)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        from persistworld_env.models.cpu_layers import (use_folded_upsampling,  # imports diffusers
                                                        use_layout_aware_group_norm, use_unit_scale_resnet_blocks)

        use_unit_scale_resnet_blocks(self.autoencoder)  # same function; no division by one
        use_folded_upsampling(self.autoencoder)  # same function; upsampling and its convolution in one
        if channels_last:
            self.autoencoder.to(memory_format=torch.channels_last)
            use_layout_aware_group_norm(self.autoencoder)

    # ------------------------------------------------------------------ properties
    @property
    def scaling_factor(self) -> float:
        return float(self.autoencoder.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.autoencoder.config, "shift_factor", None) or 0.0)

    @property
    def latent_channels(self) -> int:
        return int(self.autoencoder.config.latent_channels)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.autoencoder.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return next(self.autoencoder.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.autoencoder.parameters()).dtype

    @property
    def images_per_call(self) -> int:
        """``chunk_size``, or the default for the autoencoder's current device."""
        if self.chunk_size is not None:
            return self.chunk_size
        return CPU_CHUNK_SIZE if self.device.type == "cpu" else ACCELERATOR_CHUNK_SIZE

    def latent_shape(self, height: int, width: int, num_views: int) -> tuple[int, int, int]:
        """(C, V * h, w) of the stacked latent of V views of ``height x width`` pixels."""
        f = self.downsample_factor
        if height % f or width % f:
            raise ValueError(f"image size {height}x{width} is not divisible by the downsampling factor {f}")
        return self.latent_channels, num_views * height // f, width // f

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "LatentCodec":
        self.autoencoder.to(device=device, dtype=dtype)
        return self

    # ------------------------------------------------------------------ float level
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """float ``(N, 3, H, W)`` in [-1, 1] -> scaled latents ``(N, C, h, w)`` (float32, codec device)."""
        out = []
        for chunk in images.split(self.images_per_call):
            chunk = chunk.to(self.device, self.dtype).contiguous(memory_format=self.memory_format)
            dist = self.autoencoder.encode(chunk).latent_dist
            z = dist.sample(generator) if self.sample_posterior else dist.mode()
            out.append(((z.float() - self.shift_factor) * self.scaling_factor))
        return torch.cat(out)

    @torch.no_grad()
    def decode_images(self, latents: torch.Tensor, num_frames: int = 1) -> torch.Tensor:
        """Scaled latents ``(N, C, h, w)`` -> float images ``(N, 3, H, W)`` (about [-1, 1], float32).

        With a temporal decoder, ``N`` must be a whole number of clips of ``num_frames`` consecutive frames.
        """
        z = latents.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        z = z.to(self.dtype).contiguous(memory_format=self.memory_format)
        if not self.temporal:
            return torch.cat([self.autoencoder.decode(c).sample.float() for c in z.split(self.images_per_call)])
        if z.shape[0] % num_frames:
            raise ValueError(f"{z.shape[0]} latents are not whole clips of {num_frames} frames")
        step = max(1, self.images_per_call // num_frames) * num_frames
        return torch.cat([self.autoencoder.decode(c, num_frames=num_frames).sample.float() for c in z.split(step)])

    # ------------------------------------------------------------------ multi-view level
    def encode_views(self, frames: ImageArray, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 ``(B, F, V, H, W, 3)`` -> scaled latents ``(B, F, C, V * h, w)``, each view encoded alone."""
        if frames.ndim != 6:
            raise ValueError(f"expected frames (B, F, V, H, W, 3), got shape {tuple(frames.shape)}")
        b, f, v, h, w, _ = frames.shape
        self.latent_shape(h, w, v)  # validates divisibility
        x = uint8_to_float(frames).reshape(b * f * v, 3, h, w)
        z = self.encode_images(x, generator=generator)
        return stack_views(z.reshape(b, f, v, *z.shape[1:]))

    def decode_views(self, latents: torch.Tensor, num_views: int) -> torch.Tensor:
        """Scaled latents ``(B, F, C, V * h, w)`` -> uint8 ``(B, F, V, H, W, 3)`` on the CPU."""
        return float_to_uint8(self.decode_views_float(latents, num_views)).cpu()

    def decode_views_float(self, latents: torch.Tensor, num_views: int) -> torch.Tensor:
        """Scaled latents ``(B, F, C, V * h, w)`` -> float images ``(B, F, V, 3, H, W)`` (about [-1, 1])."""
        if latents.ndim != 5:
            raise ValueError(f"expected latents (B, F, C, V*h, w), got shape {tuple(latents.shape)}")
        b, f = latents.shape[:2]
        per_view = unstack_views(latents, num_views)  # (B, F, V, C, h, w)
        if self.temporal:  # clips of F frames per (batch, view)
            z = per_view.movedim(2, 1).reshape(b * num_views * f, *per_view.shape[3:])
            x = self.decode_images(z, num_frames=f)
            x = x.reshape(b, num_views, f, *x.shape[1:]).movedim(1, 2)
        else:
            x = self.decode_images(per_view.reshape(b * f * num_views, *per_view.shape[3:]))
            x = x.reshape(b, f, num_views, *x.shape[1:])
        return x

    def reconstruct_views(self, frames: ImageArray) -> torch.Tensor:
        """Encode then decode uint8 ``(B, F, V, H, W, 3)`` frames (for quality checks)."""
        return self.decode_views(self.encode_views(frames), num_views=frames.shape[2])
