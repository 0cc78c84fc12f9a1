"""Process-level defaults that must be set before MuJoCo is imported."""
from __future__ import annotations

import os
import sys


def configure_headless_rendering() -> None:
    """Use EGL for offscreen MuJoCo rendering on headless Linux unless the user chose a backend.

    MuJoCo reads ``MUJOCO_GL`` once, at import. Set it yourself (``egl``, ``osmesa``, ``glfw``)
    before importing :mod:`persistworld_env` to override this default.
    """
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
        os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
