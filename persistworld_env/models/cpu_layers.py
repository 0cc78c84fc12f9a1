"""Drop-in subclasses of torch/diffusers layers that compute the same function faster on a CPU.

Each keeps its parent's parameters, state-dict keys and results (up to float rounding), changes only how the
work is laid out, and is installed by swapping the class of existing layers in place (``use_*`` below; the
attention processor through diffusers' ``set_attn_processor``), so saved weights, LoRA adapters and
``from_pretrained`` are unaffected. Figures: docs/benchmarks.md.

**Group norm of channels-last bfloat16 activations.** PyTorch's CPU ``group_norm`` over a channels-last
bfloat16 tensor is 4-18x slower than over the same tensor in the default layout when the image is small
(``H * W`` under 1024 pixels) and a group's channel count is not a multiple of 16 (torch 2.13 on this
project's CPUs). The autoencoder runs channels-last on a CPU because its convolutions are much faster that
way, and its decoder's middle resolutions (6x10 to 24x40 pixels, 2-8 channels per group) sit exactly in that
case: 45 % of a bfloat16 decode went into group norm. :class:`LayoutAwareGroupNorm` normalises such inputs in
the default layout and hands the result back channels-last; every other input takes the usual kernel. The
route depends on the input's shape, dtype and layout alone, so a rollout stays reproducible.

**Feed-forward layers over many tokens.** A transformer block's GEGLU feed-forward widens every token 8x; over
the 15,840 tokens of a batch-8 denoiser forward that intermediate (8 MB in bfloat16) leaves the cache and is
allocated afresh each call. :class:`RowChunkedFeedForward` runs the feed-forward on at most
:data:`CPU_FEED_FORWARD_ROWS` tokens at a time on a CPU (each token's output depends on that token alone):
the default denoiser's batch-8 forward 8-15 % faster, batch 1 unchanged (it has fewer tokens than that).

**Attention over a few keys in bfloat16.** PyTorch's fused CPU attention kernel works through its (batch, head)
problems one at a time; the denoiser's temporal attention is thousands of problems over 11 frames each, where
two batched matrix products and a softmax are faster in bfloat16 (:class:`PlainAttnProcessor`, the denoiser's
self-attention processor, routes through :func:`scaled_dot_product_attention`; float32 keeps the fused kernel).

**No division by one.** diffusers' residual block and attention processor divide their output by a rescale
factor that is 1 in every model here: a pass over the whole output that changes no value
(:class:`UnitScaleResnetBlock2D`, :class:`PlainAttnProcessor`). Results are bit-identical.

Together the last two make the default denoiser's batch-8 bfloat16 forward ~3 % faster and a bfloat16 decode
2.5-4 % faster; float32 results are bit-identical to diffusers' layers.

**Nearest 2x upsampling followed by a 3x3 convolution** (every up block of the autoencoder's decoder and of the
denoiser) is one stride-2 transposed convolution with a 4x4 kernel folded from the 3x3 one
(:func:`upsampling_conv_weight`): each output pixel reads 2x2 input pixels instead of 3x3 upsampled ones, 16/36
of the multiply-adds, and the 4x larger upsampled tensor is never written (:class:`FoldedUpsample2D`; any
device, same result up to float rounding).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

# ---------------------------------------------------------------------------------------------- group norm
#: Inputs with fewer pixels than this, and groups of a channel count that is not a multiple of
#: :data:`SLOW_GROUP_CHANNELS_MULTIPLE`, take the slow channels-last route of PyTorch's CPU kernel.
SLOW_MAX_PIXELS = 1024
SLOW_GROUP_CHANNELS_MULTIPLE = 16


def takes_slow_channels_last_route(x: torch.Tensor, num_groups: int) -> bool:
    """Whether ``F.group_norm`` on ``x`` would run PyTorch's slow CPU path for channels-last bfloat16 input.

    Not under CPU autocast, which runs group norm in float32 (a fast path in either layout).
    """
    return (x.device.type == "cpu" and x.dtype == torch.bfloat16 and x.dim() == 4
            and not torch.is_autocast_enabled("cpu")
            and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
            and x.shape[2] * x.shape[3] < SLOW_MAX_PIXELS
            and (x.shape[1] // num_groups) % SLOW_GROUP_CHANNELS_MULTIPLE != 0)


class LayoutAwareGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` that normalises inputs of :func:`takes_slow_channels_last_route` in the default layout."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not takes_slow_channels_last_route(x, self.num_groups):
            return super().forward(x)
        y = F.group_norm(x.contiguous(), self.num_groups, self.weight, self.bias, self.eps)
        return y.contiguous(memory_format=torch.channels_last)


def use_layout_aware_group_norm(module: nn.Module) -> int:
    """Turn every plain ``nn.GroupNorm`` inside ``module`` into a :class:`LayoutAwareGroupNorm`, in place.

    Parameters, buffers and state-dict keys are untouched. Returns how many layers were changed.
    """
    return _swap_class(module, nn.GroupNorm, LayoutAwareGroupNorm)


# ---------------------------------------------------------------------------------------------- feed-forward
#: Tokens per feed-forward call on a CPU (measured best of 1,024-8,192 for the default denoiser, both precisions).
CPU_FEED_FORWARD_ROWS = 4096


class RowChunkedFeedForward(FeedForward):
    """diffusers ``FeedForward`` applied to at most ``max_rows`` tokens at a time when its input is on a CPU.

    ``max_rows`` (class default :data:`CPU_FEED_FORWARD_ROWS`; None = one call) can be set per layer.
    """

    max_rows: int | None = CPU_FEED_FORWARD_ROWS

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        width = hidden_states.shape[-1]
        rows = hidden_states.numel() // max(width, 1)
        if hidden_states.device.type != "cpu" or self.max_rows is None or rows <= self.max_rows:
            return super().forward(hidden_states, *args, **kwargs)
        parts = [FeedForward.forward(self, part, *args, **kwargs)
                 for part in hidden_states.reshape(rows, width).split(self.max_rows)]
        out = torch.cat(parts)
        return out.reshape(*hidden_states.shape[:-1], out.shape[-1])


def use_row_chunked_feed_forward(module: nn.Module) -> int:
    """Turn every plain diffusers ``FeedForward`` inside ``module`` into a :class:`RowChunkedFeedForward`, in place.

    Returns how many layers were changed.
    """
    return _swap_class(module, FeedForward, RowChunkedFeedForward)


# ---------------------------------------------------------------------------------------------- attention
#: Keys up to which bfloat16 inference attention on a CPU runs as two matrix products and a softmax.
CPU_BF16_MATMUL_ATTENTION_MAX_KEYS = 16


def scaled_dot_product_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` over (..., L, d) heads, by the fastest route for the input.

    PyTorch's fused CPU kernel spends most of its time per (batch, head) problem; for bfloat16 inference over
    at most :data:`CPU_BF16_MATMUL_ATTENTION_MAX_KEYS` keys (the denoiser's temporal attention over 11 frames)
    two batched matrix products and a softmax are 15-30 % faster. Everything else (float32, training, other
    devices, longer sequences) takes ``F.scaled_dot_product_attention``.
    """
    if (query.device.type == "cpu" and query.dtype == torch.bfloat16 and not torch.is_grad_enabled()
            and key.shape[-2] <= CPU_BF16_MATMUL_ATTENTION_MAX_KEYS):
        scores = torch.matmul(query, key.transpose(-1, -2)) * query.shape[-1] ** -0.5
        return torch.matmul(torch.softmax(scores, dim=-1), value)
    return F.scaled_dot_product_attention(query, key, value)


