"""CPU layers: the layout-aware group norm (which inputs avoid PyTorch's slow channels-last bfloat16 route; both
routes compute ``nn.GroupNorm``'s function, checked against a float64 hand computation), the row-chunked
feed-forward (same outputs and gradients as diffusers' ``FeedForward``, also inside the denoiser with LoRA), the
attention routes (against a float64 hand computation; float32 bit-identical to diffusers' processor), the
residual blocks without a division by one (bit-identical to diffusers' ``ResnetBlock2D``) and the folded upsampling
(against a float64 hand computation of nearest upsampling and a 3x3 convolution, and diffusers' ``Upsample2D``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention import FeedForward
from diffusers.models.attention_processor import Attention, AttnProcessor2_0
from diffusers.models.resnet import ResnetBlock2D
from diffusers.models.upsampling import Upsample2D
from torch import nn

from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.models.autoencoder import build_autoencoder
from persistworld_env.models.cpu_layers import (
    CPU_BF16_MATMUL_ATTENTION_MAX_KEYS, CPU_FEED_FORWARD_ROWS, FoldedUpsample2D, LayoutAwareGroupNorm,
    PlainAttnProcessor, RowChunkedFeedForward, UnitScaleResnetBlock2D, scaled_dot_product_attention,
    takes_slow_channels_last_route, upsampling_conv_weight, use_folded_upsampling, use_layout_aware_group_norm,
    use_row_chunked_feed_forward, use_unit_scale_resnet_blocks,
)
from persistworld_env.models.image_codec import LatentCodec
from persistworld_env.models.lora import PolicyWeights
from persistworld_env.models.world_model import WorldModel

CL = torch.channels_last


def hand_group_norm(x: torch.Tensor, groups: int, weight: torch.Tensor, bias: torch.Tensor, eps: float):
    """(x - mean) / sqrt(var + eps) * weight + bias over each sample's groups of channels, in float64."""
    n, c, h, w = x.shape
    g = x.double().reshape(n, groups, -1)
    mean = g.mean(-1, keepdim=True)
    var = ((g - mean) ** 2).mean(-1, keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    return y * weight.double()[:, None, None] + bias.double()[:, None, None]


def layer(channels: int, groups: int = 8, dtype=torch.bfloat16) -> nn.GroupNorm:
    torch.manual_seed(1)
    norm = nn.GroupNorm(groups, channels)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    use_layout_aware_group_norm(norm)
    return norm.to(dtype)


@pytest.mark.parametrize("shape, dtype, layout, slow", [
    ((2, 32, 24, 40), torch.bfloat16, CL, True),            # 4 channels per group, 960 pixels
    ((2, 64, 6, 10), torch.bfloat16, CL, True),             # the decoder's smallest level
    ((2, 192, 24, 40), torch.bfloat16, CL, True),           # 24 channels per group: not a multiple of 16
    ((2, 128, 24, 40), torch.bfloat16, CL, False),          # 16 channels per group
    ((2, 32, 32, 32), torch.bfloat16, CL, False),           # 1024 pixels
    ((2, 32, 24, 40), torch.float32, CL, False),            # float32: the kernel is fine
    ((2, 32, 24, 40), torch.bfloat16, torch.contiguous_format, False),
])
def test_which_inputs_take_the_slow_route(shape, dtype, layout, slow):
    x = torch.zeros(shape, dtype=dtype).contiguous(memory_format=layout)
    assert takes_slow_channels_last_route(x, 8) is slow


@pytest.mark.parametrize("shape", [(3, 32, 24, 40), (3, 128, 6, 10), (2, 16, 48, 80)])
def test_both_routes_compute_group_norm(shape):
    norm = layer(shape[1])
    torch.manual_seed(2)
    x = (torch.randn(shape) * 3 + 1).to(torch.bfloat16).contiguous(memory_format=CL)
    y = norm(x)
    expected = hand_group_norm(x, 8, norm.weight, norm.bias, norm.eps)
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=CL)
    # bfloat16 keeps 8 significant bits: outputs of magnitude ~5 round by up to ~0.03
    torch.testing.assert_close(y.double(), expected, rtol=1e-2, atol=5e-2)
    plain = nn.functional.group_norm(x.contiguous(), 8, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y.contiguous().double(), plain.double(), rtol=1e-2, atol=5e-2)


