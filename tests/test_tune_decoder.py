"""``persistworld tune-decoder``: the decoder fine-tuned on the model's own replay latents."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from persistworld_env.constants import CAMERAS, EXTERIOR_CAMERAS
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.models.image_codec import uint8_to_float
from persistworld_env.models.world_model import WorldModel
from persistworld_env.replay import load_replay_episode
from persistworld_env.sim.env import default_pose_normalizer
from training.cli import main as cli_main
from training.train_autoencoder import ENCODER_PREFIXES
from training.tune_decoder import PAIRS_FILE, DecoderTuneConfig, decoded_output, pixel_loss, tune_decoder

H, W = 24, 40


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W,
                             reference_cameras=EXTERIOR_CAMERAS)
    return str(model.save_pretrained(tmp_path_factory.mktemp("tune_base") / "model", model_card="# base\n"))


def _config(model, data, out, **kw) -> DecoderTuneConfig:
    base = dict(model=str(model), data_dir=str(data), out_dir=str(out), episodes=2, horizon=2, val_every=2,
                replay_batch=2, steps=8, batch_size=4, lr=2e-3, warmup_steps=1, eval_every=4, checkpoint_every=4,
                progress=False)
    base.update(kw)
    return DecoderTuneConfig(**base)


def test_decoded_output_is_what_the_rollout_decodes(model_dir):
    model = WorldModel.from_pretrained(model_dir)
    rng = np.random.default_rng(0)
    ref = rng.integers(0, 256, (2, 3, H, W, 3), dtype=np.uint8)
    z_ref = model.codec.encode_views(ref[:, None])[:, 0]
    z = z_ref + torch.from_numpy(rng.normal(0, 0.3, z_ref.shape).astype(np.float32))
    mask = torch.tensor([1.0, 1.0, 0.0])
    with torch.no_grad():
        ours = decoded_output(model.autoencoder, z, uint8_to_float(ref), z_ref, mask, model.codec.scaling_factor)
        # the inference path: LatentCodec decoding plus WorldModel.reference_correction
        weights = model.reference_weights(1)[None, :, None, None, None]  # (1, V, 1, 1, 1): 1, 1, 0
        expected = model.codec.decode_views_float(z[:, None], 3)[:, 0] + weights * model.reference_correction(ref, z_ref)[:, 0]
    assert torch.allclose(ours, expected, atol=1e-5)
    plain = model.codec.decode_views_float(z[:, None], 3)[:, 0]
    assert torch.allclose(ours[:, 2], plain[:, 2], atol=1e-5) and not torch.allclose(ours[:, 0], plain[:, 0])
    with torch.no_grad():  # a per-sample mask: sample 0 relative on the exterior cameras, sample 1 plain everywhere
        mixed = decoded_output(model.autoencoder, z, uint8_to_float(ref), z_ref, torch.tensor([[1.0, 1, 0], [0, 0, 0]]),
                               model.codec.scaling_factor)
    assert torch.allclose(mixed[0], expected[0], atol=1e-5) and torch.allclose(mixed[1], plain[1], atol=1e-5)


def test_tuning_trains_only_the_decoder_and_writes_a_loadable_model(sim_dataset, model_dir, tmp_path):
    out = tmp_path / "run"
    summary = tune_decoder(_config(model_dir, sim_dataset, out, steps=16))
    assert summary["finished"] and summary["train_episodes"] == 1 and summary["val_episodes"] == 1
    assert set(summary["val_psnr"]) == {"exterior_1_left", "exterior_2_left", "wrist_left", "mean"}
    losses = summary["loss_history"]
    assert np.mean(losses[-4:]) < np.mean(losses[:4])
    old, new = WorldModel.from_pretrained(model_dir), WorldModel.from_pretrained(out / "model")
    a, b = old.autoencoder.state_dict(), new.autoencoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a if k.startswith(ENCODER_PREFIXES))
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("decoder."))
    da, db = old.denoiser.state_dict(), new.denoiser.state_dict()
    assert all(torch.equal(da[k], db[k]) for k in da)
    assert new.autoencoder.config.scaling_factor == old.autoencoder.config.scaling_factor
    with np.load(out / PAIRS_FILE) as pairs:
        assert pairs["generated"].shape[:2] == (2, 8) and pairs["truth"].shape == (2, 8, 3, H, W, 3)
    card = (out / "model" / "README.md").read_text()
    assert card.startswith("# base") and "tune-decoder" in card


def test_a_pose_gated_model_tunes_on_the_recorded_pose_changes(sim_dataset, tmp_path):
    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W, reference_cameras=CAMERAS,
                             reference_pose_gate={"wrist_left": {"position": 0.02, "rotation": 0.05}})
    gated = model.save_pretrained(tmp_path / "gated")
    assert tune_decoder(_config(gated, sim_dataset, tmp_path / "run", steps=4))["finished"]
    with np.load(tmp_path / "run" / PAIRS_FILE) as data:
        pairs = {k: data[k] for k in data.files}
    episode = load_replay_episode(LeRobotEpisodes(sim_dataset), int(pairs["episode"][1]), 2)
    np.testing.assert_allclose(pairs["pose_change"][1], (episode.poses - episode.first_pose).reshape(8, 7))
    del pairs["pose_change"]  # pairs collected before poses were kept cannot gate
    (tmp_path / "old").mkdir()
    np.savez(tmp_path / "old" / PAIRS_FILE, **pairs)
    with pytest.raises(ValueError, match="without poses"):
        tune_decoder(_config(gated, sim_dataset, tmp_path / "old"))


def test_interrupted_then_resumed_tuning_equals_uninterrupted(sim_dataset, model_dir, tmp_path):
    full = tune_decoder(_config(model_dir, sim_dataset, tmp_path / "a"))
    part = tune_decoder(_config(model_dir, sim_dataset, tmp_path / "b", stop_after=4))
    assert part["steps"] == 4 and not part["finished"] and not (tmp_path / "b" / "model").exists()
    resumed = tune_decoder(_config(model_dir, sim_dataset, tmp_path / "b", resume=True))
    assert resumed["loss_history"] == full["loss_history"][4:]
    a = WorldModel.from_pretrained(tmp_path / "a" / "model").autoencoder.state_dict()
    b = WorldModel.from_pretrained(tmp_path / "b" / "model").autoencoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_keep_best_ends_with_the_best_validation_and_resumes_exactly(sim_dataset, model_dir, tmp_path):
    kw = dict(steps=8, eval_every=2, checkpoint_every=2, keep_best=True, lr=2e-2)
    full = tune_decoder(_config(model_dir, sim_dataset, tmp_path / "a", **kw))
    history = dict(full["val_mean_history"])
    assert sorted(history) == [2, 4, 6, 8]
    assert full["kept_step"] == max(history, key=history.get) < 8  # here the last validation is not the best
    assert full["val_psnr"]["mean"] == pytest.approx(history[full["kept_step"]], abs=1e-9)
    tune_decoder(_config(model_dir, sim_dataset, tmp_path / "b", stop_after=4, **kw))
    resumed = tune_decoder(_config(model_dir, sim_dataset, tmp_path / "b", resume=True, **kw))
    assert resumed["val_mean_history"] == full["val_mean_history"] and resumed["kept_step"] == full["kept_step"]
    a = WorldModel.from_pretrained(tmp_path / "a" / "model").autoencoder.state_dict()
    b = WorldModel.from_pretrained(tmp_path / "b" / "model").autoencoder.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert f"step {full['kept_step']}" in (tmp_path / "a" / "model" / "README.md").read_text()


def test_bad_requests_get_clear_errors(sim_dataset, model_dir, tmp_path):
    with pytest.raises(ValueError, match="real_fraction"):
        tune_decoder(_config(model_dir, sim_dataset, tmp_path / "a", real_fraction=1.0))
    with pytest.raises(ValueError, match="real_decoding"):
        tune_decoder(_config(model_dir, sim_dataset, tmp_path / "e", real_decoding="absolute"))
    with pytest.raises(ValueError, match="val_every"):
        tune_decoder(_config(model_dir, sim_dataset, tmp_path / "b", episodes=1))
    with pytest.raises(SystemExit, match="long enough"):
        cli_main(["tune-decoder", "--model", model_dir, "--data", str(sim_dataset), "--out", str(tmp_path / "c"),
                  "--horizon", "500", "--episodes", "2", "--val-every", "2", "--no-progress"])
    broken = tmp_path / "d"
    broken.mkdir()
    (broken / PAIRS_FILE).write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="corrupt"):
        tune_decoder(_config(model_dir, sim_dataset, broken))


def test_a_missing_model_directory_is_a_clear_command_error(sim_dataset, tmp_path):
    with pytest.raises(SystemExit, match="not a PersistWorld model directory"):
        cli_main(["tune-decoder", "--model", str(tmp_path / "nowhere"), "--data", str(sim_dataset),
                  "--out", str(tmp_path / "out"), "--no-progress"])
    with pytest.raises(SystemExit, match="not a PersistWorld model directory"):
        cli_main(["swap-decoder", "--model", str(tmp_path / "nowhere"), "--autoencoder", str(tmp_path),
                  "--out", str(tmp_path / "out2")])



def test_pixel_loss_adds_one_minus_ssim_as_scikit_image_computes_it():
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    truth = rng.uniform(-1, 1, (2, 3, 3, 16, 20))  # (N, V, 3, H, W) in [-1, 1]
    output = np.clip(truth + rng.normal(0, 0.2, truth.shape), -1, 1)
    out_t = torch.tensor(output, requires_grad=True)
    loss = pixel_loss(out_t, torch.tensor(truth), l1_weight=0.5, ssim_weight=2.0)
    mse, l1 = ((output - truth) ** 2).mean(), np.abs(output - truth).mean()
    to_hwc = lambda z: ((z + 1) / 2).reshape(-1, 3, 16, 20).transpose(0, 2, 3, 1)  # noqa: E731
    ref = np.mean([structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                         data_range=1, channel_axis=-1) for a, b in zip(to_hwc(output), to_hwc(truth))])
    assert float(loss.detach()) == pytest.approx(mse + 0.5 * l1 + 2.0 * (1 - ref), rel=1e-5)
    loss.backward()
    assert out_t.grad is not None and float(out_t.grad.abs().sum()) > 0
    exact = torch.tensor(truth)
    assert float(pixel_loss(exact, exact, 0.0, 2.0)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="loss weights must be >= 0"):
        DecoderTuneConfig(model="m", data_dir="d", out_dir="o", ssim_weight=-1).validate()


def test_two_process_cpu_run_with_torchrun(sim_dataset, model_dir, tmp_path):
    """Under 2 processes (gloo on the CPU) accelerate wraps what it prepares in DDP: decoding must be its forward."""
    import subprocess
    import sys
    from pathlib import Path

    from safetensors.torch import load_file

    from training.tune_decoder import _save_pairs, collect_pairs

    out = tmp_path / "ddp"
    _save_pairs(out / PAIRS_FILE, collect_pairs(WorldModel.from_pretrained(model_dir),
                                                _config(model_dir, sim_dataset, out)))  # collected once, here
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "training.cli", "tune-decoder", "--model", model_dir,
           "--data", str(sim_dataset), "--out", str(out), "--episodes", "2", "--horizon", "2", "--val-every", "2",
           "--steps", "2", "--batch-size", "2", "--eval-every", "2", "--checkpoint-every", "2", "--num-threads", "1",
           "--no-progress"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    saved = load_file(out / "checkpoints" / "checkpoint-00000002" / "model.safetensors")
    keys = {k.removeprefix("module.") for k in saved}
    assert keys == set(WorldModel.from_pretrained(model_dir).autoencoder.state_dict())  # the autoencoder's keys
    WorldModel.from_pretrained(out / "model")
