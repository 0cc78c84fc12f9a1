"""The demo (README command 1) with and without a world model."""
from __future__ import annotations

import json

import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.demo import run_demo


def test_demo_with_a_world_model_writes_video_sheet_and_fidelity(tmp_path):
    torch.manual_seed(0)
    model_dir = WorldModel.build("tiny", default_pose_normalizer(), height=48, width=80).save_pretrained(
        tmp_path / "model")
    summary = run_demo(out=tmp_path / "out", steps=2, seed=0, model=str(model_dir))
    assert summary["world_model"] and summary["steps"] == 2
    assert set(summary["fidelity"]["psnr"]) == {"exterior_1_left", "exterior_2_left", "wrist_left"}
    assert (tmp_path / "out" / "demo.mp4").stat().st_size > 0
    assert (tmp_path / "out" / "contact_sheet.png").stat().st_size > 0
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["steps"] == 2


def test_demo_without_a_model_shows_the_simulator(tmp_path):
    summary = run_demo(out=tmp_path / "out", steps=2, seed=1, model=None)
    assert not summary["world_model"] and "fidelity" not in summary
    assert (tmp_path / "out" / "demo.mp4").is_file()
