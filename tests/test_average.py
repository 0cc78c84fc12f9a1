"""``persistworld average``: the weight average of fine-tunes of one base model."""
from __future__ import annotations

import pytest
import torch

from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.cli import main as cli_main

H, W = 24, 40


def _fine_tunes(tmp_path, n: int = 3) -> list[str]:
    """``n`` copies of one tiny base model, each with its denoiser moved by different noise."""
    torch.manual_seed(0)
    base = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        model = WorldModel(base.config, base.autoencoder, base.normalizer)
        model.denoiser.load_state_dict(base.denoiser.state_dict())
        with torch.no_grad():
            for p in model.denoiser.parameters():
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
        card = f"# fine-tune {i}\n\n- command: `persistworld posttrain --seed {i}`\n"
        paths.append(str(model.save_pretrained(tmp_path / f"ft{i}", model_card=card)))
    return paths


def test_the_average_is_the_weighted_mean_of_the_denoisers_and_loads_as_a_model(tmp_path):
    paths = _fine_tunes(tmp_path)
    states = [WorldModel.from_pretrained(p).denoiser.state_dict() for p in paths]
    assert cli_main(["average", "--model", paths[0], "--model", paths[1], "--model", paths[2],
                     "--weights", "1,1,2", "--out", str(tmp_path / "avg")]) == 0
    avg = WorldModel.from_pretrained(tmp_path / "avg")
    for key, value in avg.denoiser.state_dict().items():
        by_hand = 0.25 * states[0][key] + 0.25 * states[1][key] + 0.5 * states[2][key]
        torch.testing.assert_close(value, by_hand, atol=1e-6, rtol=0)
    card = (tmp_path / "avg" / "README.md").read_text()
    assert "weight average" in card and "weight 0.500" in card
    assert all(f"# fine-tune {i}" in card for i in range(3)) and "persistworld average" in card
    # The report's Reproduce section finds the sources' commands before the average's own.
    from training.report import training_commands
    commands = training_commands(str(tmp_path / "avg"))
    assert commands[:3] == [f"persistworld posttrain --seed {i}" for i in range(3)]
    assert len(commands) == 4 and commands[3].startswith("persistworld average --model")
    assert training_commands(paths[0]) == ["persistworld posttrain --seed 0"]
    # The autoencoder and the normalisation are the first model's, unchanged.
    first = WorldModel.from_pretrained(paths[0])
    assert all(torch.equal(a, b) for a, b in zip(avg.autoencoder.state_dict().values(),
                                                  first.autoencoder.state_dict().values()))
    # A model averaged with itself is itself.
    same = WorldModel.from_pretrained(paths[0])
    from training.average import average_models
    twice = average_models([paths[0], paths[0]])
    assert all(torch.equal(a, b) for a, b in zip(twice.denoiser.state_dict().values(),
                                                  same.denoiser.state_dict().values()))


def test_models_of_different_bases_or_bad_weights_are_refused(tmp_path):
    from training.average import average_models

    paths = _fine_tunes(tmp_path, 2)
    torch.manual_seed(1)
    other = WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W).save_pretrained(tmp_path / "o")
    with pytest.raises(ValueError, match="different autoencoders"):
        average_models([paths[0], str(other)])
    moved = WorldModel.from_pretrained(paths[0])
    moved.normalizer = PoseNormalizer(moved.normalizer.low + 0.1, moved.normalizer.high + 0.1)
    moved.save_pretrained(tmp_path / "moved")
    with pytest.raises(ValueError, match="pose normalisations"):
        average_models([paths[0], str(tmp_path / "moved")])
    with pytest.raises(ValueError, match="at least two"):
        average_models(paths[:1])
    with pytest.raises(ValueError, match="2 weights for 3 models"):
        average_models([*paths, paths[0]], [1, 1])
    with pytest.raises(ValueError, match="finite and > 0"):
        average_models(paths, [1, float("nan")])
    with pytest.raises(SystemExit, match="persistworld average: .*finite"):
        cli_main(["average", "--model", paths[0], "--model", paths[1], "--weights", "1,-1",
                  "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit, match="persistworld average: .*float"):
        cli_main(["average", "--model", paths[0], "--model", paths[1], "--weights", "1,a",
                  "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()  # nothing written on a refused run
