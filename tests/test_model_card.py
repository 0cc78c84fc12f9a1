"""Model cards keep every command of a model's lineage, listed in the order the commands ran."""
from __future__ import annotations

import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer
from training.model_card import add_section, card_commands

PRETRAINED = "# PersistWorld world model\n\n- command: `persistworld pretrain`\n\n## Validation\n\nfigures\n"


def _posttrained(base: str) -> str:
    return "# post-trained\n\n- command: `persistworld posttrain`\n\n## Base model\n\n" + base


def _tuned(card: str, name: str = "tune-decoder") -> str:
    return add_section(card, f"## Decoder tuned on the model's own latents\n\n- command: `persistworld {name}`\n")


def test_commands_come_in_the_order_they_ran_whatever_the_lineage():
    assert card_commands(PRETRAINED) == ["persistworld pretrain"]
    assert card_commands(_tuned(PRETRAINED)) == ["persistworld pretrain", "persistworld tune-decoder"]
    assert card_commands(_posttrained(PRETRAINED)) == ["persistworld pretrain", "persistworld posttrain"]
    assert card_commands(_posttrained(_tuned(PRETRAINED))) == [
        "persistworld pretrain", "persistworld tune-decoder", "persistworld posttrain"]
    assert card_commands(_tuned(_posttrained(PRETRAINED))) == [
        "persistworld pretrain", "persistworld posttrain", "persistworld tune-decoder"]
    assert card_commands(_tuned(_posttrained(_tuned(PRETRAINED, "tune-1")), "tune-2")) == [
        "persistworld pretrain", "persistworld tune-1", "persistworld posttrain", "persistworld tune-2"]
    assert card_commands("# no commands\n") == []


def test_an_added_section_keeps_the_base_models_card_whole():
    tuned = _tuned(_posttrained(PRETRAINED))
    assert tuned.endswith("## Base model\n\n" + PRETRAINED)  # the base part is still the base's card alone
    assert tuned.index("## Decoder tuned") < tuned.index("## Base model")


def test_tune_decoder_and_swap_decoder_cards_record_their_commands(tmp_path):
    from training.report import training_commands
    from training.swap_decoder import swap_decoder

    torch.manual_seed(0)
    model = WorldModel.build("tiny", default_pose_normalizer())
    model.save_pretrained(tmp_path / "m", model_card=_posttrained(PRETRAINED))
    model.autoencoder.save_pretrained(tmp_path / "vae")
    swapped = swap_decoder(str(tmp_path / "m"), str(tmp_path / "vae"), command="persistworld swap-decoder X")
    swapped.save_pretrained(tmp_path / "swapped")
    assert training_commands(str(tmp_path / "swapped")) == [
        "persistworld pretrain", "persistworld posttrain", "persistworld swap-decoder X"]
