"""``persistworld swap-decoder``: a world model with a fine-tuned decoder for the same latent space.

The denoiser of a world model is trained on its autoencoder's latents. A decoder fine-tuned with the
encoder frozen (``persistworld train-vae --init-from MODEL --train decoder``) reads the same latents, so it
can replace the model's decoder without retraining anything: better reconstructions, same dynamics.

The command checks that the new autoencoder really shares the latent space (same class and configuration,
same scaling factor, bit-identical encoder and ``quant_conv`` weights) and stops naming the first
difference otherwise. The result is a standalone model directory: the model's denoiser, normalisation,
sampler settings and success detector, the new autoencoder, and a model card that records the swap.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from persistworld_env.models.autoencoder import ENCODER_PREFIXES, ModelLoadError, load_autoencoder
from persistworld_env.models.world_model import WorldModel
from training.model_card import add_section

#: Config entries that describe where a diffusers model came from, not what it computes.
_PROVENANCE_KEYS = ("_name_or_path", "_diffusers_version", "_use_default_values")
#: Config entries the latent-space check leaves out: provenance, the class (compared by family) and the
#: decoder's own depth (``AutoencoderKLSplitDepth``).
_NOT_COMPARED = _PROVENANCE_KEYS + ("_class_name", "decoder_layers_per_block")


def _family(autoencoder: nn.Module) -> str:
    """The class name, with ``AutoencoderKL``'s split-depth variant counted as ``AutoencoderKL`` (same encoder)."""
    from diffusers import AutoencoderKL

    return "AutoencoderKL" if isinstance(autoencoder, AutoencoderKL) else type(autoencoder).__name__


def check_same_latent_space(current: nn.Module, candidate: nn.Module) -> None:
    """Raise ``ValueError`` naming the first difference if ``candidate`` does not encode exactly like ``current``.

    Decoders may differ in depth (``AutoencoderKLSplitDepth``); everything on the encoder side may not.
    """
    if _family(current) != _family(candidate):
        raise ValueError(f"autoencoder class {type(candidate).__name__} differs from the model's "
                         f"{type(current).__name__}")
    def comparable(config) -> dict:  # a saved config holds lists where a built one holds tuples
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dict(config).items() if k not in _NOT_COMPARED}

    ours, theirs = comparable(current.config), comparable(candidate.config)
    for key in sorted(set(ours) | set(theirs)):
        if ours.get(key) != theirs.get(key):
            raise ValueError(f"autoencoder config {key!r} differs: {theirs.get(key)!r} instead of the model's "
                             f"{ours.get(key)!r} (a different latent space)")
    a, b = current.state_dict(), candidate.state_dict()
    encoder_a = sorted(k for k in a if k.startswith(ENCODER_PREFIXES))
    if encoder_a != sorted(k for k in b if k.startswith(ENCODER_PREFIXES)):
        raise ValueError("the autoencoders' encoders have different parameter names")
    for key in encoder_a:
        if not torch.equal(a[key], b[key]):
            raise ValueError(f"encoder weight {key!r} differs: the new autoencoder encodes differently, so the "
                             "world model's denoiser does not fit it (fine-tune with --train decoder)")


def swap_decoder(model_path: str, autoencoder_path: str, command: str = "") -> WorldModel:
    """The world model at ``model_path`` with the autoencoder at ``autoencoder_path`` (checked, see module doc)."""
    model = WorldModel.from_pretrained(model_path)
    candidate = load_autoencoder(autoencoder_path)
    check_same_latent_space(model.autoencoder, candidate)
    swapped = model.with_autoencoder(candidate)
    new_state = candidate.state_dict()
    old_state = model.autoencoder.state_dict()
    changed = len(old_state.keys() ^ new_state.keys()) + sum(  # in one decoder only, or different
        not torch.equal(old_state[k], new_state[k]) for k in old_state.keys() & new_state.keys())
    swapped.model_card = add_section(model.model_card, (
        "## Decoder replaced (`persistworld swap-decoder`)\n\n"
        f"The autoencoder is `{autoencoder_path}` (encoder, latent space and scaling factor unchanged; {changed} "
        "decoder-side tensors differ). Figures above that involve decoding were measured with the previous decoder.\n\n"
        f"- command: `{command or '(from Python)'}`\n"))
    return swapped.eval()


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", required=True, help="world model directory (or 'default', the embedded model)")
    parser.add_argument("--autoencoder", required=True,
                        help="autoencoder directory from `persistworld train-vae --init-from MODEL --train decoder`")
    parser.add_argument("--out", required=True, help="model directory to write")
    return parser


def main(args: argparse.Namespace) -> int:
    from training.checkpoints import save_derived_model

    try:
        model = swap_decoder(args.model, args.autoencoder, command=getattr(args, "command_line", ""))
    except (ValueError, ModelLoadError) as e:
        raise SystemExit(f"persistworld swap-decoder: {e}") from None
    out = save_derived_model(model, args.out, args.model)
    print(f"wrote {out} ({args.model} with the decoder of {args.autoencoder})")
    return 0
