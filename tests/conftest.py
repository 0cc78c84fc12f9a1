"""Fixtures shared by the tests."""
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


@pytest.fixture(scope="session")
def sim_dataset(tmp_path_factory) -> Path:
    """Three MiniDROID episodes at 24x40 (simulator-rendered, LeRobot layout), shared by the training tests."""
    import persistworld_env  # noqa: F401  (headless rendering)
    from persistworld_env.sim.generation import generate_dataset

    root = tmp_path_factory.mktemp("sim_24x40") / "minidroid"
    generate_dataset(root, 3, workers=1, height=24, width=40, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised ``tiny`` world model at 24x40, saved once (tests must not write into it)."""
    import torch

    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.sim.env import default_pose_normalizer

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("wm") / "tiny"
    WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40).save_pretrained(d)
    return d