def test_float32_output_matches_group_norm_exactly():
    norm = layer(32, dtype=torch.float32)
    x = torch.randn(2, 32, 24, 40).contiguous(memory_format=CL)
    plain = nn.functional.group_norm(x, 8, norm.weight, norm.bias, norm.eps)
    assert torch.equal(norm(x), plain)
    expected = hand_group_norm(x, 8, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(norm(x).double(), expected, rtol=1e-4, atol=1e-5)


def test_gradients_flow_through_the_default_layout_route():
    norm = layer(32)
    x = torch.randn(2, 32, 24, 40).to(torch.bfloat16).contiguous(memory_format=CL).requires_grad_()
    assert takes_slow_channels_last_route(x, 8)
    norm(x).float().square().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None and torch.isfinite(x.grad.float()).all()


def test_conversion_keeps_parameters_and_state_dict():
    torch.manual_seed(0)
    autoencoder = build_autoencoder("tiny")
    before = {k: v.clone() for k, v in autoencoder.state_dict().items()}
    count = sum(type(m) is nn.GroupNorm for m in autoencoder.modules())
    assert count > 0 and use_layout_aware_group_norm(autoencoder) == count
    assert use_layout_aware_group_norm(autoencoder) == 0  # already converted
    after = autoencoder.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert all(isinstance(m, LayoutAwareGroupNorm) for m in autoencoder.modules() if isinstance(m, nn.GroupNorm))


def test_channels_last_codec_uses_layout_aware_norms_and_decodes_alike():
    torch.manual_seed(0)
    autoencoder = build_autoencoder("tiny")
    reference = LatentCodec(build_autoencoder("tiny"))
    reference.autoencoder.load_state_dict(autoencoder.state_dict())
    fast = LatentCodec(autoencoder.to(torch.bfloat16), channels_last=True)
    assert any(isinstance(m, LayoutAwareGroupNorm) for m in fast.autoencoder.modules())
    assert not any(isinstance(m, LayoutAwareGroupNorm) for m in reference.autoencoder.modules())
    z = torch.randn(4, reference.latent_channels, 6, 10)
    torch.testing.assert_close(fast.decode_images(z), reference.decode_images(z), rtol=0, atol=0.1)


def test_autocast_keeps_the_usual_kernel():
    x = torch.zeros(2, 32, 24, 40, dtype=torch.bfloat16).contiguous(memory_format=CL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not takes_slow_channels_last_route(x, 8)


def feed_forward_pair(dim: int = 12) -> tuple[FeedForward, RowChunkedFeedForward]:
    torch.manual_seed(3)
    plain = FeedForward(dim, activation_fn="geglu")
    chunked = FeedForward(dim, activation_fn="geglu")
    chunked.load_state_dict(plain.state_dict())
    assert use_row_chunked_feed_forward(chunked) == 1 and isinstance(chunked, RowChunkedFeedForward)
    chunked.max_rows = 7
    return plain, chunked


def test_row_chunked_feed_forward_gives_the_same_outputs_and_gradients():
    plain, chunked = feed_forward_pair()
    x = torch.randn(3, 10, 12)  # 30 rows: 4 calls of at most 7 rows, the last one of 2
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1), chunked(x2)
    assert y2.shape == y1.shape == (3, 10, 12)
    torch.testing.assert_close(y2, y1, rtol=1e-6, atol=1e-6)
    (y1 * y1).sum().backward()
    (y2 * y2).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-6)
    for (name, p1), p2 in zip(plain.named_parameters(), chunked.parameters()):
        torch.testing.assert_close(p2.grad, p1.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_row_chunked_feed_forward_calls_the_layers_in_chunks_only_past_the_limit():
    _, chunked = feed_forward_pair()
    sizes = []
    chunked.net[0].register_forward_hook(lambda mod, inp, out: sizes.append(inp[0].shape[0]))
    chunked(torch.randn(30, 12))
    chunked(torch.randn(1, 7, 12))  # 7 rows: one call, shape unchanged
    chunked.max_rows = None
    chunked(torch.randn(30, 12))
    assert sizes[:4] == [7, 7, 7, 7] and sizes[4:] == [2, 1, 30]
    assert RowChunkedFeedForward.max_rows == CPU_FEED_FORWARD_ROWS


def test_denoiser_feed_forwards_are_row_chunked_and_match_with_lora():
    torch.manual_seed(0)
    normalizer = PoseNormalizer(low=np.full(7, -1.0), high=np.full(7, 1.0))
    denoiser = WorldModel.build("tiny", normalizer, height=24, width=40).denoiser
    layers = [m for m in denoiser.modules() if isinstance(m, FeedForward)]
    assert layers and all(isinstance(m, RowChunkedFeedForward) for m in layers)
    PolicyWeights(denoiser, lora_root=denoiser.unet, lora_rank=2)  # adapters on the feed-forward projections too
    lora_b = [p for n, p in denoiser.named_parameters() if "lora_B" in n and ".ff." in n]
    assert lora_b
    with torch.no_grad():
        for p in lora_b:  # peft starts B at zero; make the adapters count
            p.normal_(0, 0.1)
    g = torch.Generator().manual_seed(0)
    c = denoiser.config.latent_channels
    args = (torch.randn(2, 5, c, 9, 5, generator=g), torch.full((2,), 2.0), torch.randn(2, 6, c, 9, 5, generator=g),
            torch.randn(2, c, 9, 5, generator=g))
    poses = torch.rand(2, denoiser.config.num_frames, 7, generator=g) * 2 - 1
    with torch.no_grad():
        for m in layers:
            m.max_rows = None
        whole = denoiser(*args, poses=poses)
        for m in layers:
            m.max_rows = 16
        chunked = denoiser(*args, poses=poses)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------- attention
def hand_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(d)) v in float64, written out with exponentials."""
    q, k, v = q.double(), k.double(), v.double()
    scores = torch.einsum("...qd,...kd->...qk", q, k) / np.sqrt(q.shape[-1])
    weights = torch.exp(scores - scores.amax(-1, keepdim=True))
    return torch.einsum("...qk,...kd->...qd", weights / weights.sum(-1, keepdim=True), v)


@pytest.mark.parametrize("keys, dtype, grad, atol", [
    (11, torch.bfloat16, False, 0.03),     # the matrix-product route
    (CPU_BF16_MATMUL_ATTENTION_MAX_KEYS + 1, torch.bfloat16, False, 0.03),  # PyTorch's fused kernel
    (11, torch.bfloat16, True, 0.03),      # training: the fused kernel
    (11, torch.float32, False, 1e-5),
])
def test_attention_routes_compute_attention(keys, dtype, grad, atol):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(6, 2, n, 16, generator=g) for n in (9, keys, keys))
    with torch.set_grad_enabled(grad):
        out = scaled_dot_product_attention(q.to(dtype), k.to(dtype), v.to(dtype))
    assert out.shape == (6, 2, 9, 16) and out.dtype == dtype
    torch.testing.assert_close(out.double(), hand_attention(q.to(dtype), k.to(dtype), v.to(dtype)), rtol=0, atol=atol)


def attention_layer(cross_dim: int | None = None) -> tuple[Attention, Attention]:
    torch.manual_seed(4)
    plain = Attention(32, cross_attention_dim=cross_dim, heads=2, dim_head=16, processor=AttnProcessor2_0())
    ours = Attention(32, cross_attention_dim=cross_dim, heads=2, dim_head=16, processor=PlainAttnProcessor())
    ours.load_state_dict(plain.state_dict())
    return plain, ours


@pytest.mark.parametrize("cross_dim", [None, 24])
def test_plain_attention_processor_matches_diffusers_bit_for_bit_in_float32(cross_dim):
    plain, ours = attention_layer(cross_dim)
    x = torch.randn(3, 10, 32)
    context = None if cross_dim is None else torch.randn(3, 7, cross_dim)
    with torch.no_grad():
        assert torch.equal(ours(x, context), plain(x, context))
    mask = torch.ones(3, 10 if context is None else 7, dtype=torch.bool)
    mask[:, -2:] = False  # a mask takes diffusers' own code
    with torch.no_grad():
        assert torch.equal(ours(x, context, attention_mask=mask), plain(x, context, attention_mask=mask))


# ---------------------------------------------------------------------------------------------- residual blocks
@pytest.mark.parametrize("in_ch, out_ch, temb_ch, scale", [(16, 16, None, 1.0), (16, 24, 12, 1.0), (16, 24, 12, 2.0)])
def test_unit_scale_resnet_block_is_diffusers_block_bit_for_bit(in_ch, out_ch, temb_ch, scale):
    torch.manual_seed(5)
    plain = ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=temb_ch, groups=8,
                          output_scale_factor=scale)
    ours = ResnetBlock2D(in_channels=in_ch, out_channels=out_ch, temb_channels=temb_ch, groups=8,
                         output_scale_factor=scale)
    ours.load_state_dict(plain.state_dict())
    assert use_unit_scale_resnet_blocks(ours) == 1 and isinstance(ours, UnitScaleResnetBlock2D)
    x = torch.randn(2, in_ch, 6, 10)
    temb = None if temb_ch is None else torch.randn(2, temb_ch)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1, temb), ours(x2, temb)
    assert torch.equal(y2, y1)
    y1.square().sum().backward()
    y2.square().sum().backward()
    assert torch.equal(x2.grad, x1.grad)
    with torch.no_grad():
        assert torch.equal(ours.to(torch.bfloat16)(x.bfloat16(), None if temb is None else temb.bfloat16()),
                           plain.to(torch.bfloat16)(x.bfloat16(), None if temb is None else temb.bfloat16()))


# ---------------------------------------------------------------------------------------------- upsampling
def hand_upsample_conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Nearest 2x upsampling, then a 3x3 convolution with zero padding 1, by loops in float64."""
    up = np.repeat(np.repeat(x, 2, axis=2), 2, axis=3)
    n, _, h, wd = up.shape
    padded = np.pad(up, ((0, 0), (0, 0), (1, 1), (1, 1)))
    out = np.zeros((n, w.shape[0], h, wd)) + b[None, :, None, None]
    for dy in range(3):
        for dx in range(3):
            out += np.einsum("oc,nchw->nohw", w[:, :, dy, dx], padded[:, :, dy:dy + h, dx:dx + wd])
    return out


