"""Import-time rendering defaults: a headless Linux gets an offscreen MuJoCo backend, never over the user's choice."""
from __future__ import annotations

import sys

import pytest

from persistworld_env._platform import configure_headless_rendering


@pytest.mark.parametrize("given, expected", [
    ({}, {"MUJOCO_GL": "egl", "PYOPENGL_PLATFORM": "egl"}),
    ({"PYOPENGL_PLATFORM": "osmesa"}, {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}),
    ({"MUJOCO_GL": "osmesa"}, {"MUJOCO_GL": "osmesa", "PYOPENGL_PLATFORM": "osmesa"}),
    ({"MUJOCO_GL": "glfw"}, {"MUJOCO_GL": "glfw", "PYOPENGL_PLATFORM": None}),  # not a PyOpenGL platform name
])
def test_headless_defaults_follow_the_users_choice(monkeypatch, given, expected):
    import os

    monkeypatch.setattr(sys, "platform", "linux")
    for name in ("DISPLAY", "MUJOCO_GL", "PYOPENGL_PLATFORM"):
        monkeypatch.delenv(name, raising=False)
    for name, value in given.items():
        monkeypatch.setenv(name, value)
    configure_headless_rendering()
    assert {name: os.environ.get(name) for name in expected} == expected
