"""PSNR and SSIM against scikit-image and hand values."""
from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from persistworld_env.metrics import psnr, ssim


def _pair(seed=0, shape=(48, 80, 3), noise=20):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, shape, dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-noise, noise + 1, shape), 0, 255).astype(np.uint8)
    return a, b


def test_psnr_hand_value_and_reference():
    a = np.zeros((12, 12, 3), np.uint8)
    b = np.full((12, 12, 3), 51, np.uint8)  # error 0.2 everywhere: MSE 0.04 -> 10 log10(25) dB
    assert psnr(a, b) == pytest.approx(10 * np.log10(25))
    x, y = _pair()
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x / 255, y / 255, data_range=1), rel=1e-9)
    assert psnr(x, x) == np.inf


def test_ssim_matches_scikit_image_gaussian_variant():
    for seed in range(3):
        x, y = _pair(seed, noise=10 + 20 * seed)
        ref = structural_similarity(x / 255, y / 255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=1, channel_axis=-1)
        assert ssim(x, y) == pytest.approx(ref, abs=1e-9)
    assert ssim(x, x) == pytest.approx(1.0)


def test_metrics_keep_leading_dims_and_reject_bad_input():
    x, y = _pair(shape=(2, 3, 24, 40, 3))
    assert psnr(x, y).shape == (2, 3) and ssim(x, y).shape == (2, 3)
    np.testing.assert_allclose(psnr(x, y)[1, 2], psnr(x[1, 2], y[1, 2]))
    with pytest.raises(TypeError, match="uint8"):
        psnr(x.astype(np.float32), y)
    with pytest.raises(ValueError, match="shape"):
        ssim(x[0], y[1, :2])
    with pytest.raises(ValueError, match="11x11"):
        ssim(x[..., :8, :8, :], y[..., :8, :8, :])


def test_ssim_hand_value_on_constant_images():
    # Constant images have no variance: SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1), C1 = 0.01^2.
    x, y = np.full((16, 16, 3), 51, np.uint8), np.full((16, 16, 3), 102, np.uint8)  # 0.2 and 0.4
    c1 = 0.01**2
    assert ssim(x, y) == pytest.approx((2 * 0.2 * 0.4 + c1) / (0.2**2 + 0.4**2 + c1), abs=1e-12)