class PlainAttnProcessor(AttnProcessor2_0):
    """diffusers ``AttnProcessor2_0`` for plain attention, computed through :func:`scaled_dot_product_attention`.

    Plain: (batch, tokens, dim) input, no mask, spatial or group norm, residual connection or extra arguments
    (the denoiser's self-attention); anything else takes the parent's code. Also skips dividing the output by
    a ``rescale_output_factor`` of 1. float32 results are bit-identical to the parent's.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, *args, **kw):
        if (args or kw or attention_mask is not None or hidden_states.ndim != 3 or attn.spatial_norm is not None
                or attn.group_norm is not None or attn.residual_connection):
            return super().__call__(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kw)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        batch = context.shape[0]
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query, key, value = (t.view(batch, -1, attn.heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)
        out = scaled_dot_product_attention(query, key, value)
        out = attn.to_out[1](attn.to_out[0](out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim)))
        return out if attn.rescale_output_factor == 1 else out / attn.rescale_output_factor


# ---------------------------------------------------------------------------------------------- residual blocks
class UnitScaleResnetBlock2D(ResnetBlock2D):
    """diffusers ``ResnetBlock2D`` that skips dividing its output by an ``output_scale_factor`` of 1.

    Dividing by one changes no value but reads and writes the block's whole output once more (6 % of a
    bfloat16 decode here). Blocks with another scale factor, an up/down-sampler, scale-shift time conditioning
    or a time embedding but no projection for it take the parent's forward.
    """

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args, **kwargs) -> torch.Tensor:
        if (args or kwargs or self.output_scale_factor != 1 or self.upsample is not None
                or self.downsample is not None or self.time_embedding_norm == "scale_shift"
                or (temb is not None and self.time_emb_proj is None)):
            return super().forward(input_tensor, temb, *args, **kwargs)
        hidden_states = self.conv1(self.nonlinearity(self.norm1(input_tensor)))
        if self.time_emb_proj is not None and self.time_embedding_norm == "default" and temb is not None:
            temb = temb if self.skip_time_act else self.nonlinearity(temb)
            hidden_states = hidden_states + self.time_emb_proj(temb)[:, :, None, None]
        hidden_states = self.nonlinearity(self.norm2(hidden_states))
        hidden_states = self.conv2(self.dropout(hidden_states))
        if self.conv_shortcut is not None:
            input_tensor = self.conv_shortcut(input_tensor.contiguous() if self.training else input_tensor)
        return input_tensor + hidden_states


def use_unit_scale_resnet_blocks(module: nn.Module) -> int:
    """Turn every plain ``ResnetBlock2D`` inside ``module`` into a :class:`UnitScaleResnetBlock2D`, in place.

    Returns how many layers were changed.
    """
    return _swap_class(module, ResnetBlock2D, UnitScaleResnetBlock2D)


# ---------------------------------------------------------------------------------------------- upsampling
#: Taps of the stride-2 transposed convolution (padding 1) equal to nearest 2x upsampling followed by a 3-tap
#: convolution (padding 1) with taps (k0, k1, k2): row u of this matrix gives tap u = (k2, k1 + k2, k0 + k1, k0).
UPSAMPLING_TAPS = ((0, 0, 1), (0, 1, 1), (1, 1, 0), (1, 0, 0))


def upsampling_conv_weight(weight: torch.Tensor) -> torch.Tensor:
    """The (C_in, C_out, 4, 4) weight of ``F.conv_transpose2d(x, w, stride=2, padding=1)`` that computes
    ``F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)`` for a (C_out, C_in, 3, 3)
    ``weight`` (folded in float32, returned in the weight's dtype; differentiable)."""
    taps = torch.tensor(UPSAMPLING_TAPS, dtype=torch.float32, device=weight.device)
    return torch.einsum("up,vq,oipq->iouv", taps, taps, weight.float()).to(weight.dtype)


class FoldedUpsample2D(Upsample2D):
    """diffusers ``Upsample2D`` computing nearest 2x upsampling and its 3x3 convolution as one transposed convolution.

    Plain case only: a 3x3 ``conv`` (padding 1, stride 1, no dilation or groups, not LoRA-wrapped), no norm, no
    transposed-convolution mode, output exactly twice the input size; anything else (e.g. the odd
    ``output_size`` a U-Net passes for a side of odd length) takes the parent's forward.
    """

    def forward(self, hidden_states: torch.Tensor, output_size=None, *args, **kwargs) -> torch.Tensor:
        conv = getattr(self, "conv", None)
        doubled = (2 * hidden_states.shape[-2], 2 * hidden_states.shape[-1])
        if (args or kwargs or self.norm is not None or self.use_conv_transpose or not self.use_conv
                or not self.interpolate or type(conv) is not nn.Conv2d or conv.kernel_size != (3, 3)
                or conv.padding != (1, 1) or conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1
                or conv.padding_mode != "zeros" or hidden_states.shape[1] != self.channels
                or (output_size is not None and tuple(output_size) != doubled)):
            return super().forward(hidden_states, output_size, *args, **kwargs)
        return F.conv_transpose2d(hidden_states, upsampling_conv_weight(conv.weight), conv.bias, stride=2, padding=1)


def use_folded_upsampling(module: nn.Module) -> int:
    """Turn every plain diffusers ``Upsample2D`` inside ``module`` into a :class:`FoldedUpsample2D`, in place.

    Returns how many layers were changed.
    """
    return _swap_class(module, Upsample2D, FoldedUpsample2D)


def _swap_class(module: nn.Module, parent: type, child: type) -> int:
    changed = 0
    for layer in module.modules():
        if type(layer) is parent:
            layer.__class__ = child
            changed += 1
    return changed
