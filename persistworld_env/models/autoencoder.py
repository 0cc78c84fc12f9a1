"""The world model's image autoencoder at each scale: configurations as data, build and load.

* ``tiny``: a diffusers ``AutoencoderKL`` of ~40 K parameters for unit tests (8x downsampling, 4 channels);
* ``default``: an ``AutoencoderKL`` trained by the project on MiniDROID frames
  (``training/train_autoencoder.py``): 48x80 per camera -> 8 x 6 x 10 latent (18 x 10 stacked for 3 views);
* ``AutoencoderKLSplitDepth``: an ``AutoencoderKL`` whose decoder has its own depth
  (``decoder_layers_per_block``), made from a trained autoencoder by :func:`with_decoder_depth` for a cheaper
  decoder over the same latent space (``persistworld tune-decoder --decoder-layers``);
* ``ctrl-world``: SVD's temporal VAE (``AutoencoderKLTemporalDecoder``, 192x320 -> 4 x 24 x 40,
  scaling factor 0.18215), random when built, loaded from a local SVD / Ctrl-World folder
  (``<path>/vae`` or ``<path>``) with :func:`load_autoencoder`.

Every autoencoder is saved and loaded as a diffusers directory (``config.json`` +
``diffusion_pytorch_model.safetensors``); the latent scaling factor lives in its config
(``scaling_factor``, for our trained ones ``1 / std`` of the training latents, see
:func:`compute_scaling_factor`). Loading problems raise :class:`ModelLoadError` naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn

from persistworld_env.models.image_codec import LatentCodec

#: SVD's VAE scaling factor (also Stable Diffusion 1.x/2.x), used by Ctrl-World.
SVD_SCALING_FACTOR = 0.18215

#: Autoencoder classes a directory may hold (diffusers ``_class_name``).
AUTOENCODER_CLASSES = ("AutoencoderKL", "AutoencoderKLSplitDepth", "AutoencoderKLTemporalDecoder")

#: Parameter name prefixes of the encoder side (what fixes the latent space).
ENCODER_PREFIXES = ("encoder.", "quant_conv.")

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
CONFIG_NAME = "config.json"

_ENC4 = ("DownEncoderBlock2D",) * 4
_DEC4 = ("UpDecoderBlock2D",) * 4

#: Constructor arguments per scale (class name under ``_class_name``). Data, not code: edit here.
AUTOENCODER_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny": dict(_class_name="AutoencoderKL", down_block_types=_ENC4, up_block_types=_DEC4,
                 block_out_channels=(8, 16, 16, 16), layers_per_block=1, latent_channels=4, norm_num_groups=4,
                 sample_size=24, scaling_factor=1.0, mid_block_add_attention=False),
    "default": dict(_class_name="AutoencoderKL", down_block_types=_ENC4, up_block_types=_DEC4,
                    block_out_channels=(16, 32, 64, 128), layers_per_block=1, latent_channels=8,
                    norm_num_groups=8, sample_size=48, scaling_factor=1.0, mid_block_add_attention=False),
    # stabilityai/stable-video-diffusion-img2vid(-xt) vae/config.json
    "ctrl-world": dict(_class_name="AutoencoderKLTemporalDecoder", down_block_types=_ENC4,
                       block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                       sample_size=768, scaling_factor=SVD_SCALING_FACTOR, force_upcast=True),
}
SCALES = tuple(AUTOENCODER_CONFIGS)


class ModelLoadError(OSError):
    """A model directory or weights file is missing, truncated, corrupt or of the wrong kind (names the path)."""


def load_safetensors_into(module: torch.nn.Module, weights: Path, config_path: Path) -> None:
    """Load a safetensors file into ``module`` (strict), turning unreadable or mismatched weights into
    :class:`ModelLoadError` that names the files."""
    from safetensors.torch import load_file

    try:
        state = load_file(str(weights))
    except Exception as e:  # safetensors raises its own error types on truncation
        raise ModelLoadError(f"cannot read {weights} (truncated or corrupt?): {e}") from e
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ModelLoadError(f"{weights} does not match {config_path}: {e}") from e


def save_safetensors_atomic(module: torch.nn.Module, weights: Path) -> None:
    """Write ``module``'s state dict to a safetensors file, replacing ``weights`` atomically."""
    from safetensors.torch import save_file

    from persistworld_env.data.io_utils import atomic_path

    with atomic_path(weights) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(tmp))


def autoencoder_config(scale: str, **overrides: Any) -> dict[str, Any]:
    """A copy of the constructor arguments of ``scale`` with ``overrides`` applied."""
    if scale not in AUTOENCODER_CONFIGS:
        raise ValueError(f"unknown autoencoder scale {scale!r}; choose one of {SCALES}")
    cfg = dict(AUTOENCODER_CONFIGS[scale])
    cfg.update(overrides)
    return cfg


