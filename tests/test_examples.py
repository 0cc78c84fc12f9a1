"""The example scripts run as a new user would run them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_minidroid_dataset_example(tmp_path):
    stdout = _run("minidroid_dataset.py", "--out", str(tmp_path / "ds"), "--episodes", "2")
    assert "video (11, 3, 48, 80, 3)" in stdout
    assert "video (11, 3, 48, 80, 3)" in _run("minidroid_dataset.py", "--out", str(tmp_path / "one"), "--episodes", "1")


def test_world_model_env_example(tmp_path):
    torch.manual_seed(0)
    WorldModel.build("tiny", default_pose_normalizer()).save_pretrained(tmp_path / "model")
    stdout = _run("world_model_env.py", "--model", str(tmp_path / "model"), "--steps", "1")
    assert "step  1: PSNR" in stdout


def test_train_ppo_example(tmp_path):
    import json

    torch.manual_seed(0)
    WorldModel.build("tiny", default_pose_normalizer()).save_pretrained(tmp_path / "model")
    _run("train_ppo.py", "--model", str(tmp_path / "model"), "--num-envs", "2", "--timesteps", "16",
         "--n-steps", "8", "--episode-steps", "2", "--eval-episodes", "1", "--out", str(tmp_path / "ppo"))
    summary = json.loads((tmp_path / "ppo" / "summary.json").read_text())
    assert summary["timesteps"] == 16 and set(summary["simulator"]) == {"untrained", "trained", "keep_still"}
    assert summary["simulator"]["trained"]["mean_step_reward"] < 0  # minus a distance
    assert set(summary["episode_return"]) == {"first", "last", "best", "updates"}
    assert (tmp_path / "ppo" / "ppo_reach.zip").is_file() and (tmp_path / "ppo" / "reward_curve.png").is_file()


def test_train_ppo_tests_the_policy_in_a_simulator_that_shows_what_the_model_showed():
    """The same image size and pose normalisation as the world model the policy was trained in."""
    import importlib.util

    import numpy as np

    from persistworld_env.data.stats import PoseNormalizer

    spec = importlib.util.spec_from_file_location("train_ppo", EXAMPLES / "train_ppo.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    sim = default_pose_normalizer()
    model = WorldModel.build("tiny", PoseNormalizer(sim.low - 0.05, sim.high + 0.05), height=32, width=56)
    env = example.simulator_like(model)
    obs, info = env.reset(seed=0)
    assert obs["wrist_left"].shape == (3, 32, 56)
    np.testing.assert_allclose(obs["pose"], model.normalizer.normalize(info["raw_pose"]), atol=1e-6)
    env.close()
