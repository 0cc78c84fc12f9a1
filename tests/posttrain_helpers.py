"""A tiny dataset and model for the post-training tests (not a test module)."""
from __future__ import annotations

from pathlib import Path

import torch

from data_helpers import INSTRUCTIONS, LENGTHS, make_episode, write_dataset
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.models.world_model import WorldModel

H, W = 32, 48  # the smallest MiniDROID-like size LPIPS accepts (>= 31)


def write_tiny_setup(root: Path) -> tuple[Path, Path]:
    """A synthetic 4-episode dataset (2-4 replay steps each; use episode 3 for validation) and a tiny random model."""
    episodes = [make_episode(i, n, H, W, instruction=s) for i, (n, s) in enumerate(zip(LENGTHS, INSTRUCTIONS))]
    write_dataset(root / "ds", episodes)
    torch.manual_seed(0)
    model = WorldModel.build("tiny", PoseNormalizer.from_dataset(root / "ds"), height=H, width=W)
    model.save_pretrained(root / "model")
    return root / "ds", root / "model"