def _autoencoder_class(name: str) -> type[nn.Module]:
    import diffusers

    if name not in AUTOENCODER_CLASSES:
        raise ValueError(f"unsupported autoencoder class {name!r}; expected one of {AUTOENCODER_CLASSES}")
    if name == "AutoencoderKLSplitDepth":
        from persistworld_env.models.split_depth_autoencoder import AutoencoderKLSplitDepth

        return AutoencoderKLSplitDepth
    return getattr(diffusers, name)


def build_autoencoder(scale: str = "default", **overrides: Any) -> nn.Module:
    """A randomly initialised autoencoder of ``scale`` (``tiny``, ``default``, ``ctrl-world``)."""
    cfg = autoencoder_config(scale, **overrides)
    cls = _autoencoder_class(cfg.pop("_class_name"))
    return cls(**cfg)


def resolve_autoencoder_dir(path: str | os.PathLike) -> Path:
    """The folder holding the autoencoder's diffusers ``config.json``: ``path`` itself, ``path/vae`` (SVD layout) or
    ``path/autoencoder`` (a world-model directory)."""
    path = Path(path)
    if not path.exists():
        raise ModelLoadError(f"autoencoder path does not exist: {path}")
    candidates = (path, path / "vae", path / "autoencoder")
    for candidate in candidates:
        if (candidate / CONFIG_NAME).is_file() and _is_diffusers_config(candidate / CONFIG_NAME):
            return candidate
    if (path / CONFIG_NAME).is_file():  # not a diffusers config, and no autoencoder folder: say what was read
        return path
    raise ModelLoadError(f"no autoencoder {CONFIG_NAME} in {path} (nor in {path / 'vae'} or {path / 'autoencoder'})")


def _is_diffusers_config(path: Path) -> bool:
    """Whether ``path`` is a diffusers model config (it names its class); unreadable files count as one, so the
    loader reports what is wrong with them."""
    try:
        return "_class_name" in json.loads(path.read_text())
    except (OSError, ValueError, TypeError):
        return True


def _check_weights(folder: Path) -> None:
    """Open the safetensors header and every tensor, so truncation or corruption names the file."""
    from safetensors import safe_open

    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        others = sorted(p.name for p in folder.glob("*.safetensors")) + sorted(p.name for p in folder.glob("*.bin"))
        if others:
            return  # a variant (e.g. fp16) or a .bin: diffusers checks it; errors are wrapped by the caller
        raise ModelLoadError(f"missing autoencoder weights file: {weights}")
    try:
        with safe_open(str(weights), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key)
    except Exception as e:  # safetensors raises its own error types
        raise ModelLoadError(f"cannot read autoencoder weights {weights} (truncated or corrupt?): {e}") from e


def load_autoencoder(path: str | os.PathLike, device: torch.device | str | None = None,
                     dtype: torch.dtype | None = None) -> nn.Module:
    """Load a saved autoencoder (ours, or SVD's temporal VAE from ``<svd>/vae`` or its folder), in eval mode."""
    folder = resolve_autoencoder_dir(path)
    config_path = folder / CONFIG_NAME
    try:
        config = json.loads(config_path.read_text())
        name = config["_class_name"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ModelLoadError(f"cannot read autoencoder config {config_path}: {e}") from e
    try:
        cls = _autoencoder_class(name)
    except ValueError as e:
        raise ModelLoadError(f"{config_path}: {e}") from e
    _check_weights(folder)
    try:
        model = cls.from_pretrained(str(folder), torch_dtype=dtype)
    except Exception as e:  # diffusers raises OSError, ValueError, RuntimeError, EnvironmentError ...
        raise ModelLoadError(f"cannot load autoencoder from {folder}: {e}") from e
    if name == "AutoencoderKLTemporalDecoder" and "scaling_factor" not in config:
        model.register_to_config(scaling_factor=SVD_SCALING_FACTOR)
    return model.to(device).eval()


def load_codec(path: str | os.PathLike, device: torch.device | str | None = None, dtype: torch.dtype | None = None,
               chunk_size: int | None = None, channels_last: bool = False) -> LatentCodec:
    """:class:`LatentCodec` over the autoencoder saved at ``path``."""
    return LatentCodec(load_autoencoder(path, device=device, dtype=dtype), chunk_size=chunk_size,
                       channels_last=channels_last)


@torch.no_grad()
def compute_scaling_factor(autoencoder: nn.Module, images: Iterable[torch.Tensor]) -> float:
    """``1 / std`` of the posterior-mode latents of float [-1, 1] image batches ``(N, 3, H, W)``.

    Our own VAEs store it as their ``scaling_factor``, so the world model sees unit-variance latents
    (the recipe that gave Stable Diffusion its 0.18215).
    """
    total, total_sq, count = 0.0, 0.0, 0
    p = next(autoencoder.parameters())
    for batch in images:
        z = autoencoder.encode(batch.to(p.device, p.dtype)).latent_dist.mode().double()
        total += float(z.sum())
        total_sq += float((z * z).sum())
        count += z.numel()
    if count == 0:
        raise ValueError("no images to compute the scaling factor from")
    var = total_sq / count - (total / count) ** 2
    return float(1.0 / max(var, 1e-12) ** 0.5)
