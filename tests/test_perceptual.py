"""LPIPS backbone policy: real weights from a local file, explicit opt-ins, never a silent fallback."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from persistworld_env.perceptual import LPIPSWeightsMissing, build_lpips


def _images(seed: int, shape=(2, 3, 32, 32, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_real_mode_without_weights_stops_with_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("PERSISTWORLD_ALEXNET_WEIGHTS", raising=False)
    with pytest.raises(LPIPSWeightsMissing, match="--lpips random"):
        build_lpips("real")


def test_a_missing_weights_file_is_an_error_even_when_another_one_exists(monkeypatch, tmp_path):
    from persistworld_env.perceptual import find_alexnet_weights

    (tmp_path / "other.pth").write_bytes(b"")
    monkeypatch.setenv("PERSISTWORLD_ALEXNET_WEIGHTS", str(tmp_path / "other.pth"))
    with pytest.raises(LPIPSWeightsMissing, match="typo.pth"):
        find_alexnet_weights(tmp_path / "typo.pth")
    assert find_alexnet_weights() == tmp_path / "other.pth"


def test_real_mode_loads_a_local_torchvision_checkpoint(tmp_path):
    import torchvision

    torch.manual_seed(3)
    alexnet = torchvision.models.alexnet()
    torch.save(alexnet.state_dict(), tmp_path / "alexnet.pth")
    metric = build_lpips("real", weights=tmp_path / "alexnet.pth")
    assert metric.backbone == "alexnet"
    net = metric.network.net
    assert torch.equal(net.slice1._modules["0"].weight, alexnet.features[0].weight)
    assert torch.equal(net.slice5._modules["10"].weight, alexnet.features[10].weight)


def test_corrupt_weights_file_is_a_clear_error(tmp_path):
    (tmp_path / "alexnet.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(LPIPSWeightsMissing, match="cannot read"):
        build_lpips("real", weights=tmp_path / "alexnet.pth")


def test_random_mode_is_labelled_and_behaves_like_a_distance():
    metric = build_lpips("random")
    assert metric.backbone == "alexnet-random"
    a, b = _images(0), _images(1)
    same, diff = metric(a, a), metric(a, b)
    assert same.shape == (2, 3) and np.allclose(same, 0.0, atol=1e-6)
    assert (diff > 0).all()
    np.testing.assert_allclose(build_lpips("random")(a, b), diff, rtol=1e-5)  # seeded backbone


def test_lpips_is_float32_inside_a_mixed_precision_autocast():
    """Rewards of a ``--mixed-precision bf16`` post-training run are the same numbers as without it."""
    metric = build_lpips("random")
    a, b = _images(0), _images(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = metric(a, b)
    assert inside.dtype == np.float32
    np.testing.assert_allclose(inside, metric(a, b), rtol=1e-6)


def test_off_mode_and_unknown_mode():
    assert build_lpips("off") is None
    with pytest.raises(ValueError, match="lpips mode"):
        build_lpips("vgg")
