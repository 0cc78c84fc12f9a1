"""LPIPS (AlexNet, v0.1) with an explicit policy for its backbone weights.

The ``lpips`` wheel ships its learned linear layers, but the AlexNet backbone comes from torchvision's
download URL at first use. Offline, that fails. So the backbone is resolved explicitly:

* ``"real"`` (default): the torchvision AlexNet checkpoint found locally (``weights=`` argument, the
  ``PERSISTWORLD_ALEXNET_WEIGHTS`` variable, or torch hub's cache). Missing -> :class:`LPIPSWeightsMissing`
  telling the user how to provide it or which opt-in to use. Never a silent fallback.
* ``"random"``: a randomly initialised backbone (seeded). The code path runs, the number is *not* a
  perceptual metric; :attr:`LPIPSMetric.backbone` says ``"alexnet-random"`` so every report labels it.
* ``"off"``: no LPIPS (callers report PSNR and SSIM only); :func:`build_lpips` returns ``None``.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch

#: torchvision's file name for the ImageNet AlexNet weights (``AlexNet_Weights.IMAGENET1K_V1``).
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"
WEIGHTS_ENV = "PERSISTWORLD_ALEXNET_WEIGHTS"
LPIPS_MODES = ("real", "random", "off")
#: Smallest image side AlexNet's five conv/pool stages accept.
MIN_IMAGE_SIZE = 31


class LPIPSWeightsMissing(RuntimeError):
    """The real AlexNet backbone weights are not on this machine."""


def find_alexnet_weights(weights: str | os.PathLike | None = None) -> Path | None:
    """The local AlexNet checkpoint: ``weights`` if given (a missing file raises: never another file in its place),
    else ``$PERSISTWORLD_ALEXNET_WEIGHTS``, else torch hub's cache; None when neither holds one."""
    if weights is not None:
        if not Path(weights).is_file():
            raise LPIPSWeightsMissing(f"AlexNet weights not found at {weights}")
        return Path(weights)
    for candidate in (os.environ.get(WEIGHTS_ENV), Path(torch.hub.get_dir()) / "checkpoints" / ALEXNET_FILE):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


class LPIPSMetric:
    """LPIPS distance between uint8 images; ``backbone`` names the weights it runs on."""

    def __init__(self, network: torch.nn.Module, backbone: str, device: str | torch.device = "cpu") -> None:
        self.network = network.to(device).eval().requires_grad_(False)
        self.backbone = backbone
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, pred: np.ndarray, target: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Per-image LPIPS of ``(..., H, W, 3)`` uint8 arrays (same shape); returns shape ``(...)``."""
        pred, target = np.asarray(pred), np.asarray(target)
        if pred.shape != target.shape or pred.shape[-1] != 3:
            raise ValueError(f"expected two (..., H, W, 3) arrays of one shape, got {pred.shape} and {target.shape}")
        if min(pred.shape[-3:-1]) < MIN_IMAGE_SIZE:
            raise ValueError(f"LPIPS (AlexNet) needs images of at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE} pixels, "
                             f"got {pred.shape[-3]}x{pred.shape[-2]}")
        lead = pred.shape[:-3]
        a = pred.reshape(-1, *pred.shape[-3:])
        b = target.reshape(-1, *target.shape[-3:])
        out = []
        # float32 whatever the caller's autocast (mixed-precision post-training scores its candidates with this)
        with torch.autocast(self.device.type, enabled=False):
            for i in range(0, len(a), batch_size):
                x = _to_lpips_input(a[i:i + batch_size], self.device)
                y = _to_lpips_input(b[i:i + batch_size], self.device)
                out.append(self.network(x, y).flatten().float().cpu())
        return torch.cat(out).numpy().reshape(lead) if out else np.zeros(lead, np.float32)


def _to_lpips_input(images: np.ndarray, device: torch.device) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()
    return x / 127.5 - 1.0


def build_lpips(mode: str = "real", weights: str | os.PathLike | None = None, device: str | torch.device = "cpu",
                seed: int = 0) -> LPIPSMetric | None:
    """LPIPS per the backbone policy above (``mode`` in ``LPIPS_MODES``); ``None`` for ``"off"``."""
    if mode not in LPIPS_MODES:
        raise ValueError(f"lpips mode must be one of {LPIPS_MODES}, got {mode!r}")
    if mode == "off":
        return None
    path = find_alexnet_weights(weights) if mode == "real" else None
    if mode == "real" and path is None:
        raise LPIPSWeightsMissing(
            "LPIPS needs torchvision's ImageNet AlexNet weights and none were found locally. Put "
            f"{ALEXNET_FILE} in {Path(torch.hub.get_dir()) / 'checkpoints'}, or point {WEIGHTS_ENV} (or "
            "--lpips-weights) at it; or choose --lpips random (a random backbone: runs, but is not a "
            "perceptual metric) or --lpips off (PSNR and SSIM only).")
    import persistworld_env.models  # noqa: F401 - CPU torchvision guard before lpips imports torchvision
    import lpips

    with torch.random.fork_rng(), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision's deprecation notes on lpips' call
        torch.manual_seed(seed)
        network = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
    if path is None:
        return LPIPSMetric(network, "alexnet-random", device)
    _load_alexnet_backbone(network, path)
    return LPIPSMetric(network, "alexnet", device)


def _load_alexnet_backbone(network: torch.nn.Module, path: Path) -> None:
    """Copy a torchvision AlexNet checkpoint's ``features.*`` into lpips' sliced backbone."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file gets the same clear error
        raise LPIPSWeightsMissing(f"cannot read AlexNet weights {path}: {error}") from error
    features = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    loaded = set()
    for slice_module in (network.net.slice1, network.net.slice2, network.net.slice3, network.net.slice4,
                         network.net.slice5):
        for index, layer in slice_module.named_children():
            for name, param in layer.named_parameters():
                key = f"{index}.{name}"
                if key not in features or features[key].shape != param.shape:
                    raise LPIPSWeightsMissing(f"{path} is not a torchvision AlexNet checkpoint (bad {key!r})")
                param.data.copy_(features[key])
                loaded.add(key)
    if not loaded:
        raise LPIPSWeightsMissing(f"{path} holds no AlexNet feature weights")
