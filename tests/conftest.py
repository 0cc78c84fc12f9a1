"""Fixtures shared by the data-pipeline tests."""
from __future__ import annotations

from pathlib import Path

import pytest

import persistworld_env.models  # noqa: F401 - installs the CPU torchvision guard before tests import diffusers

from data_helpers import make_episodes, write_dataset


@pytest.fixture(scope="module")
def episodes():
    """A few small synthetic episodes (see ``data_helpers.make_episodes``)."""
    return make_episodes()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, episodes) -> Path:
    """Those episodes written in the LeRobot layout."""
    root = tmp_path_factory.mktemp("minidroid")
    write_dataset(root, episodes)
    return root
