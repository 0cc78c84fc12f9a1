"""Group normalisation of channels-last bfloat16 activations on a CPU, kept off a slow PyTorch kernel path.

PyTorch's CPU ``group_norm`` over a channels-last bfloat16 tensor is 4-18x slower than over the same tensor in
the default layout when the image is small (``H * W`` under 1024 pixels) and a group's channel count is not a
multiple of 16 (measured with torch 2.13 on this project's CPUs; ``docs/benchmarks.md``, "Group norm of
channels-last bfloat16 activations"). The autoencoder runs channels-last on a CPU because its convolutions are
much faster that way, and its decoder's middle resolutions (6x10 to 24x40 pixels, 2-8 channels per group) sit
exactly in that case: 45 % of a bfloat16 decode went into group norm. :class:`LayoutAwareGroupNorm` normalises
such inputs in the default layout and hands the result back channels-last; every other input takes the usual
kernel. Same function and parameters as ``nn.GroupNorm`` (the two routes differ by float rounding only); the
route depends on the input's shape, dtype and layout alone, so a rollout stays reproducible.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

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
    changed = 0
    for layer in module.modules():
        if type(layer) is nn.GroupNorm:
            layer.__class__ = LayoutAwareGroupNorm
            changed += 1
    return changed
