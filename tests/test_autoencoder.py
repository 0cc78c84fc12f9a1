"""Autoencoder: pixel/latent conversions, view stacking, save/load, SVD-VAE loading, training and resume,
decoder-only fine-tuning and ``persistworld swap-decoder``."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from persistworld_env.constants import CAMERAS
from persistworld_env.models.autoencoder import (
    WEIGHTS_NAME, ModelLoadError, build_autoencoder, load_autoencoder, load_codec,
)
from persistworld_env.models.image_codec import (
    CPU_CHUNK_SIZE, LatentCodec, float_to_uint8, stack_views, uint8_to_float, unstack_views,
)
from persistworld_env.models.vae_quality import evaluate_reconstruction
from persistworld_env.models.world_model import MODEL_CARD, WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.cli import main as cli_main
from training.train_autoencoder import ENCODER_PREFIXES, AutoencoderTrainConfig, train_autoencoder

H, W = 24, 40


@pytest.fixture()
def tiny_codec():
    torch.manual_seed(0)
    return LatentCodec(build_autoencoder("tiny"), chunk_size=5)


def distinct_views(batch: int = 2, frames: int = 3) -> np.ndarray:
    """uint8 (B, F, V, H, W, 3): camera v is a distinct flat colour with a small moving square."""
    x = np.zeros((batch, frames, len(CAMERAS), H, W, 3), np.uint8)
    colours = [(220, 30, 30), (30, 200, 40), (40, 60, 230)]
    for v, c in enumerate(colours):
        x[:, :, v] = c
    for f in range(frames):
        x[:, f, :, 4:10, 2 + 4 * f:8 + 4 * f] = 255
    return x


def test_uint8_float_round_trip_is_exact():
    u = np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1).repeat(3, axis=-1)  # (1, 4, 64, 3)
    x = uint8_to_float(u)
    assert x.shape == (1, 3, 4, 64) and x.dtype == torch.float32
    assert float(x.min()) == -1.0 and float(x.max()) == 1.0
    assert torch.equal(float_to_uint8(x), torch.from_numpy(u))
    assert torch.equal(float_to_uint8(uint8_to_float(torch.from_numpy(u))), torch.from_numpy(u))
    assert torch.equal(float_to_uint8(torch.full((3, 1, 1), 7.0)), torch.full((1, 1, 3), 255, dtype=torch.uint8))
    with pytest.raises(TypeError):
        uint8_to_float(u.astype(np.float32))


def test_stack_views_layout():
    per_view = torch.randn(2, 3, len(CAMERAS), 4, 3, 5)  # (B, F, V, C, h, w)
    stacked = stack_views(per_view)
    assert stacked.shape == (2, 3, 4, 9, 5)
    for v in range(len(CAMERAS)):
        assert torch.equal(stacked[..., 3 * v:3 * (v + 1), :], per_view[:, :, v])
    assert torch.equal(unstack_views(stacked, len(CAMERAS)), per_view)


def test_encode_decode_views_keep_each_view_separate_and_in_order(tiny_codec):
    frames = distinct_views()
    z = tiny_codec.encode_views(frames)
    assert z.shape == (2, 3, 4, 3 * H // 8, W // 8)
    assert tiny_codec.latent_shape(H, W, 3) == z.shape[2:]
    out = tiny_codec.decode_views(z, num_views=3)
    assert out.shape == frames.shape and out.dtype == torch.uint8
    h = H // 8
    for v in range(3):  # each view's rows equal that view encoded alone; decoding is per view too
        alone = tiny_codec.encode_images(uint8_to_float(frames[:, :, v]).flatten(0, 1)).reshape(2, 3, 4, h, W // 8)
        torch.testing.assert_close(z[:, :, :, v * h:(v + 1) * h], alone, rtol=1e-5, atol=1e-5)
        decoded = float_to_uint8(tiny_codec.decode_images(alone.flatten(0, 1))).reshape(2, 3, H, W, 3)
        assert (out[:, :, v].int() - decoded.int()).abs().max() <= 1
    swapped = tiny_codec.decode_views(torch.cat([z[..., h:2 * h, :], z[..., :h, :], z[..., 2 * h:, :]], dim=-2), 3)
    assert (swapped[:, :, 0].int() - out[:, :, 1].int()).abs().max() <= 1
    assert (swapped[:, :, 1].int() - out[:, :, 0].int()).abs().max() <= 1


def test_save_load_round_trip_gives_identical_latents(tmp_path, tiny_codec):
    tiny_codec.autoencoder.register_to_config(scaling_factor=0.7)
    tiny_codec.autoencoder.save_pretrained(tmp_path / "vae")
    loaded = load_codec(tmp_path / "vae", chunk_size=5)  # same chunks: bit-identical
    assert loaded.scaling_factor == pytest.approx(0.7)
    frames = distinct_views(1, 2)
    assert torch.equal(loaded.encode_views(frames), tiny_codec.encode_views(frames))
    fast = load_codec(tmp_path / "vae", channels_last=True)  # same numbers up to float rounding
    torch.testing.assert_close(fast.encode_views(frames), loaded.encode_views(frames), rtol=1e-4, atol=1e-5)


def test_chunk_size_defaults_by_device_and_does_not_change_results(tiny_codec):
    default = LatentCodec(tiny_codec.autoencoder)
    assert default.chunk_size is None and default.images_per_call == CPU_CHUNK_SIZE  # the codec is on the CPU
    assert tiny_codec.images_per_call == 5
    frames = distinct_views(2, 10)  # 60 images: 12 calls of 5 vs 4 calls of 16
    torch.testing.assert_close(default.encode_views(frames), tiny_codec.encode_views(frames), rtol=1e-4, atol=1e-5)
    latents = tiny_codec.encode_views(frames)
    decoded = default.decode_views(latents, 3).int() - tiny_codec.decode_views(latents, 3).int()
    assert decoded.abs().max() <= 1
    with pytest.raises(ValueError, match="chunk_size"):
        LatentCodec(tiny_codec.autoencoder, chunk_size=0)


def test_missing_or_corrupt_weights_raise_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_autoencoder(tmp_path / "nowhere")
    folder = tmp_path / "vae"
    build_autoencoder("tiny").save_pretrained(folder)
    weights = folder / WEIGHTS_NAME
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelLoadError, match=str(weights)):
        load_autoencoder(folder)
    weights.unlink()
    with pytest.raises(ModelLoadError, match=str(weights)):
        load_autoencoder(folder)


def test_a_world_model_directory_gives_its_autoencoder(tmp_path):
    from persistworld_env.models.autoencoder import resolve_autoencoder_dir
    from persistworld_env.models.world_model import embedded_model_dir

    embedded = embedded_model_dir("default")
    assert resolve_autoencoder_dir(embedded) == embedded / "autoencoder"
    assert resolve_autoencoder_dir(embedded / "autoencoder") == embedded / "autoencoder"
    (tmp_path / "config.json").write_text("{}")  # neither a diffusers config nor a folder holding one: read as given
    assert resolve_autoencoder_dir(tmp_path) == tmp_path


def test_ctrl_world_temporal_vae_loads_from_svd_folder(tmp_path):
    from diffusers import AutoencoderKLTemporalDecoder

    torch.manual_seed(0)
    svd = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D",) * 2, block_out_channels=(32, 32),
                                       layers_per_block=1, latent_channels=4).eval()
    svd.save_pretrained(tmp_path / "svd" / "vae")  # SVD repository layout: <root>/vae/
    codec = load_codec(tmp_path / "svd")
    assert type(codec.autoencoder).__name__ == "AutoencoderKLTemporalDecoder" and codec.temporal
    assert codec.scaling_factor == pytest.approx(0.18215)
    frames = np.random.default_rng(0).integers(0, 256, (1, 3, 3, 16, 16, 3), dtype=np.uint8)
    z = codec.encode_views(frames)
    assert z.shape == (1, 3, 4, 3 * 8, 8)
    out = codec.decode_views(z, num_views=3)
    assert out.shape == frames.shape
    with torch.no_grad():  # view 1 decoded as one 3-frame clip by the temporal decoder
        ref = svd.decode(z[0, :, :, 8:16] / 0.18215, num_frames=3).sample
    assert (out[0, :, 1].int() - float_to_uint8(ref).int()).abs().max() <= 1


def _config(data, out, **kw) -> AutoencoderTrainConfig:
    base = dict(data_dir=str(data), out_dir=str(out), scale="tiny", steps=6, batch_size=2, lr=3e-3, warmup_steps=2,
                val_episodes=(1,), val_frames=4, grid_frames=2, scaling_frames=8, eval_every=1000,
                checkpoint_every=1000, log_every=2, progress=False)
    base.update(kw)
    return AutoencoderTrainConfig(**base)


def test_tiny_training_run_lowers_loss_and_writes_a_loadable_model(sim_dataset, tmp_path):
    out = tmp_path / "run"
    summary = train_autoencoder(_config(sim_dataset, out, steps=24, lr=5e-3, crop=(16, 24)))
    losses = summary["loss_history"]
    assert len(losses) == 24 and np.mean(losses[-4:]) < np.mean(losses[:4])
    assert set(summary["val_psnr"]) == set(CAMERAS) | {"mean"}
    assert (out / "model_card.md").is_file() and (out / "samples").is_dir() and any((out / "logs").iterdir())
    model = load_autoencoder(out)
    assert model.config.scaling_factor == pytest.approx(summary["scaling_factor"])
    psnr = evaluate_reconstruction(out, sim_dataset, split="val", val_episodes=[1], max_frames=4)
    assert psnr["mean"] == pytest.approx(summary["val_psnr"]["mean"], abs=1e-6)
    with pytest.raises(FileExistsError):  # refuses to overwrite a run without --resume
        train_autoencoder(_config(sim_dataset, out))


def test_interrupted_then_resumed_training_equals_uninterrupted(sim_dataset, tmp_path):
    full = train_autoencoder(_config(sim_dataset, tmp_path / "a"))
    part = train_autoencoder(_config(sim_dataset, tmp_path / "b", stop_after=3))
    assert part["steps"] == 3 and not part["finished"]
    resumed = train_autoencoder(_config(sim_dataset, tmp_path / "b", resume=True))
    assert resumed["steps"] == 6 and resumed["loss_history"] == full["loss_history"][3:]
    a, b = load_file(str(tmp_path / "a" / WEIGHTS_NAME)), load_file(str(tmp_path / "b" / WEIGHTS_NAME))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg_a = json.loads((tmp_path / "a" / "config.json").read_text())
    cfg_b = json.loads((tmp_path / "b" / "config.json").read_text())
    assert cfg_a["scaling_factor"] == cfg_b["scaling_factor"]


# ------------------------------------------------------------------ decoder-only fine-tuning, swap-decoder
@pytest.fixture(scope="module")
def base_model(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    with torch.no_grad():  # a scaling factor that is not the default 1, so keeping it is visible
        model.autoencoder.register_to_config(scaling_factor=0.625)
    return str(model.save_pretrained(tmp_path_factory.mktemp("base") / "model", model_card="# base\n"))


def test_decoder_fine_tune_keeps_the_encoder_and_scaling_factor_bit_for_bit(sim_dataset, base_model, tmp_path):
    summary = train_autoencoder(_config(sim_dataset, tmp_path / "dec", init_from=base_model, train_part="decoder"))
    before = WorldModel.from_pretrained(base_model).autoencoder
    after = load_autoencoder(tmp_path / "dec")
    assert after.config.scaling_factor == 0.625 == summary["scaling_factor"]
    old, new = before.state_dict(), after.state_dict()
    encoder_keys = [k for k in old if k.startswith(ENCODER_PREFIXES)]
    decoder_keys = [k for k in old if k.startswith(("decoder.", "post_quant_conv."))]
    assert encoder_keys and decoder_keys and len(encoder_keys) + len(decoder_keys) == len(old)
    assert all(torch.equal(old[k], new[k]) for k in encoder_keys)
    assert sum(not torch.equal(old[k], new[k]) for k in decoder_keys) > len(decoder_keys) // 2
    assert "encoder frozen" in (tmp_path / "dec" / "model_card.md").read_text()


def test_whole_fine_tune_from_a_model_recomputes_the_scaling_factor(sim_dataset, base_model, tmp_path):
    summary = train_autoencoder(_config(sim_dataset, tmp_path / "all", init_from=base_model, steps=2))
    assert summary["scaling_factor"] != 0.625
    old = WorldModel.from_pretrained(base_model).autoencoder.state_dict()
    new = load_autoencoder(tmp_path / "all").state_dict()
    assert not torch.equal(old["encoder.conv_in.weight"], new["encoder.conv_in.weight"])


def test_bad_decoder_training_requests_are_refused(sim_dataset, base_model, tmp_path):
    with pytest.raises(ValueError, match="init_from"):
        train_autoencoder(_config(sim_dataset, tmp_path / "a", train_part="decoder"))
    with pytest.raises(ValueError, match="train_part"):
        train_autoencoder(_config(sim_dataset, tmp_path / "b", init_from=base_model, train_part="encoder"))
    with pytest.raises(ValueError, match="shape"):
        train_autoencoder(_config(sim_dataset, tmp_path / "c", init_from=base_model, latent_channels=8))


def _frames(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (1, 2, 3, H, W, 3), dtype=np.uint8)


def test_swap_decoder_keeps_latents_and_denoiser_and_changes_decoding(sim_dataset, base_model, tmp_path):
    vae_dir = tmp_path / "dec"
    train_autoencoder(_config(sim_dataset, vae_dir, init_from=base_model, train_part="decoder"))
    out = tmp_path / "swapped"
    assert cli_main(["swap-decoder", "--model", base_model, "--autoencoder", str(vae_dir), "--out", str(out)]) == 0
    old, new = WorldModel.from_pretrained(base_model), WorldModel.from_pretrained(out)
    assert old.config.to_dict() == new.config.to_dict()
    a, b = old.denoiser.state_dict(), new.denoiser.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    frames = _frames()
    z_old, z_new = old.codec.encode_views(frames), new.codec.encode_views(frames)
    assert torch.equal(z_old, z_new)
    assert not np.array_equal(old.decode(z_old), new.decode(z_new))
    card = (out / MODEL_CARD).read_text()
    assert card.startswith("# base") and "Decoder replaced" in card and str(vae_dir) in card


def _saved_variant(model_dir: str, out, change) -> str:
    vae = WorldModel.from_pretrained(model_dir).autoencoder
    change(vae)
    vae.save_pretrained(str(out))
    return str(out)


def test_swap_decoder_refuses_a_different_latent_space_and_writes_nothing(base_model, tmp_path):
    def move_encoder(vae):
        with torch.no_grad():
            vae.encoder.conv_in.weight.add_(1e-3)

    other_encoder = _saved_variant(base_model, tmp_path / "enc", move_encoder)
    other_scale = _saved_variant(base_model, tmp_path / "scale",
                                 lambda vae: vae.register_to_config(scaling_factor=0.5))
    for candidate, message in ((other_encoder, "encoder weight 'encoder.conv_in.weight'"),
                               (other_scale, "scaling_factor")):
        out = tmp_path / "out"
        with pytest.raises(SystemExit, match=message):
            cli_main(["swap-decoder", "--model", base_model, "--autoencoder", candidate, "--out", str(out)])
        assert not out.exists()
