"""Drop-in subclasses of torch/diffusers layers that compute the same function faster on a CPU.

Each keeps its parent's parameters, state-dict keys and results (up to float rounding), changes only how the
work is laid out, and is installed by swapping the class of existing layers in place (``use_*`` below), so
saved weights, LoRA adapters and ``from_pretrained`` are unaffected. Figures: docs/benchmarks.md.

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
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.models.attention import FeedForward
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


def _swap_class(module: nn.Module, parent: type, child: type) -> int:
    changed = 0
    for layer in module.modules():
        if type(layer) is parent:
            layer.__class__ = child
            changed += 1
    return changed
