"""Tiny evaluation fixtures shared by the ``test_evaluation_*`` modules (not a test module)."""
from __future__ import annotations

from pathlib import Path

import torch

from persistworld_env.models.success_detector import SuccessDetector, detector_config
from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer

from data_helpers import make_episode, write_dataset

#: The smallest MiniDROID-like image size LPIPS' AlexNet accepts.
H, W = 32, 48


def tiny_dataset(root: Path, episodes: int = 3, length: int = 40) -> Path:
    """Synthetic episodes (3 replay steps each at length 40) in the LeRobot layout."""
    write_dataset(root, [make_episode(i, length, height=H, width=W) for i in range(episodes)])
    return root


def tiny_world_model(directory: Path, seed: int = 0, detector: bool = True) -> Path:
    """A randomly initialised tiny world model directory, with an untrained tiny success detector."""
    torch.manual_seed(seed)
    WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W).save_pretrained(directory)
    if detector:
        SuccessDetector(detector_config("tiny", height=H, width=W)).save_pretrained(directory / "success_detector")
    return directory
