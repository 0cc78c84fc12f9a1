"""Process-level defaults that must be set before MuJoCo is imported."""
from __future__ import annotations

import os
import sys


def configure_headless_rendering() -> None:
    """Use EGL for offscreen MuJoCo rendering on headless Linux unless the user chose a backend.

    MuJoCo reads ``MUJOCO_GL`` once, at import. Set it yourself (``egl``, ``osmesa``, ``glfw``)
    before importing :mod:`persistworld_env` to override this default; a ``PYOPENGL_PLATFORM`` of ``egl`` or
    ``osmesa`` alone is followed too.
    """
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        offscreen = ("egl", "osmesa")
        chosen = os.environ.get("PYOPENGL_PLATFORM")
        os.environ.setdefault("MUJOCO_GL", chosen if chosen in offscreen else "egl")
        if os.environ["MUJOCO_GL"] in offscreen:  # PyOpenGL's platform names; glfw or "disable" are not
            os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])


_TORCHVISION_SHIM = None


def guard_cpu_torchvision() -> None:
    """Let a CUDA-built torchvision import against a CPU-only torch.

    torchvision's CUDA wheels register fake kernels for ``torchvision::nms``/``qnms`` at import; when
    its C extension cannot load (CPU torch), those operators were never defined and ``import
    torchvision`` fails, which also breaks ``lpips`` and parts of ``diffusers``/``transformers``. Defining
    the two schemas first lets the pure-Python parts (models, transforms) import; ``torchvision.ops.nms``
    itself stays unavailable. Does nothing when torchvision is absent, already imported, or healthy.
    """
    global _TORCHVISION_SHIM
    import importlib.util

    if _TORCHVISION_SHIM is not None or "torchvision" in sys.modules:
        return
    if importlib.util.find_spec("torchvision") is None:
        return
    try:
        import torchvision  # noqa: F401 - healthy install: nothing to do
        return
    except RuntimeError as error:
        if "torchvision::nms" not in str(error):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch

    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _TORCHVISION_SHIM = library  # keep the Library alive: the schemas die with it
