"""Load a Ctrl-World checkpoint (``checkpoint-*.pt``, a plain ``torch.save`` state dict) into a WorldModel.

Ctrl-World saves its whole module: ``unet.*`` (SVD's UNetSpatioTemporalConditionModel, 8 input
channels, 1024-d cross-attention), ``action_encoder.action_encode.{0,2,4}.*`` (the 7 -> 1024 -> 1024 ->
1024 MLP), ``vae.*`` (SVD's AutoencoderKLTemporalDecoder) and the frozen ``image_encoder.*`` /
``text_encoder.*`` (CLIP). The UNet, action encoder and VAE map one-to-one onto our ``ctrl-world``
scale; the CLIP encoders are not used here (no text conditioning at this scale) and are reported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from persistworld_env.models.autoencoder import ModelLoadError
from persistworld_env.models.world_model import WorldModel

#: Ctrl-World key prefix -> attribute path in WorldModel.
PREFIX_MAP: dict[str, str] = {
    "unet.": "denoiser.unet.",
    "action_encoder.": "denoiser.action_encoder.",
    "vae.": "autoencoder.",
}


@dataclass
class LoadReport:
    """What a checkpoint load did."""

    loaded: int = 0
    unused: list[str] = field(default_factory=list)


def to_ctrl_world_state_dict(model: WorldModel) -> dict[str, torch.Tensor]:
    """Our weights under Ctrl-World's key names (the inverse of :func:`load_ctrl_world_checkpoint`)."""
    out = {}
    for ours_prefix, module in (("unet.", model.denoiser.unet), ("action_encoder.", model.denoiser.action_encoder),
                                ("vae.", model.autoencoder)):
        for key, value in module.state_dict().items():
            out[ours_prefix + key] = value
    return out


def load_ctrl_world_checkpoint(model: WorldModel, checkpoint: str | os.PathLike | dict) -> LoadReport:
    """Copy a Ctrl-World state dict (a path to ``checkpoint-*.pt`` or a loaded dict) into ``model``.

    Every UNet, action-encoder and VAE tensor of ``model`` must be present with the same shape (a clear
    ``ModelLoadError`` otherwise); CLIP encoder keys are skipped and listed in the report.
    """
    if not isinstance(checkpoint, dict):
        path = Path(checkpoint)
        if not path.is_file():
            raise ModelLoadError(f"Ctrl-World checkpoint not found: {path}")
        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelLoadError(f"cannot read Ctrl-World checkpoint {path} (truncated or not a state dict?): {e}") from e
    if "state_dict" in checkpoint and isinstance(checkpoint["state_dict"], dict):  # a file's or a loaded wrapper
        checkpoint = checkpoint["state_dict"]
    report = LoadReport()
    targets = {"unet.": {}, "action_encoder.": {}, "vae.": {}}
    for key, value in checkpoint.items():
        prefix = next((p for p in PREFIX_MAP if key.startswith(p)), None)
        if prefix is None:
            report.unused.append(key)
            continue
        targets[prefix][key[len(prefix):]] = value
    modules = {"unet.": model.denoiser.unet, "action_encoder.": model.denoiser.action_encoder,
               "vae.": model.autoencoder}
    for prefix, module in modules.items():
        try:
            module.load_state_dict(targets[prefix], strict=True)
        except RuntimeError as e:
            raise ModelLoadError(f"Ctrl-World checkpoint does not match the '{prefix[:-1]}' of this model "
                                 f"(build it with WorldModel.build('ctrl-world', ...)): {e}") from e
        report.loaded += len(targets[prefix])
    return report
