"""The classic drift-fighting baseline: fine-tune a model (``--init-from``) with stronger history noise."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from persistworld_env.diffusion.edm import EDMConfig
from persistworld_env.models.objective import TrainingNoise, edm_loss
from persistworld_env.models.world_model import WorldModel
from training.pretrain import PretrainConfig, export_checkpoint, pretrain

from evaluation_helpers import tiny_dataset, tiny_world_model


class _Recorder(torch.nn.Module):
    """Stands in for the denoiser: records the history it is shown, predicts zeros."""

    config = SimpleNamespace(num_history=6)

    def __init__(self) -> None:
        super().__init__()
        self.seen = None

    def forward(self, noisy_clip, sigma, history, current, poses=None, instructions=None, drop=None):
        self.seen, self.sigma = history, sigma
        return torch.zeros_like(noisy_clip)


def test_history_noise_strength_reaches_the_history_frames():
    recorder = _Recorder()
    latents, poses = torch.randn(64, 11, 4, 6, 4), torch.zeros(64, 11, 7)
    spread = []
    for std in (0.0, 0.3, 3.0):
        edm_loss(recorder, latents, poses, noise=TrainingNoise(history_sigma_std=std),
                 generator=torch.Generator().manual_seed(0))
        spread.append(float((recorder.seen - latents[:, :6]).abs().mean()))
    assert spread[0] == 0.0 < spread[1] < spread[2]  # std 0: the history frames untouched


def test_top_sigma_fraction_trains_that_share_of_clips_at_the_sampling_level():
    recorder = _Recorder()
    latents, poses = torch.randn(4000, 11, 1, 1, 1), torch.zeros(4000, 11, 7)
    plain = TrainingNoise()
    edm_loss(recorder, latents, poses, noise=plain, generator=torch.Generator().manual_seed(0))
    lognormal = recorder.sigma
    assert float((lognormal > 79).float().mean()) < 0.02  # the log-normal rarely reaches a sampler's top level
    edm_loss(recorder, latents, poses, noise=TrainingNoise(edm=EDMConfig(top_fraction=0.25, top_sigma=80.0)),
             generator=torch.Generator().manual_seed(0))
    top = recorder.sigma == 80.0
    assert abs(float(top.float().mean()) - 0.25) < 0.03
    torch.testing.assert_close(recorder.sigma[~top], lognormal[~top])  # the other clips keep their draw
    # A recorder predicting 0 has per-sample loss weight * clip^2: at sigma 80 that weight is 1 + 1/6400.
    loss = edm_loss(recorder, latents, poses, noise=TrainingNoise(edm=EDMConfig(top_fraction=1.0, top_sigma=80.0)))
    torch.testing.assert_close(loss, (1 + 1 / 80.0**2) * (latents[:, 6:] ** 2).mean())
    with pytest.raises(ValueError, match="top_fraction"):
        EDMConfig(top_fraction=1.5)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune")
    tiny_world_model(root / "base", detector=False)
    tiny_dataset(root / "ds")
    return root


def _config(root, out, **kw):
    return PretrainConfig(data_dir=str(root / "ds"), out_dir=str(root / out), scale="default", batch_size=2,
                          checkpoint_every=2, eval_every=100, eval_samples=1, val_episodes=(2,), log_every=1,
                          num_threads=1, warmup_steps=1, **kw)


def test_init_from_fine_tunes_the_given_model_with_its_normaliser(setup):
    base = WorldModel.from_pretrained(setup / "base")
    pretrain(_config(setup, "same", steps=0, init_from=str(setup / "base")))
    same = WorldModel.from_pretrained(setup / "same" / "model")
    for (k, v1), v2 in zip(base.denoiser.state_dict().items(), same.denoiser.state_dict().values()):
        assert torch.equal(v1, v2), k  # 0 steps: exactly the initial weights
    assert same.config.scale == "tiny" and same.normalizer.to_dict() == base.normalizer.to_dict()
    pretrain(_config(setup, "tuned", steps=2, init_from=str(setup / "base"), history_sigma_std=1.0, ema_decay=0.0))
    tuned = WorldModel.from_pretrained(setup / "tuned" / "model")
    assert any(not torch.equal(a, b) for a, b in zip(base.denoiser.parameters(), tuned.denoiser.parameters()))
    state = json.loads((setup / "tuned" / "checkpoints" / "checkpoint-00000002" / "trainer_state.json").read_text())
    assert state["config"]["init_from"] == str(setup / "base") and state["config"]["history_sigma_std"] == 1.0
    assert "initialised from" in tuned.model_card and "N(0, 1.0^2)" in tuned.model_card
    exported = WorldModel.from_pretrained(export_checkpoint(setup / "tuned" / "checkpoints" / "checkpoint-00000002",
                                                            setup / "exported"))
    for (k, v1), v2 in zip(tuned.denoiser.state_dict().items(), exported.denoiser.state_dict().values()):
        assert torch.equal(v1, v2), k
