"""The world model's denoiser: SVD's spatio-temporal UNet with one action token per frame, EDM-preconditioned.

Frames: 6 sparse history frames then a 5-frame clip (frame 0 re-predicts the current frame, 4 are new).
UNet input = 2C channels: the (history | noisy clip) latents concatenated with the current-frame latent
repeated over all 11 frames. Views are stacked along latent height.

Per-frame conditioning follows Ctrl-World: the spatial cross-attention of frame f sees only token f; the
temporal cross-attention sees frame 0's token (diffusers' stock behaviour for a per-frame context). It is
implemented with attention processors on the stock diffusers UNet, so its weights and key names stay
those of ``UNetSpatioTemporalConditionModel``.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields
from typing import Sequence

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0
from torch import nn

from persistworld_env.constants import NUM_CLIP_FRAMES, NUM_HISTORY_FRAMES
from persistworld_env.diffusion.edm import denoise
from persistworld_env.models.cpu_layers import (PlainAttnProcessor, use_folded_upsampling,
                                                use_row_chunked_feed_forward, use_unit_scale_resnet_blocks)
from persistworld_env.models.conditioning import MINIDROID_VOCABULARY, ActionEncoder, InstructionEmbedding


@dataclass
class DenoiserConfig:
    """Architecture of the denoiser (stored as JSON with every model)."""

    latent_channels: int = 4
    block_out_channels: tuple[int, ...] = (32, 64, 64)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                                         "DownBlockSpatioTemporal")
    up_block_types: tuple[str, ...] = ("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                                       "CrossAttnUpBlockSpatioTemporal")
    layers_per_block: int = 1
    num_attention_heads: tuple[int, ...] = (2, 4, 4)
    token_dim: int = 64
    addition_time_embed_dim: int = 8
    num_history: int = NUM_HISTORY_FRAMES
    num_clip: int = NUM_CLIP_FRAMES
    instruction_vocabulary: tuple[str, ...] = MINIDROID_VOCABULARY
    #: SVD's micro-conditioning (fps, motion bucket, noise augmentation), constant here as in Ctrl-World.
    added_time_ids: tuple[float, ...] = (7.0, 127.0, 0.0)
    #: Factor on the current-frame conditioning latent (Ctrl-World divides by the VAE scaling factor).
    cond_latent_scale: float = 1.0
    #: Denoise the clip as a change from the current frame: the EDM preconditioning runs on
    #: x - current and the estimate is current + (denoised change), so a still scene costs the network
    #: nothing. Seen from outside it is still an x0 predictor (same loss, same sampler).
    residual_to_current: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def num_frames(self) -> int:
        return self.num_history + self.num_clip

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DenoiserConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown denoiser config keys {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


#: Named scales (DESIGN.md section 4).
DENOISER_SCALES: dict[str, DenoiserConfig] = {
    "tiny": DenoiserConfig(block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlockSpatioTemporal",
                           "DownBlockSpatioTemporal"), up_block_types=("UpBlockSpatioTemporal",
                           "CrossAttnUpBlockSpatioTemporal"), num_attention_heads=(2, 2), token_dim=32),
    "default": DenoiserConfig(residual_to_current=True),
    "ctrl-world": DenoiserConfig(
        block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
        up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
        layers_per_block=2, num_attention_heads=(5, 10, 20, 20), token_dim=1024, addition_time_embed_dim=256,
        instruction_vocabulary=(), cond_latent_scale=1 / 0.18215),
}


#: Parameters the frame-token cross-attention never uses: each query attends to one key, which softmax weighs 1
#: whatever the query and key projections are (see :class:`FrameTokenAttnProcessor`), so the query, its key and
#: the layer norm that only feeds the query (``norm2``) do not affect the output. Trainers leave them frozen.
INERT_PARAMETERS = re.compile(r"transformer_blocks\.\d+\.(norm2|attn2\.to_q|attn2\.to_k)\.")


class FrameTokenAttnProcessor(AttnProcessor2_0):
    """Cross-attention that picks one token of a per-frame context.

    ``mode="per_frame"`` (spatial blocks, rows ordered batch-major as b*F + f): row b*F + f attends to
    token f. ``mode="first"`` (temporal blocks): every row attends to token 0 only.

    Attending to a single key, softmax gives that key weight 1 whatever the query, so the output is the
    token's value, projected out, at every position: ``to_out(to_v(token))``. That is computed directly,
    skipping the query and key projections and the attention kernel (the same function and gradients, up
    to float rounding; about 7 % of the default denoiser's CPU time at batch 8, docs/benchmarks.md).
    """

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in ("per_frame", "first"):
            raise ValueError(f"mode must be 'per_frame' or 'first', got {mode!r}")
        self.mode = mode

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        if encoder_hidden_states is None:
            return super().__call__(attn, hidden_states, None, attention_mask, temb, *args, **kw)
        if self.mode == "per_frame":
            rows = torch.arange(encoder_hidden_states.shape[0], device=encoder_hidden_states.device)
            token = encoder_hidden_states[rows, rows % encoder_hidden_states.shape[1]][:, None]
        else:
            token = encoder_hidden_states[:, :1]
        if (attention_mask is not None or args or kw or hidden_states.ndim != 3 or attn.spatial_norm is not None
                or attn.group_norm is not None):
            return super().__call__(attn, hidden_states, token, attention_mask, temb, *args, **kw)
        return single_key_attention(attn, hidden_states, token)


def single_key_attention(attn, hidden_states: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
    """diffusers ``Attention`` of ``hidden_states`` (B, S, D) over one key ``token`` (B, 1, d): softmax over a
    single key is 1, so every position receives the token's projected value."""
    if attn.norm_cross:
        token = attn.norm_encoder_hidden_states(token)
    out = attn.to_out[1](attn.to_out[0](attn.to_v(token)))  # (B, 1, D)
    out = out.expand(-1, hidden_states.shape[1], -1)
    if attn.residual_connection:
        out = out + hidden_states
    return out / attn.rescale_output_factor


def install_frame_token_processors(unet: UNetSpatioTemporalConditionModel) -> None:
    """Route per-frame tokens: spatial cross-attention per frame, temporal cross-attention to frame 0."""
    processors = {}
    for name in unet.attn_processors:
        if name.endswith("attn2.processor"):
            mode = "first" if ".temporal_transformer_blocks." in name else "per_frame"
            processors[name] = FrameTokenAttnProcessor(mode)
        else:
            processors[name] = PlainAttnProcessor()
    unet.set_attn_processor(processors)


class WorldModelDenoiser(nn.Module):
    """x0-predicting denoiser of a clip's latents given sparse history, the current frame and poses."""

    def __init__(self, config: DenoiserConfig) -> None:
        super().__init__()
        self.config = config
        c = config.latent_channels
        self.unet = UNetSpatioTemporalConditionModel(
            in_channels=2 * c, out_channels=c,
            down_block_types=tuple(config.down_block_types), up_block_types=tuple(config.up_block_types),
            block_out_channels=tuple(config.block_out_channels), layers_per_block=config.layers_per_block,
            num_attention_heads=tuple(config.num_attention_heads), cross_attention_dim=config.token_dim,
            addition_time_embed_dim=config.addition_time_embed_dim,
            projection_class_embeddings_input_dim=3 * config.addition_time_embed_dim,
            num_frames=config.num_frames,
        )
        install_frame_token_processors(self.unet)
        use_row_chunked_feed_forward(self.unet)  # same function; cache-sized feed-forward calls on a CPU
        use_unit_scale_resnet_blocks(self.unet)  # same function; no division by one
        use_folded_upsampling(self.unet)  # same function; upsampling and its convolution in one
        self.action_encoder = ActionEncoder(config.token_dim)
        self.instruction_embedding = (InstructionEmbedding(config.instruction_vocabulary, config.token_dim)
                                      if config.instruction_vocabulary else None)
        self.register_buffer("added_time_ids", torch.tensor(config.added_time_ids, dtype=torch.float32),
                             persistent=False)

    def inert_parameters(self) -> list[nn.Parameter]:
        """The cross-attention's query/key projections and query norm (:data:`INERT_PARAMETERS`): they never affect
        the output, so they get no gradient; freeze them (``requires_grad_(False)``) when training, e.g. under DDP."""
        return [p for name, p in self.named_parameters() if INERT_PARAMETERS.search(name)]

    @property
    def dtype(self) -> torch.dtype:
        """The weights' floating-point type (float32 unless the model was loaded or converted to half precision)."""
        return next(self.unet.parameters()).dtype

    def tokens(self, poses: torch.Tensor, instructions: Sequence[str] | None = None,
               drop: torch.Tensor | None = None) -> torch.Tensor:
        """Per-frame tokens (B, F, d) from normalised poses (B, F, 7); ``drop`` (B,) zeroes a sample's tokens."""
        tokens = self.action_encoder(poses.to(self.dtype))
        if self.instruction_embedding is not None and instructions is not None:
            tokens = tokens + self.instruction_embedding(instructions)[:, None]
        if drop is not None:
            tokens = tokens * (~drop).to(tokens.dtype)[:, None, None]
        return tokens

    def network(self, history: torch.Tensor, clip_in: torch.Tensor, c_noise: torch.Tensor,
                current: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Raw UNet output F for the clip frames. Shapes: history (B,6,C,H,W), clip_in (B,5,C,H,W), current (B,C,H,W)."""
        dtype = self.dtype  # the weights' precision; the sampler and the EDM preconditioning stay in the inputs' own
        frames = torch.cat([history, clip_in], dim=1).to(dtype)
        cond = (current.to(dtype) * self.config.cond_latent_scale)[:, None].expand(-1, frames.shape[1], -1, -1, -1)
        added = self.added_time_ids.to(dtype)[None].expand(frames.shape[0], -1)
        out = self.unet(torch.cat([frames, cond], dim=2), c_noise, encoder_hidden_states=tokens.to(dtype),
                        added_time_ids=added).sample
        return out[:, self.config.num_history:].to(clip_in.dtype)

    def forward(self, noisy_clip: torch.Tensor, sigma: torch.Tensor, history: torch.Tensor, current: torch.Tensor,
                tokens: torch.Tensor | None = None, poses: torch.Tensor | None = None,
                instructions: Sequence[str] | None = None, drop: torch.Tensor | None = None) -> torch.Tensor:
        """EDM x0 estimate of the clip: c_skip x + c_out F(history | c_in x, c_noise).

        Conditioning is either ready ``tokens`` (B, 11, d) or ``poses`` (+ ``instructions``, ``drop``) to
        encode here (so that a distributed wrapper sees the action encoder inside its forward).
        """
        if tokens is None:
            if poses is None:
                raise ValueError("pass either tokens or poses")
            tokens = self.tokens(poses, instructions, drop)
        expected = (self.config.num_history, self.config.num_clip)
        if history.shape[1] != expected[0] or noisy_clip.shape[1] != expected[1]:
            raise ValueError(f"expected {expected[0]} history and {expected[1]} clip frames, "
                             f"got {history.shape[1]} and {noisy_clip.shape[1]}")
        if tokens.shape[1] != self.config.num_frames:
            raise ValueError(f"expected {self.config.num_frames} tokens (one per frame), got {tokens.shape[1]}")
        def network(x_in: torch.Tensor, c_noise: torch.Tensor) -> torch.Tensor:
            return self.network(history, x_in, c_noise, current, tokens)

        if not self.config.residual_to_current:
            return denoise(network, noisy_clip, sigma)
        anchor = current[:, None]
        return anchor + denoise(network, noisy_clip - anchor, sigma)
