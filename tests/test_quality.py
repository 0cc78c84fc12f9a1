"""``persistworld quality``: the autoencoder (plain and as decoded), one clip against repeat-frame, replays."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from persistworld_env.constants import EXTERIOR_CAMERAS
from persistworld_env.models.image_codec import uint8_to_float
from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.cli import main as cli_main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40,
                             reference_cameras=EXTERIOR_CAMERAS)
    return str(model.save_pretrained(tmp_path_factory.mktemp("quality") / "model"))


def test_reconstruction_as_decoded_uses_the_episode_reference_for_reference_cameras(sim_dataset, model_dir):
    from persistworld_env.metrics import psnr
    from persistworld_env.models.image_codec import float_to_uint8
    from persistworld_env.models.vae_quality import SplitFrames, reconstruction_psnr
    from persistworld_env.quality import decoded_reconstruction_psnr

    model = WorldModel.from_pretrained(model_dir)
    frames = SplitFrames(sim_dataset, "all", max_episodes=2)
    picks = [0, 3, len(frames) - 1]  # the first frame of episode 0 (skipped) and two others
    ours = decoded_reconstruction_psnr(model, frames, picks)
    by_hand = []
    for i in picks[1:]:
        x, ref = frames.get([i])[0], frames.get([i - frames.locate(i)[1]])[0]  # (V, H, W, 3)
        decoded = model.codec.decode_views_float(model.codec.encode_views(x[None, None]), 3)[0, 0]
        decoded_ref = model.codec.decode_views_float(model.codec.encode_views(ref[None, None]), 3)[0, 0]
        out = decoded.clone()
        out[:2] = uint8_to_float(ref[:2]) + decoded[:2] - decoded_ref[:2]  # the two exterior cameras
        by_hand.append(psnr(float_to_uint8(out).numpy(), x))
    expected = np.mean(by_hand, axis=0)
    assert [ours[c] for c in ("exterior_1_left", "exterior_2_left", "wrist_left")] == pytest.approx(expected, abs=1e-4)
    plain = reconstruction_psnr(model.codec, frames, picks[1:])
    assert ours["wrist_left"] == pytest.approx(plain["wrist_left"], abs=1e-4)
    assert ours["exterior_1_left"] != pytest.approx(plain["exterior_1_left"], abs=1e-3)
    with pytest.raises(ValueError, match="first frames"):
        decoded_reconstruction_psnr(model, frames, [0])



def test_split_frames_poses_and_a_pose_gate_that_never_closes(sim_dataset):
    from persistworld_env.constants import CAMERAS
    from persistworld_env.data.dataset import WorldModelDataset
    from persistworld_env.models.vae_quality import SplitFrames
    from persistworld_env.quality import decoded_reconstruction_psnr, one_step_fidelity

    frames = SplitFrames(sim_dataset, "all", max_episodes=2)
    ep, row = frames.locate(5)
    np.testing.assert_array_equal(frames.poses([5])[0], frames.reader.load_pose(ep)[row * frames.frame_step])
    # scales far above any pose change: every figure equals that of the same weights decoded without the gate
    wide = {"wrist_left": {"position": 1e6, "rotation": 1e6}}
    torch.manual_seed(0)
    gated = WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40, reference_cameras=CAMERAS,
                             reference_pose_gate=wide)
    plain = WorldModel(dataclasses.replace(gated.config, reference_pose_gate={}), gated.autoencoder,
                       gated.normalizer, gated.denoiser)
    picks = [3, 7, len(frames) - 1]
    assert decoded_reconstruction_psnr(gated, frames, picks) == pytest.approx(
        decoded_reconstruction_psnr(plain, frames, picks), abs=1e-6)
    data = WorldModelDataset(sim_dataset, "all", normalizer=gated.normalizer)
    assert one_step_fidelity(gated, data, [0, 5]) == one_step_fidelity(plain, data, [0, 5])


def test_quality_command_writes_every_figure_per_camera(sim_dataset, model_dir, tmp_path, capsys):
    out = tmp_path / "q"
    assert cli_main(["quality", "--model", model_dir, "--data", str(sim_dataset), "--out", str(out),
                     "--val-episodes", "2", "--episodes", "1", "--samples", "4", "--steps", "2", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads((out / "quality.json").read_text())
    assert printed == saved and (out / "replay.mp4").is_file()
    cams = ["exterior_1_left", "exterior_2_left", "wrist_left"]
    for key in ("vae_psnr", "vae_psnr_as_decoded"):
        assert set(saved[key]) == set(cams) | {"mean"} and all(np.isfinite(v) for v in saved[key].values())
    for cam in cams:
        assert set(saved["one_step"][cam]) == {"psnr", "ssim", "baseline_psnr", "baseline_ssim"}
    assert saved["replay"]["episodes"] == [2] and np.array(saved["replay"]["psnr"]).shape == (3, 2)
    assert saved["vae_psnr_as_decoded"]["wrist_left"] == pytest.approx(saved["vae_psnr"]["wrist_left"], abs=0.5)


def test_quality_command_runs_in_bfloat16_and_says_so(sim_dataset, model_dir, tmp_path, capsys):
    out = tmp_path / "q16"
    assert cli_main(["quality", "--model", model_dir, "--data", str(sim_dataset), "--out", str(out),
                     "--val-episodes", "2", "--episodes", "1", "--samples", "2", "--steps", "1", "--dtype", "bfloat16", "--seed", "5"]) == 0
    saved = json.loads((out / "quality.json").read_text())
    assert saved["dtype"] == "bfloat16" and all(np.isfinite(v) for v in saved["vae_psnr"].values())
    assert saved["replay"]["seeds"] == [5]  # --seed seeds the replays too
    assert "(bfloat16)" in capsys.readouterr().out


def test_one_step_fidelity_fades_the_reference_by_each_new_frames_distance(sim_dataset, monkeypatch):
    """A clip sampled at future skip 2 has its new frames 2, 4, 6 and 8 model frames after the current one."""
    from persistworld_env.constants import CAMERAS
    from persistworld_env.data.dataset import SamplingConfig, WorldModelDataset
    from persistworld_env.quality import one_step_fidelity

    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer(), height=24, width=40, reference_cameras=CAMERAS,
                             reference_decay={"wrist_left": 0.5})
    data = WorldModelDataset(sim_dataset, "all", normalizer=model.normalizer, sampling=SamplingConfig(fixed_skip=2))
    seen = []
    real_weights = model.reference_weights
    monkeypatch.setattr(model, "reference_weights", lambda k, *a: seen.append(k.clone()) or real_weights(k, *a))
    one_step_fidelity(model, data, [0, 5])
    assert seen and all((k == torch.tensor([2, 4, 6, 8])).all() for k in seen)
