"""An ``AutoencoderKL`` whose decoder has its own depth, for a cheaper decoder over the same latent space.

diffusers' ``AutoencoderKL`` gives the encoder and the decoder one ``layers_per_block`` (the decoder's up
blocks hold ``layers_per_block + 1`` residual blocks each). A world model only ever decodes, so decoding is
where its step time goes: on a CPU, one env step of the embedded model decodes three times the denoiser's
multiply-adds (docs/benchmarks.md). :class:`AutoencoderKLSplitDepth` keeps the encoder (and so the latent
space the denoiser was trained on) and sets the decoder's depth on its own (``decoder_layers_per_block``).
:func:`with_decoder_depth` makes one from a trained autoencoder, copying the encoder exactly and every
decoder tensor whose name and shape still match; ``persistworld tune-decoder --decoder-layers`` then trains
the new decoder on the model's own latents.
"""
from __future__ import annotations

from diffusers import AutoencoderKL
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import Decoder
from torch import nn


class AutoencoderKLSplitDepth(AutoencoderKL):
    """``AutoencoderKL`` with ``decoder_layers_per_block`` residual blocks (+1) per decoder up block.

    Same constructor as ``AutoencoderKL`` plus ``decoder_layers_per_block`` (``None``: the encoder's
    ``layers_per_block``, i.e. exactly an ``AutoencoderKL``). Saved and loaded as a diffusers directory.
    """

    @register_to_config
    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: tuple[str, ...] = ("DownEncoderBlock2D",),
                 up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",), block_out_channels: tuple[int, ...] = (64,),
                 layers_per_block: int = 1, act_fn: str = "silu", latent_channels: int = 4, norm_num_groups: int = 32,
                 sample_size: int = 32, scaling_factor: float = 0.18215, shift_factor: float | None = None,
                 latents_mean: tuple[float, ...] | None = None, latents_std: tuple[float, ...] | None = None,
                 force_upcast: bool = True, use_quant_conv: bool = True, use_post_quant_conv: bool = True,
                 mid_block_add_attention: bool = True, decoder_layers_per_block: int | None = None) -> None:
        super().__init__(in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
                         up_block_types=up_block_types, block_out_channels=block_out_channels,
                         layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
                         norm_num_groups=norm_num_groups, sample_size=sample_size, scaling_factor=scaling_factor,
                         shift_factor=shift_factor, latents_mean=latents_mean, latents_std=latents_std,
                         force_upcast=force_upcast, use_quant_conv=use_quant_conv,
                         use_post_quant_conv=use_post_quant_conv, mid_block_add_attention=mid_block_add_attention)
        if decoder_layers_per_block is not None and decoder_layers_per_block != layers_per_block:
            if decoder_layers_per_block < 0:
                raise ValueError(f"decoder_layers_per_block must be >= 0, got {decoder_layers_per_block}")
            self.decoder = Decoder(in_channels=latent_channels, out_channels=out_channels,
                                   up_block_types=up_block_types, block_out_channels=block_out_channels,
                                   layers_per_block=decoder_layers_per_block, norm_num_groups=norm_num_groups,
                                   act_fn=act_fn, mid_block_add_attention=mid_block_add_attention)


def with_decoder_depth(autoencoder: nn.Module, decoder_layers_per_block: int) -> AutoencoderKLSplitDepth:
    """A copy of a trained ``AutoencoderKL`` whose decoder up blocks hold ``decoder_layers_per_block + 1``
    residual blocks.

    The encoder, ``quant_conv``, the scaling factor and so the latent space are copied exactly; decoder tensors
    are copied where their name and shape still match (with fewer layers: every block's first residual blocks,
    the mid block, the input and output layers), the rest start as diffusers initialises them. The result is in
    the source's mode, dtype and device.
    """
    if not isinstance(autoencoder, AutoencoderKL):
        raise ValueError(f"a decoder depth can only be set on an AutoencoderKL, not {type(autoencoder).__name__}")
    config = {k: v for k, v in dict(autoencoder.config).items() if not k.startswith("_")}
    config["decoder_layers_per_block"] = int(decoder_layers_per_block)
    deeper = AutoencoderKLSplitDepth(**config)
    source, target = autoencoder.state_dict(), deeper.state_dict()
    deeper.load_state_dict({k: v for k, v in source.items() if k in target and target[k].shape == v.shape},
                           strict=False)
    missing = [k for k in target if k not in source or source[k].shape != target[k].shape]
    if any(not k.startswith(("decoder.", "post_quant_conv.")) for k in missing):
        raise ValueError(f"cannot copy the encoder side: {missing[:3]} ...")
    param = next(autoencoder.parameters())
    if param.dtype != next(deeper.parameters()).dtype:
        deeper = deeper.to(dtype=param.dtype)
    return deeper.to(param.device).train(autoencoder.training)
