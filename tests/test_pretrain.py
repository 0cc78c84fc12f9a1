"""Pretraining: a tiny run writes a loadable model, and an interrupted run resumes exactly."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.generation import generate_dataset
from training.pretrain import PretrainConfig, pretrain


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("pretrain") / "ds"
    generate_dataset(root, 3, seed=0, workers=1, height=24, width=40, progress=False)
    return root


def _config(data, out, **kw):
    base = PretrainConfig(data_dir=str(data), out_dir=str(out), scale="tiny", steps=4, batch_size=2,
                          checkpoint_every=2, eval_every=4, eval_samples=1, val_episodes=(2,), log_every=1,
                          num_threads=1, warmup_steps=2)
    return dataclasses.replace(base, **kw)


def test_resume_matches_uninterrupted_run(tiny_dataset, tmp_path):
    full = pretrain(_config(tiny_dataset, tmp_path / "full"))
    assert full["step"] == 4 and set(full["validation"]) == {"exterior_1_left", "exterior_2_left", "wrist_left"}
    pretrain(_config(tiny_dataset, tmp_path / "split", steps=2))  # "interrupted" after its step-2 checkpoint
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_config(tiny_dataset, tmp_path / "split"))
    pretrain(_config(tiny_dataset, tmp_path / "split", resume=True))
    a = WorldModel.from_pretrained(tmp_path / "full" / "model")
    b = WorldModel.from_pretrained(tmp_path / "split" / "model")
    for (k, v1), v2 in zip(a.denoiser.state_dict().items(), b.denoiser.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert "command" in a.model_card or "steps: 4" in a.model_card
    assert list((tmp_path / "full" / "samples").glob("replay-*.mp4"))
