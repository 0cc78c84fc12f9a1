"""Image fidelity metrics on uint8 frames (DESIGN.md section 6): PSNR (data range 1) and SSIM, and the
PSNR of a region (the pixels of a mask, e.g. where the scene moves: :func:`moving_region`).

SSIM follows Wang et al. (2004): Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03, computed per
colour channel over the valid region and averaged; it equals scikit-image's ``structural_similarity``
with ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1``.
Both functions reduce the last three axes (H, W, 3) and keep any leading ones.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_C1, _C2 = 0.01**2, 0.03**2


def _to_unit_float(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    if x.dtype != torch.uint8:
        raise TypeError(f"expected uint8 images, got {x.dtype}")
    return x.double() / 255.0


def psnr(pred, target) -> np.ndarray:
    """PSNR in dB of uint8 images (..., H, W, 3) with data range 1; identical images give inf."""
    p, t = _to_unit_float(pred), _to_unit_float(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {tuple(p.shape)} vs {tuple(t.shape)}")
    mse = ((p - t) ** 2).flatten(-3).mean(-1)
    return (10 * torch.log10(1.0 / mse)).numpy()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def ssim(pred, target) -> np.ndarray:
    """Mean SSIM of uint8 images (..., H, W, 3) (see module docstring)."""
    p, t = _to_unit_float(pred), _to_unit_float(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {tuple(p.shape)} vs {tuple(t.shape)}")
    lead, (h, w) = p.shape[:-3], p.shape[-3:-1]
    x = p.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    y = t.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    return ssim_torch(x, y).mean(1).reshape(lead).numpy()


def ssim_torch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM per image and channel, ``(N, C)``, of float images ``(N, C, H, W)`` with data range 1; differentiable
    (a training loss: ``1 - ssim_torch(x, y).mean()``). :func:`ssim` is its mean over the channels of uint8 frames."""
    n, c, h, w = x.shape
    if min(h, w) < 11:
        raise ValueError(f"SSIM needs images of at least 11x11, got {h}x{w}")
    x, y = x.reshape(n * c, 1, h, w), y.reshape(n * c, 1, h, w)
    g = _gaussian_window().to(x.dtype)

    def blur(z):
        return F.conv2d(F.conv2d(z, g.reshape(1, 1, 1, -1)), g.reshape(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    s = ((2 * mx * my + _C1) * (2 * cxy + _C2)) / ((mx**2 + my**2 + _C1) * (vx + vy + _C2))
    return s.flatten(1).mean(1).reshape(n, c)


def moving_region(frames, previous, threshold: float = 12.0, dilation: int = 2) -> np.ndarray:
    """Where a clip changes: pixels whose colour moves by more than ``threshold`` (of 255, in any channel)
    from ``previous`` in any of the clip's frames, grown by ``dilation`` pixels (a square neighbourhood).

    Args:
        frames: uint8 (..., F, H, W, 3), a clip.
        previous: uint8 (..., H, W, 3), the frame before it.
    Returns bool (..., H, W).
    """
    x, p = _to_unit_float(frames), _to_unit_float(previous)
    if x.shape[:-4] + x.shape[-3:] != p.shape:
        raise ValueError(f"frames (..., F, H, W, 3) {tuple(x.shape)} and previous (..., H, W, 3) {tuple(p.shape)} "
                         "do not match")
    changed = ((x - p.unsqueeze(-4)).abs().amax(dim=(-4, -1)) * 255.0 > threshold).double()
    if dilation > 0:
        lead, (h, w) = changed.shape[:-2], changed.shape[-2:]
        flat = changed.reshape(-1, 1, h, w)
        changed = F.max_pool2d(flat, 2 * dilation + 1, stride=1, padding=dilation).reshape(*lead, h, w)
    return changed.bool().numpy()


def region_psnr(pred, target, mask) -> np.ndarray:
    """PSNR in dB over the pixels of ``mask`` of uint8 clips (..., F, H, W, 3): one MSE over the clip's frames,
    channels and masked pixels; ``mask`` bool (..., H, W). NaN where the mask is empty, inf where exact."""
    p, t = _to_unit_float(pred), _to_unit_float(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch {tuple(p.shape)} vs {tuple(t.shape)}")
    m = torch.as_tensor(np.asarray(mask, dtype=bool)).double()
    if p.shape[:-4] + p.shape[-3:-1] != m.shape:
        raise ValueError(f"mask {tuple(m.shape)} does not match clips {tuple(p.shape)}")
    squared = ((p - t) ** 2).sum(dim=(-4, -1))  # (..., H, W), summed over frames and channels
    count = m.sum(dim=(-2, -1)) * p.shape[-4] * p.shape[-1]
    mse = (squared * m).sum(dim=(-2, -1)) / count
    return (10 * torch.log10(1.0 / mse)).numpy()
