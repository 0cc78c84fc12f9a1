"""``AutoencoderKLSplitDepth``: a decoder of its own depth over an unchanged latent space, built from a trained
autoencoder, saved and loaded, accepted by ``swap-decoder`` and trained by ``tune-decoder --decoder-layers``."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL

from persistworld_env.constants import EXTERIOR_CAMERAS
from persistworld_env.models.autoencoder import ENCODER_PREFIXES, build_autoencoder, load_autoencoder
from persistworld_env.models.split_depth_autoencoder import AutoencoderKLSplitDepth, with_decoder_depth
from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.cli import main as cli_main
from training.swap_decoder import check_same_latent_space
from training.train_autoencoder import AutoencoderTrainConfig, train_autoencoder
from training.checkpoints import ResumeError
from training.tune_decoder import DecoderTuneConfig, tune_decoder

H, W = 24, 40


@pytest.fixture()
def trained_like():
    """The tiny autoencoder (2 residual blocks per decoder up block) with non-default weights everywhere."""
    torch.manual_seed(0)
    vae = build_autoencoder("tiny", sample_size=H).eval()
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.01 * torch.randn_like(p))
    return vae


def _images(n: int = 3) -> torch.Tensor:
    return torch.rand(n, 3, H, W, generator=torch.Generator().manual_seed(1)) * 2 - 1


def _resnets_per_up_block(vae) -> list[int]:
    return [len(block.resnets) for block in vae.decoder.up_blocks]


def test_shallower_decoder_keeps_the_encoder_and_copies_what_fits(trained_like):
    light = with_decoder_depth(trained_like, 0)
    assert isinstance(light, AutoencoderKLSplitDepth) and not light.training
    assert _resnets_per_up_block(trained_like) == [2, 2, 2, 2] and _resnets_per_up_block(light) == [1, 1, 1, 1]
    source, target = trained_like.state_dict(), light.state_dict()
    encoder_keys = [k for k in source if k.startswith(ENCODER_PREFIXES)]
    assert encoder_keys and all(torch.equal(source[k], target[k]) for k in encoder_keys)
    copied = [k for k in target if k.startswith("decoder.") and k in source]
    assert "decoder.up_blocks.0.resnets.0.conv1.weight" in copied and "decoder.conv_out.weight" in copied
    assert all(torch.equal(source[k], target[k]) for k in copied)
    assert not any(".resnets.1." in k for k in target if k.startswith("decoder.up_blocks"))
    assert light.config.scaling_factor == trained_like.config.scaling_factor
    with torch.no_grad():
        x = _images()
        assert torch.equal(trained_like.encode(x).latent_dist.mode(), light.encode(x).latent_dist.mode())
        z = light.encode(x).latent_dist.mode()
        assert light.decode(z).sample.shape == x.shape
    check_same_latent_space(trained_like, light)  # the swap-decoder check accepts it


def test_same_depth_decodes_exactly_like_the_source(trained_like):
    same = with_decoder_depth(trained_like, 1)
    z = torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(same.decode(z).sample, trained_like.decode(z).sample)


def test_save_load_round_trip_alone_and_inside_a_world_model(trained_like, tmp_path):
    light = with_decoder_depth(trained_like, 0)
    light.save_pretrained(str(tmp_path / "vae"))
    loaded = load_autoencoder(tmp_path / "vae")
    assert type(loaded) is AutoencoderKLSplitDepth and loaded.config.decoder_layers_per_block == 0
    z = torch.randn(2, 4, H // 8, W // 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.equal(loaded.decode(z).sample, light.decode(z).sample)
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    model = base.with_autoencoder(with_decoder_depth(base.autoencoder, 0))
    assert model.denoiser is base.denoiser and model.config is base.config
    again = WorldModel.from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert type(again.autoencoder) is AutoencoderKLSplitDepth
    assert again.codec.memory_format == torch.channels_last  # a 2-D decoder: channels-last on a CPU like its parent
    latents = torch.randn(1, 2, 4, 3 * H // 8, W // 8, generator=torch.Generator().manual_seed(4))
    assert np.array_equal(model.eval().decode(latents), again.decode(latents))


def test_bad_depth_requests_are_refused(trained_like):
    with pytest.raises(ValueError, match="decoder_layers_per_block must be >= 0"):
        with_decoder_depth(trained_like, -1)
    with pytest.raises(ValueError, match="only be set on an AutoencoderKL"):
        with_decoder_depth(torch.nn.Linear(2, 2), 0)
    with pytest.raises(ValueError, match="decoder_layers must be >= 0"):
        DecoderTuneConfig(model="m", data_dir="d", out_dir="o", decoder_layers=-1).validate()


def test_swap_decoder_takes_a_split_depth_autoencoder_but_not_a_moved_encoder(trained_like, tmp_path):
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    base_dir = str(base.save_pretrained(tmp_path / "base", model_card="# base\n"))
    light = with_decoder_depth(WorldModel.from_pretrained(base_dir).autoencoder, 0)
    light.save_pretrained(str(tmp_path / "light"))
    assert cli_main(["swap-decoder", "--model", base_dir, "--autoencoder", str(tmp_path / "light"),
                     "--out", str(tmp_path / "swapped")]) == 0
    assert type(WorldModel.from_pretrained(tmp_path / "swapped").autoencoder) is AutoencoderKLSplitDepth
    with torch.no_grad():
        light.encoder.conv_in.weight.add_(1e-3)
    light.save_pretrained(str(tmp_path / "moved"))
    with pytest.raises(SystemExit, match="encoder weight 'encoder.conv_in.weight'"):
        cli_main(["swap-decoder", "--model", base_dir, "--autoencoder", str(tmp_path / "moved"),
                  "--out", str(tmp_path / "refused")])
    assert not (tmp_path / "refused").exists()


def test_tune_decoder_rebuilds_the_decoder_shallower_and_trains_it(sim_dataset, tmp_path):
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W, reference_cameras=EXTERIOR_CAMERAS)
    base_dir = base.save_pretrained(tmp_path / "base", model_card="# base\n")
    config = DecoderTuneConfig(model=str(base_dir), data_dir=str(sim_dataset), out_dir=str(tmp_path / "run"),
                               episodes=2, horizon=2, val_every=2, replay_batch=2, steps=12, batch_size=4, lr=2e-3,
                               warmup_steps=1, eval_every=6, checkpoint_every=6, progress=False, decoder_layers=0)
    summary = tune_decoder(config)
    assert summary["finished"] and np.mean(summary["loss_history"][-3:]) < np.mean(summary["loss_history"][:3])
    tuned = WorldModel.from_pretrained(tmp_path / "run" / "model")
    assert type(tuned.autoencoder) is AutoencoderKLSplitDepth and _resnets_per_up_block(tuned.autoencoder) == [1] * 4
    a, b = base.autoencoder.state_dict(), tuned.autoencoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(ENCODER_PREFIXES))
    assert "rebuilt with 1 residual block(s) per up block" in (tmp_path / "run" / "model" / "README.md").read_text()


def test_train_vae_builds_a_shallower_decoder_from_scratch_or_from_a_model(sim_dataset, tmp_path):
    common = dict(data_dir=str(sim_dataset), scale="tiny", steps=4, batch_size=2, lr=3e-3, warmup_steps=1,
                  val_episodes=(1,), val_frames=4, grid_frames=2, scaling_frames=8, eval_every=1000,
                  checkpoint_every=1000, log_every=2, progress=False, decoder_layers=0)
    train_autoencoder(AutoencoderTrainConfig(out_dir=str(tmp_path / "scratch"), **common))
    scratch = load_autoencoder(tmp_path / "scratch")
    assert type(scratch) is AutoencoderKLSplitDepth and _resnets_per_up_block(scratch) == [1] * 4
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    base_dir = str(base.save_pretrained(tmp_path / "base"))
    train_autoencoder(AutoencoderTrainConfig(out_dir=str(tmp_path / "dec"), init_from=base_dir, train_part="decoder",
                                             **common))
    tuned = load_autoencoder(tmp_path / "dec")
    assert _resnets_per_up_block(tuned) == [1] * 4
    check_same_latent_space(base.autoencoder, tuned)  # the encoder was frozen: swap-decoder accepts it


def test_the_subclass_takes_every_argument_of_autoencoder_kl_with_its_default():
    """A setting diffusers adds to AutoencoderKL must reach AutoencoderKLSplitDepth too (else loading drops it)."""
    ours = inspect.signature(AutoencoderKLSplitDepth.__init__).parameters
    theirs = inspect.signature(AutoencoderKL.__init__).parameters
    missing = [name for name in theirs if name not in ours]
    assert not missing, f"AutoencoderKLSplitDepth lacks AutoencoderKL's {missing}"
    assert all(ours[name].default == theirs[name].default for name in theirs if name != "self")
    assert set(ours) - set(theirs) == {"decoder_layers_per_block"}


def test_resuming_with_another_decoder_depth_is_refused_by_name(sim_dataset, tmp_path):
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    base_dir = base.save_pretrained(tmp_path / "base")
    common = dict(model=str(base_dir), data_dir=str(sim_dataset), out_dir=str(tmp_path / "run"), episodes=2, horizon=2,
                  val_every=2, replay_batch=2, steps=8, batch_size=2, warmup_steps=1, eval_every=4,
                  checkpoint_every=4, progress=False)
    assert not tune_decoder(DecoderTuneConfig(decoder_layers=0, stop_after=4, **common))["finished"]
    with pytest.raises(ResumeError, match="decoder_layers = 0, this run asks for None"):
        tune_decoder(DecoderTuneConfig(resume=True, **common))
    assert tune_decoder(DecoderTuneConfig(decoder_layers=0, resume=True, **common))["finished"]
