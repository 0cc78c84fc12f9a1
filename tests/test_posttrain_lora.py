"""Post-training parameters (LoRA adapters, old adapter, reference, merge) and branching the rollout engine."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from persistworld_env.models.lora import OLD_ADAPTER, TRAIN_ADAPTER, PolicyWeights
from persistworld_env.models.world_model import WorldModel
from persistworld_env.rollout import RolloutEngine
from persistworld_env.sim.env import default_pose_normalizer

H, W = 24, 40


def _model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel.build("tiny", default_pose_normalizer(), height=H, width=W)


def _inputs(b: int = 2):
    g = torch.Generator().manual_seed(1)
    args = (torch.randn(b, 5, 4, 9, 5, generator=g), torch.tensor([0.5, 4.0])[:b],
            torch.randn(b, 6, 4, 9, 5, generator=g), torch.randn(b, 4, 9, 5, generator=g))
    return args, {"poses": torch.rand(b, 11, 7, generator=g) * 2 - 1}


def _perturb(params, seed: int, scale: float = 0.05) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * scale)


@torch.no_grad()
def _predict(denoiser, args, kwargs) -> torch.Tensor:
    return denoiser(*args, **kwargs)


def test_adapters_sit_on_attention_and_feed_forward_and_start_at_the_base_model():
    model = _model()
    d = model.denoiser
    args, kwargs = _inputs()
    base = _predict(d, args, kwargs)
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    names = [n for n, p in d.named_parameters() if p.requires_grad]
    adapted = {re.sub(r".*transformer_blocks\.\d+\.", "", n.split(".lora_")[0]) for n in names if ".lora_" in n}
    # every projection but the cross-attention's query and key, which are inert (one key per query)
    assert adapted == {f"attn1.{p}" for p in ("to_q", "to_k", "to_v", "to_out.0")} | {"attn2.to_v", "attn2.to_out.0"} | {
        f"{f}.net.{p}" for f in ("ff", "ff_in") for p in ("0.proj", "2")}
    assert all(f".{TRAIN_ADAPTER}." in n for n in names if ".lora_" in n)
    assert {n for n in names if ".lora_" not in n} == {f"action_encoder.{n}" for n, _ in
                                                       d.action_encoder.named_parameters()}
    assert names == [n for n, p in d.named_parameters() if any(p is q for q in policy.trainable_parameters())]
    torch.testing.assert_close(_predict(d, args, kwargs), base, atol=1e-5, rtol=0)  # LoRA B = 0 at the start
    with policy.old():
        torch.testing.assert_close(_predict(d, args, kwargs), base, atol=1e-5, rtol=0)


def test_old_adapter_is_an_ema_of_the_trained_one_and_reference_stays_the_base():
    model = _model()
    d = model.denoiser
    args, kwargs = _inputs()
    base = _predict(d, args, kwargs)
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    _perturb(policy.trainable_parameters(), 0)
    trained = _predict(d, args, kwargs)
    assert (trained - base).abs().max() > 1e-3
    with policy.old():  # old still at the start
        torch.testing.assert_close(_predict(d, args, kwargs), base, atol=1e-5, rtol=0)
    layer = d.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q
    a_train, a_old = layer.lora_B[TRAIN_ADAPTER].weight.clone(), layer.lora_B[OLD_ADAPTER].weight.clone()
    enc_train = d.action_encoder.action_encode[0].weight.clone()
    with policy.old():
        enc_old = d.action_encoder.action_encode[0].weight.clone()
    policy.update_old(0.25)
    torch.testing.assert_close(layer.lora_B[OLD_ADAPTER].weight, 0.25 * a_old + 0.75 * a_train)
    with policy.old():
        torch.testing.assert_close(d.action_encoder.action_encode[0].weight, 0.25 * enc_old + 0.75 * enc_train)
    policy.update_old(0.0)
    for merged in (False, True):
        with policy.old(merged=merged):
            torch.testing.assert_close(_predict(d, args, kwargs), trained, atol=1e-5, rtol=0)
    with policy.reference():
        torch.testing.assert_close(_predict(d, args, kwargs), base, atol=1e-5, rtol=0)
    torch.testing.assert_close(_predict(d, args, kwargs), trained, atol=0, rtol=0)  # back to the trained policy
    assert all(p.requires_grad for p in policy.trainable_parameters())
    assert not layer.lora_A[OLD_ADAPTER].weight.requires_grad


def test_merged_sampling_restores_the_base_weights_exactly():
    model = _model()
    d = model.denoiser
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    _perturb(policy.trainable_parameters(), 1)
    policy.update_old(0.0)
    before = {k: v.clone() for k, v in d.state_dict().items()}
    args, kwargs = _inputs()
    with policy.old(merged=True):
        merged = _predict(d, args, kwargs)
    with policy.old():
        torch.testing.assert_close(merged, _predict(d, args, kwargs), atol=1e-5, rtol=0)
    assert all(torch.equal(before[k], v) for k, v in d.state_dict().items())


def test_checkpoint_state_round_trip():
    model = _model()
    d = model.denoiser
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    _perturb(policy.trainable_parameters(), 2)
    policy.update_old(0.5)
    state = policy.state_dict()
    other_model = _model()
    other = PolicyWeights(other_model.denoiser, lora_root=other_model.denoiser.unet,
                          fully_trained=[other_model.denoiser.action_encoder], lora_rank=4)
    other_model.denoiser.load_state_dict(d.state_dict())
    other.load_state_dict(state)
    args, kwargs = _inputs()
    with policy.old(), other.old():
        torch.testing.assert_close(_predict(d, args, kwargs), _predict(other_model.denoiser, args, kwargs))
    with pytest.raises(ValueError, match="shadow state"):
        other.load_state_dict({"old": state["old"][:-1]})


def test_merged_model_directory_loads_with_gym_make_and_predicts_like_the_adapters(tmp_path):
    import gymnasium as gym

    import persistworld_env  # noqa: F401

    model = _model()
    d = model.denoiser
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    _perturb(policy.trainable_parameters(), 3)
    args, kwargs = _inputs()
    trained = _predict(d, args, kwargs)
    merged = WorldModel(model.config, model.autoencoder, model.normalizer)
    merged.denoiser.load_state_dict(policy.merged_state_dict(), strict=True)
    merged.save_pretrained(tmp_path / "merged")
    env = gym.make("PersistWorld-DROID-v0", model=str(tmp_path / "merged"), sampling_steps=2, dtype="float32")
    loaded = env.unwrapped.model
    torch.testing.assert_close(_predict(loaded.denoiser, args, kwargs), trained, atol=1e-5, rtol=0)
    env.reset(seed=0)
    env.close()


def test_full_finetune_trains_everything_with_shadow_old_and_reference():
    model = _model()
    d = model.denoiser
    args, kwargs = _inputs()
    base = _predict(d, args, kwargs)
    policy = PolicyWeights(d, full_finetune=True, frozen=d.inert_parameters())
    trainable = policy.trainable_parameters()
    assert len(trainable) == len(list(d.parameters())) - len(d.inert_parameters()) > 0
    assert not any(p is q for p in trainable for q in d.inert_parameters())
    _perturb(policy.trainable_parameters(), 4, scale=0.01)
    trained = _predict(d, args, kwargs)
    with policy.old():
        torch.testing.assert_close(_predict(d, args, kwargs), base)
    with policy.reference():
        torch.testing.assert_close(_predict(d, args, kwargs), base)
    torch.testing.assert_close(_predict(d, args, kwargs), trained, atol=0, rtol=0)
    assert all(torch.equal(a, b) for a, b in zip(policy.merged_state_dict().values(), d.state_dict().values()))
    with pytest.raises(ValueError, match="lora_root"):
        PolicyWeights(_model().denoiser)


def test_branch_continues_each_rollout_k_times_and_leaves_the_engine_unchanged():
    model = _model()
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (1, 3, H, W, 3), dtype=np.uint8)
    pose = model.normalizer.denormalize(np.zeros(7, np.float32))[None]
    actions = np.tile(pose[:, None], (1, 4, 1))

    def engine() -> RolloutEngine:
        e = RolloutEngine(model).with_sampler(steps=2)
        e.reset(frames, pose, ["pick up the red cube"], seeds=[5])
        e.step(actions)  # some history before branching
        return e

    parent = engine()
    branch = parent.branch(3, seeds=[11, 12, 11])
    out = branch.step(np.repeat(actions, 3, axis=0))
    assert out.frames.shape == (3, 4, 3, H, W, 3) and out.inputs.clip.shape[0] == 3
    # Same seed, same state: same clip (up to the batch position's float rounding, which varies with threads).
    torch.testing.assert_close(out.latents[0], out.latents[2], atol=1e-4, rtol=0)
    assert (out.latents[0] - out.latents[1]).abs().max() > 1e-3  # different noise: another candidate
    torch.testing.assert_close(out.inputs.history[0], out.inputs.history[1])  # shared frozen prefix
    torch.testing.assert_close(out.inputs.clip[:, 1:], out.latents)
    one = parent.branch(1, seeds=[12]).step(actions)  # one by one = the same candidate
    torch.testing.assert_close(one.latents[0], out.latents[1], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(parent.step(actions).latents.numpy(), engine().step(actions).latents.numpy())
    assert parent.step(actions, decode=False).frames is None
    with pytest.raises(ValueError, match="one seed per branched rollout"):
        parent.branch(2, seeds=[1])
    with pytest.raises(RuntimeError, match="reset"):
        RolloutEngine(model).branch(2)


def test_running_average_of_the_trained_weights_is_exported_and_checkpointed():
    model = _model()
    d = model.denoiser
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4, average_decay=0.75)
    params = policy.trainable_parameters()
    start = [p.detach().clone() for p in params]
    _perturb(params, 5)
    first = [p.detach().clone() for p in params]
    policy.update_average()
    _perturb(params, 6)
    policy.update_average()
    # By hand: a1 = 0.75 start + 0.25 first; a2 = 0.75 a1 + 0.25 second.
    expected = [0.75 * (0.75 * s + 0.25 * f) + 0.25 * p.detach() for s, f, p in zip(start, first, params)]
    last = [p.detach().clone() for p in params]
    averaged = policy.merged_state_dict(averaged=True)
    assert all(torch.equal(p, q) for p, q in zip(params, last))  # exporting leaves the trained weights alone
    with torch.no_grad():
        for p, e in zip(params, expected):
            p.copy_(e)
    by_hand = policy.merged_state_dict()
    assert averaged.keys() == by_hand.keys()
    for key in averaged:
        torch.testing.assert_close(averaged[key], by_hand[key], atol=1e-6, rtol=0)
    # Checkpoint round trip; a state written without an average starts it at the loaded weights.
    other_model = _model()
    other = PolicyWeights(other_model.denoiser, lora_root=other_model.denoiser.unet,
                          fully_trained=[other_model.denoiser.action_encoder], lora_rank=4, average_decay=0.75)
    other_model.denoiser.load_state_dict(d.state_dict())
    other.load_state_dict(policy.state_dict())
    for key, value in other.merged_state_dict(averaged=True).items():
        torch.testing.assert_close(value, averaged[key], atol=0, rtol=0)
    other.load_state_dict({**policy.state_dict(), "average": None})
    for key, value in other.merged_state_dict(averaged=True).items():
        torch.testing.assert_close(value, by_hand[key], atol=0, rtol=0)
    plain = _model().denoiser
    with pytest.raises(RuntimeError, match="no running average"):
        PolicyWeights(plain, lora_root=plain.unet, lora_rank=4).merged_state_dict(averaged=True)
    with pytest.raises(ValueError, match="average_decay"):
        PolicyWeights(plain, lora_root=plain.unet, average_decay=1.0)


def test_old_policy_is_not_merged_under_16_bit_autocast():
    """With old == trained, the old policy must predict what the trained one does. Merging the adapters into
    bfloat16-rounded weights would lose most of a small adaptation, so under autocast the adapters run instead."""
    model = _model()
    d = model.denoiser
    args, kwargs = _inputs()
    policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in d.named_parameters():
            if ".lora_B." in n and f".{TRAIN_ADAPTER}" in n:
                p.normal_(0, 0.01)
    policy.update_old(0.0)  # old := trained
    trained = _predict(d, args, kwargs)
    with policy.old(merged=True):
        torch.testing.assert_close(_predict(d, args, kwargs), trained, atol=1e-5, rtol=0)  # float32: merged
    with torch.autocast("cpu", dtype=torch.bfloat16):
        trained = _predict(d, args, kwargs)
        with policy.old(merged=True):
            assert torch.equal(_predict(d, args, kwargs), trained)  # the same computation, not merged weights


def test_posttrain_samples_the_old_policy_with_autocast_entered_first():
    """posttrain's group collection: the old policy judges on entering whether merging is exact, so autocast must
    already be on; with old == trained it then predicts exactly what the trained one does under bfloat16."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    from training.posttrain import sampling_as_old

    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator = Accelerator(cpu=True, mixed_precision="bf16")
        d = _model().denoiser
        args, kwargs = _inputs()
        policy = PolicyWeights(d, lora_root=d.unet, fully_trained=[d.action_encoder], lora_rank=4)
        _perturb(policy.trainable_parameters(), 1)
        policy.update_old(0.0)  # old := trained
        with accelerator.autocast():
            trained = _predict(d, args, kwargs)
        with sampling_as_old(accelerator, policy):
            assert torch.equal(_predict(d, args, kwargs), trained)
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
