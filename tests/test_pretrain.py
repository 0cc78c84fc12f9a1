"""Pretraining: a tiny run writes a loadable model, and an interrupted run resumes exactly."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.generation import generate_dataset
from training.pretrain import PretrainConfig, export_checkpoint, pretrain


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
    # The final checkpoint exported on its own gives the same EMA weights as the run's model/.
    exported = WorldModel.from_pretrained(export_checkpoint(tmp_path / "full" / "checkpoints" / "checkpoint-00000004",
                                                            tmp_path / "exported"))
    for (k, v1), v2 in zip(a.denoiser.state_dict().items(), exported.denoiser.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert exported.model_card == a.model_card  # data, steps and validation table come with the checkpoint
    with pytest.raises(FileNotFoundError, match="not a complete pretraining checkpoint"):
        export_checkpoint(tmp_path / "full", tmp_path / "nothing")


def test_two_process_cpu_run_with_torchrun(tiny_dataset, tmp_path):
    """The same command under 2 processes (gloo on the CPU): sharded batches, synced gradients, one writer."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "training.cli", "pretrain", "--data", str(tiny_dataset),
           "--out", str(out), "--scale", "tiny", "--steps", "2", "--batch-size", "2", "--checkpoint-every", "2",
           "--eval-every", "2", "--eval-samples", "1", "--val-episodes", "2", "--num-threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["processes"] == 2
    assert (out / "checkpoints" / "checkpoint-00000002" / "random_states_1.pkl").is_file()
    WorldModel.from_pretrained(out / "model")


def test_a_non_finite_last_step_is_skipped_and_still_checkpointed(tiny_dataset, tmp_path, monkeypatch):
    import json

    import persistworld_env.models.objective as objective

    real, calls = objective.edm_loss, []

    def poisoned(*args, **kwargs):
        calls.append(1)
        loss = real(*args, **kwargs)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(objective, "edm_loss", poisoned)
    summary = pretrain(_config(tiny_dataset, tmp_path, steps=2, checkpoint_every=100, eval_every=100))
    assert summary["step"] == 2 and summary["bad_steps"] == 1
    assert summary["validation"]  # the last step's validation ran
    state = json.loads((tmp_path / "checkpoints" / "checkpoint-00000002" / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["bad_steps"] == 1
    weights = WorldModel.from_pretrained(tmp_path / "model").denoiser.state_dict().values()
    assert all(torch.isfinite(v).all() for v in weights)