def test_folded_upsampling_weight_is_nearest_upsampling_then_the_convolution():
    torch.manual_seed(6)
    x, w, b = torch.randn(2, 3, 5, 4, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64), torch.randn(4)
    folded = torch.nn.functional.conv_transpose2d(x, upsampling_conv_weight(w.float()).double(), b.double(),
                                                  stride=2, padding=1)
    np.testing.assert_allclose(folded.numpy(), hand_upsample_conv(x.numpy(), w.numpy(), b.double().numpy()),
                               rtol=1e-6, atol=1e-5)
    assert upsampling_conv_weight(w.float()).shape == (3, 4, 4, 4)


@pytest.mark.parametrize("layout", [torch.contiguous_format, CL])
def test_folded_upsample_block_matches_diffusers_outputs_and_gradients(layout):
    torch.manual_seed(7)
    plain = Upsample2D(8, use_conv=True, out_channels=6)
    ours = Upsample2D(8, use_conv=True, out_channels=6)
    ours.load_state_dict(plain.state_dict())
    assert use_folded_upsampling(ours) == 1 and isinstance(ours, FoldedUpsample2D)
    assert ours.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 8, 6, 10).contiguous(memory_format=layout)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y1, y2 = plain(x1), ours(x2)
    torch.testing.assert_close(y2, y1, rtol=1e-5, atol=1e-5)
    y1.square().sum().backward()
    y2.square().sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.conv.weight.grad, plain.conv.weight.grad, rtol=1e-4, atol=1e-4)
    with torch.no_grad():  # a U-Net's odd output size is not a doubling: the parent's interpolation
        torch.testing.assert_close(ours(x, output_size=(11, 19)), plain(x, output_size=(11, 19)))
        torch.testing.assert_close(ours(x, output_size=(12, 20)), plain(x), rtol=1e-5, atol=1e-5)


def test_upsampling_without_a_convolution_keeps_the_parents_forward():
    plain, ours = Upsample2D(4, use_conv=False), Upsample2D(4, use_conv=False)
    use_folded_upsampling(ours)
    x = torch.randn(1, 4, 3, 5)
    assert torch.equal(ours(x), plain(x))


def test_models_use_the_faster_layers():
    normalizer = PoseNormalizer(low=np.full(7, -1.0), high=np.full(7, 1.0))
    model = WorldModel.build("tiny", normalizer, height=24, width=40)
    blocks = [m for m in model.modules() if isinstance(m, ResnetBlock2D)]
    assert blocks and all(isinstance(m, UnitScaleResnetBlock2D) for m in blocks)
    processors = model.denoiser.unet.attn_processors
    assert sum(isinstance(p, PlainAttnProcessor) for p in processors.values()) == len(processors) // 2
    upsamplers = [m for m in model.modules() if isinstance(m, Upsample2D)]
    assert upsamplers and all(isinstance(m, FoldedUpsample2D) for m in upsamplers)
