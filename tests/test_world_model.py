"""World model: denoiser routing, objective, sampler, rollout engine, save/load, Ctrl-World checkpoints."""
from __future__ import annotations

import json

import math

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention

from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.models.autoencoder import ModelLoadError, build_autoencoder
from persistworld_env.models.clip_sampler import (
    CPU_MAX_BATCH, SamplerConfig, default_max_batch, in_micro_batches, sample_clip,
)
from persistworld_env.models.ctrl_world import load_ctrl_world_checkpoint, to_ctrl_world_state_dict
from persistworld_env.models.denoiser import FrameTokenAttnProcessor
from persistworld_env.models.image_codec import float_to_uint8
from persistworld_env.models.objective import edm_loss
from persistworld_env.models.world_model import WorldModel, dtype_name, model_dir, pose_gate, relative_decoding
from persistworld_env.rollout import RolloutEngine, _History

H, W = 24, 40


@pytest.fixture(scope="module")
def normalizer():
    return PoseNormalizer(low=np.array([0.3, -0.3, 0.0, -0.1, -0.1, -1.0, 0.0]),
                          high=np.array([0.7, 0.3, 0.4, 0.1, 0.1, 1.0, 1.0]))


@pytest.fixture(scope="module")
def model(normalizer):
    torch.manual_seed(0)
    return WorldModel.build("tiny", normalizer, height=H, width=W).eval()


def _start(model, b=2, seed=0):
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (b, 3, H, W, 3), dtype=np.uint8)
    poses = np.tile(model.normalizer.denormalize(np.zeros(7)), (b, 1)).astype(np.float32)
    return frames, poses


def test_per_frame_token_processor_matches_manual_attention():
    torch.manual_seed(0)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    b, f, n = 2, 3, 5
    hidden = torch.randn(b * f, n, 8)
    tokens = torch.randn(b, f, 6).repeat_interleave(f, dim=0)  # what the UNet passes: (B*F, F, d)
    attn.set_processor(FrameTokenAttnProcessor("per_frame"))
    out = attn(hidden, encoder_hidden_states=tokens)
    rows = torch.arange(b * f)
    expected_ctx = tokens[rows, rows % f][:, None]  # row b*F + f sees token f only
    from diffusers.models.attention_processor import AttnProcessor2_0
    attn.set_processor(AttnProcessor2_0())
    torch.testing.assert_close(out, attn(hidden, encoder_hidden_states=expected_ctx))
    attn.set_processor(FrameTokenAttnProcessor("first"))
    torch.testing.assert_close(attn(hidden, encoder_hidden_states=tokens),
                               AttnProcessor2_0()(attn, hidden, tokens[:, :1]))


@pytest.mark.parametrize("residual, rescale", [(False, 1.0), (True, 2.0)])
def test_single_key_shortcut_has_the_attention_gradients(residual, rescale):
    """The processor skips the query/key projections and the kernel (one key: softmax weight 1); outputs and
    parameter gradients equal diffusers' attention over the selected token."""
    from diffusers.models.attention_processor import AttnProcessor2_0
    torch.manual_seed(1)
    attn = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4, residual_connection=residual,
                     rescale_output_factor=rescale)
    hidden = torch.randn(6, 5, 8)
    tokens = torch.randn(6, 3, 6)
    grads = []
    for processor, context in ((FrameTokenAttnProcessor("first"), tokens),
                               (AttnProcessor2_0(), tokens[:, :1])):
        attn.zero_grad()
        attn.set_processor(processor)
        out = attn(hidden, encoder_hidden_states=context)
        (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        grads.append((out.detach(), {n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                                     for n, p in attn.named_parameters()}))
    (fast, fast_grads), (ref, ref_grads) = grads
    torch.testing.assert_close(fast, ref)
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], msg=name)
    assert ref_grads["to_q.weight"].abs().max() < 1e-6  # the query never mattered


def test_inert_parameters_do_not_change_the_output(model):
    """The cross-attention's query/key projections and query norm are inert: changing them leaves the prediction
    as it was; changing the value projection next to them does not."""
    d = model.denoiser
    inert = d.inert_parameters()
    names = [n for n, p in d.named_parameters() if any(p is q for q in inert)]
    assert names and all(any(f".{k}." in n for k in ("attn2.to_q", "attn2.to_k", "norm2")) for n in names)
    g = torch.Generator().manual_seed(0)
    c = d.config.latent_channels
    h, w = 9, 5  # three views of 3x5 latents, stacked along height
    args = (torch.randn(2, 5, c, h, w, generator=g), torch.full((2,), 2.0), torch.randn(2, 6, c, h, w, generator=g),
            torch.randn(2, c, h, w, generator=g))
    poses = torch.rand(2, d.config.num_frames, 7, generator=g) * 2 - 1
    with torch.no_grad():
        before = d(*args, poses=poses)
        saved = [p.clone() for p in inert]
        for p in inert:
            p.add_(torch.randn(p.shape, generator=g))
        same = d(*args, poses=poses)
        for p, q in zip(inert, saved):
            p.copy_(q)
        value = next(p for n, p in d.named_parameters() if ".attn2.to_v." in n)
        value.add_(0.5)
        changed = d(*args, poses=poses)
        value.sub_(0.5)
    torch.testing.assert_close(same, before, rtol=0, atol=1e-6)
    assert (changed - before).abs().max() > 1e-3


def test_history_buffer_reads_sparse_offsets_and_stays_bounded():
    h = _History(torch.tensor(0), torch.tensor(0), window=8)
    offsets = (-7, -6, -5, -4, -3, -2)
    assert [int(h.read(o)[0]) for o in offsets] == [0] * 6  # clamped to the first frame
    for i in range(1, 30):
        h.append(torch.tensor(i), torch.tensor(i))
    # length 30: entries 23..28; current = 29; offset 0 is the real first frame
    assert [int(h.read(o)[0]) for o in offsets] == [23, 24, 25, 26, 27, 28]
    assert int(h.read(0)[0]) == 0 and int(h.recent[-1][0]) == 29
    assert len(h.recent) == 8


def test_edm_loss_decreases_when_overfitting(model):
    torch.manual_seed(0)
    latents = torch.randn(2, 11, 4, 9, 5)
    poses = torch.rand(2, 11, 7) * 2 - 1
    den = WorldModel.build("tiny", model.normalizer, height=H, width=W).denoiser.train()
    opt = torch.optim.Adam(den.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        g = torch.Generator().manual_seed(step % 3)
        loss = edm_loss(den, latents, poses, ["pick up the red cube"] * 2, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_cfg_scale_one_equals_conditional_branch(model):
    torch.manual_seed(0)
    hist, cur = torch.randn(1, 6, 4, 9, 5), torch.randn(1, 4, 9, 5)
    tokens = model.denoiser.tokens(torch.rand(1, 11, 7) * 2 - 1)
    plain = sample_clip(model.denoiser, hist, cur, tokens, SamplerConfig(steps=3, guidance=1.0),
                        [torch.Generator().manual_seed(1)])
    batched = sample_clip(model.denoiser, hist, cur, tokens, SamplerConfig(steps=3, guidance=1.0 + 1e-7),
                          [torch.Generator().manual_seed(1)])
    torch.testing.assert_close(plain, batched, atol=1e-4, rtol=1e-4)
    guided = sample_clip(model.denoiser, hist, cur, tokens, SamplerConfig(steps=3, guidance=3.0),
                         [torch.Generator().manual_seed(1)])
    assert not torch.allclose(plain, guided)


def test_in_micro_batches_slices_and_concatenates():
    sizes = []

    def fn(a, b):
        sizes.append(a.shape[0])
        return a * 10 + b

    a, b = torch.arange(7.0), torch.ones(7)
    torch.testing.assert_close(in_micro_batches(fn, 3, a, b), a * 10 + 1)
    assert sizes == [3, 3, 1]
    sizes.clear()
    in_micro_batches(fn, None, a, b)
    in_micro_batches(fn, 7, a, b)
    assert sizes == [7, 7]
    with pytest.raises(ValueError, match="max_batch"):
        in_micro_batches(fn, 0, a, b)
    assert default_max_batch("cpu") == CPU_MAX_BATCH and default_max_batch(torch.device("cuda")) is None


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_micro_batched_sampling_equals_one_forward(model, guidance):
    torch.manual_seed(0)
    hist, cur = torch.randn(4, 6, 4, 9, 5), torch.randn(4, 4, 9, 5)
    tokens = model.denoiser.tokens(torch.rand(4, 11, 7) * 2 - 1)
    config = SamplerConfig(steps=2, guidance=guidance)
    calls = []
    hook = model.denoiser.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        def run(max_batch):
            gens = [torch.Generator().manual_seed(i) for i in range(4)]
            return sample_clip(model.denoiser, hist, cur, tokens, config, gens, max_batch=max_batch)
        whole = run(None)
        n_whole = len(calls)
        split = run(3)
    finally:
        hook.remove()
    per_step = 8 if guidance != 1.0 else 4  # both CFG branches go through the same forwards
    assert calls[:n_whole] == [per_step] * 2
    assert calls[n_whole:] == ([3, 3, 2] if guidance != 1.0 else [3, 1]) * 2
    torch.testing.assert_close(split, whole, atol=1e-4, rtol=1e-4)


def test_engine_micro_batches_rollouts_and_branches_keep_the_setting(model):
    frames, poses = _start(model, b=3)
    actions = np.tile(poses[:, None], (1, 4, 1))
    outputs = []
    for max_batch in (None, 1):
        eng = RolloutEngine(model)
        assert eng.max_batch == CPU_MAX_BATCH  # the model is on the CPU
        eng.max_batch = max_batch
        eng.reset(frames, poses, seeds=[0, 1, 2])
        outputs.append(eng.step(actions).frames.astype(int))
        assert eng.branch(2).max_batch == max_batch
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1)


def test_same_seed_same_rollout_and_batch_independence(model):
    frames, poses = _start(model)
    actions = np.tile(poses[:, None], (1, 4, 1))
    runs = []
    for _ in range(2):
        eng = RolloutEngine(model)
        eng.reset(frames, poses, ["pick up the red cube", None], seeds=[7, 8])
        runs.append([eng.step(actions).frames for _ in range(3)])
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    solo = RolloutEngine(model)  # rollout 0 alone gives the same frames as inside the batch
    solo.reset(frames[:1], poses[:1], ["pick up the red cube"], seeds=[7])
    np.testing.assert_allclose(solo.step(actions[:1]).frames[0].astype(int), runs[0][0][0].astype(int), atol=1)
    other = RolloutEngine(model)
    other.reset(frames, poses, seeds=[9, 10])
    assert not np.array_equal(other.step(actions).frames, runs[0][0])


def test_rollout_output_shapes_and_reset_slots(model):
    frames, poses = _start(model, b=3)
    eng = RolloutEngine(model)
    eng.reset(frames, poses, seeds=[0, 1, 2])
    out = eng.step(np.tile(poses[:, None], (1, 4, 1)))
    assert out.frames.shape == (3, 4, 3, H, W, 3) and out.frames.dtype == np.uint8
    assert out.latents.shape == (3, 4, 4, 9, 5)
    eng.reset_slots([1], frames[1:2], poses[1:2], seeds=[5])
    assert eng._histories[1].length == 1 and eng._histories[0].length == 2


@pytest.mark.parametrize("bad, match", [
    (lambda f, p: (f[..., :2], p), "frames must be uint8"),
    (lambda f, p: (f.astype(np.float32), p), "frames must be uint8"),
    (lambda f, p: (f, p[:, :6]), "shape"),
    (lambda f, p: (f, np.full_like(p, np.nan)), "NaN"),
])
def test_rollout_rejects_bad_inputs(model, bad, match):
    frames, poses = _start(model)
    with pytest.raises(ValueError, match=match):
        RolloutEngine(model).reset(*bad(frames, poses))


def test_step_rejects_bad_poses_and_needs_reset(model):
    eng = RolloutEngine(model)
    with pytest.raises(RuntimeError, match="reset"):
        eng.step(np.zeros((1, 4, 7)))
    frames, poses = _start(model)
    eng.reset(frames, poses, seeds=[0, 1])
    with pytest.raises(ValueError, match="shape"):
        eng.step(np.zeros((2, 3, 7)))
    bad = np.tile(poses[:, None], (1, 4, 1))
    bad[0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        eng.step(bad)
    assert eng._histories[0].length == 1  # nothing appended by the rejected steps


def test_save_load_gives_identical_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m", model_card="# test card\n")
    loaded = WorldModel.from_pretrained(tmp_path / "m")
    assert loaded.model_card.startswith("# test card")
    assert loaded.config == model.config
    frames, poses = _start(model)
    outs = []
    for m in (model, loaded):
        eng = RolloutEngine(m)
        eng.reset(frames, poses, ["push the blue cup to the left"] * 2, seeds=[3, 4])
        outs.append(eng.step(np.tile(poses[:, None], (1, 4, 1))).latents)
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_roll_out_close_to_float32(model, tmp_path, dtype):
    """Weights loaded in half precision; the sampler and the latents stay float32, the frames stay close."""
    d = model.save_pretrained(tmp_path / "m")
    frames, poses = _start(model)
    outs = {}
    for name in (None, dtype):
        m = WorldModel.from_pretrained(d, dtype=name)
        assert m.denoiser.dtype == (torch.float32 if name is None else getattr(torch, dtype))
        eng = RolloutEngine(m)
        eng.reset(frames, poses, seeds=[3, 4])
        steps = [eng.step(np.tile(poses[:, None], (1, 4, 1))) for _ in range(2)]
        assert all(s.latents.dtype == torch.float32 for s in steps)
        outs[name] = np.stack([s.frames for s in steps]).astype(float)
    mse = np.mean((outs[None] - outs[dtype]) ** 2)
    assert 0 < mse and 10 * np.log10(255**2 / mse) > 35  # differs by rounding only (measured 45-57 dB)


def test_unknown_dtype_is_refused(model, tmp_path):
    d = model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="unsupported model dtype 'int8'.*bfloat16"):
        WorldModel.from_pretrained(d, dtype="int8")


def test_dtype_names_as_recorded_in_result_files():
    assert dtype_name(None) == "float32" and dtype_name(torch.bfloat16) == "bfloat16"
    assert dtype_name("torch.float16") == "float16"
    with pytest.raises(ValueError, match="unsupported model dtype"):
        dtype_name("int8")


def test_corrupt_or_missing_model_directory(model, tmp_path):
    with pytest.raises(ModelLoadError, match="missing"):
        WorldModel.from_pretrained(tmp_path / "nowhere")
    d = model.save_pretrained(tmp_path / "m")
    weights = d / "denoiser.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="denoiser.safetensors"):
        WorldModel.from_pretrained(d)


@pytest.mark.parametrize("name, edit", [
    ("config.json", lambda c: {k: v for k, v in c.items() if k != "denoiser"}),  # a field missing
    ("config.json", lambda c: {**c, "from_a_newer_version": 1}),                # a field unknown
    ("config.json", lambda c: [1, 2]),                                            # not an object
    ("config.json", lambda c: {**c, "sampler": {**c["sampler"], "eta": 0.5}}),    # a nested field unknown
    ("normalization.json", lambda n: {k: v for k, v in n.items() if k != "low"}),
    ("normalization.json", lambda n: {**n, "low": n["low"][:6]}),
])
def test_a_damaged_config_or_normalisation_file_names_itself(model, tmp_path, name, edit):
    """Valid JSON with the wrong content is a ModelLoadError naming the file (what callers like the demo catch)."""
    d = model.save_pretrained(tmp_path / "m")
    (d / name).write_text(json.dumps(edit(json.loads((d / name).read_text()))))
    with pytest.raises(ModelLoadError, match=f"{d / name} is not a valid"):
        WorldModel.from_pretrained(d)


def test_model_dir_resolves_embedded_names_and_passes_paths_through(tmp_path):
    embedded = model_dir("default")
    assert embedded.parts[-2:] == ("assets", "default_model") and (embedded / "config.json").is_file()
    assert model_dir(tmp_path / "default") == tmp_path / "default"  # a path, not the name
    assert model_dir(str(tmp_path)) == tmp_path


def test_ctrl_world_key_layout_round_trip(normalizer, tmp_path):
    """A reduced-width model of the ctrl-world structure, saved as Ctrl-World saves, loads back exactly."""
    from diffusers import AutoencoderKLTemporalDecoder

    small = dict(block_out_channels=(32, 32, 32, 32), num_attention_heads=(2, 2, 2, 2), token_dim=32,
                 addition_time_embed_dim=8, layers_per_block=1)
    vae = lambda: AutoencoderKLTemporalDecoder(block_out_channels=(32, 32), down_block_types=("DownEncoderBlock2D",) * 2,
                                                layers_per_block=1, latent_channels=4)  # noqa: E731
    torch.manual_seed(0)
    src = WorldModel.build("ctrl-world", normalizer, height=16, width=16, autoencoder=vae(), denoiser_overrides=small)
    assert (src.config.sampler.steps, src.config.sampler.guidance, src.config.sampler.sigma_max) == (50, 2.0, 700.0)
    state = to_ctrl_world_state_dict(src)
    assert any(k.startswith("unet.down_blocks.") for k in state)
    assert {"action_encoder.action_encode.0.weight", "action_encoder.action_encode.4.bias"} <= set(state)
    assert any(k.startswith("vae.encoder.") for k in state)
    state["text_encoder.text_model.embeddings.position_ids"] = torch.arange(4)  # CLIP keys are skipped
    torch.save(state, tmp_path / "checkpoint-10.pt")
    torch.manual_seed(1)
    dst = WorldModel.build("ctrl-world", normalizer, height=16, width=16, autoencoder=vae(), denoiser_overrides=small)
    report = load_ctrl_world_checkpoint(dst, tmp_path / "checkpoint-10.pt")
    assert report.unused == ["text_encoder.text_model.embeddings.position_ids"]
    for (k1, v1), (k2, v2) in zip(src.state_dict().items(), dst.state_dict().items()):
        assert k1 == k2 and torch.equal(v1, v2), k1
    # a checkpoint that wraps its tensors in {"state_dict": ...} loads the same from a path or as a loaded dict
    torch.save({"state_dict": state}, tmp_path / "checkpoint-wrapped.pt")
    for given in (tmp_path / "checkpoint-wrapped.pt", {"state_dict": state}):
        assert load_ctrl_world_checkpoint(dst, given).unused == report.unused
    truncated = tmp_path / "checkpoint-bad.pt"
    truncated.write_bytes((tmp_path / "checkpoint-10.pt").read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="checkpoint-bad.pt"):
        load_ctrl_world_checkpoint(dst, truncated)
    del state["unet.conv_in.weight"]
    with pytest.raises(ModelLoadError, match="unet"):
        load_ctrl_world_checkpoint(dst, state)


def test_autoencoder_channel_mismatch_is_an_error(normalizer):
    from persistworld_env.models.world_model import WorldModelConfig
    with pytest.raises(ValueError, match="latent channels"):
        WorldModel(WorldModelConfig(scale="tiny"), build_autoencoder("tiny", latent_channels=8), normalizer)


def test_reference_decoding_keeps_reference_pixels_of_chosen_cameras(normalizer, tmp_path):
    torch.manual_seed(0)
    model = WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=("exterior_1_left",)).eval()
    frames, poses = _start(model)
    latents = model.codec.encode_views(frames[:, None])[:, 0]
    plain = model.decode(latents[:, None])[:, 0]
    corrected = model.decode(latents[:, None], model.reference_correction(frames, latents))[:, 0]
    # Decoding the reference's own latent returns the reference exactly on camera 0 (D(z) + x - D(z) = x) ...
    np.testing.assert_array_equal(corrected[:, 0], frames[:, 0])
    assert not np.array_equal(plain[:, 0], frames[:, 0])
    # ... and leaves the other cameras to plain decoding.
    np.testing.assert_array_equal(corrected[:, 1:], plain[:, 1:])
    # The engine applies the correction of each rollout's own first frame; the setting survives save/load.
    model.save_pretrained(tmp_path / "ref")
    loaded = WorldModel.from_pretrained(tmp_path / "ref")
    assert loaded.config.reference_cameras == ("exterior_1_left",)
    eng = RolloutEngine(loaded)
    eng.reset(frames, poses, seeds=[0, 1])
    out = eng.step(np.tile(poses[:, None], (1, 4, 1)))
    expected = loaded.decode(out.latents, loaded.reference_correction(frames, latents))
    np.testing.assert_array_equal(out.frames, expected)
    with pytest.raises(ValueError, match="reference_cameras"):
        WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=("top_camera",))


def test_relative_decoding_by_hand():
    # two cameras, one pixel: camera 0 without a gate, camera 1 gated with tau 0.5
    decoded = torch.tensor([0.2, 0.2]).reshape(2, 1, 1, 1).expand(2, 3, 1, 1)  # (V, 3, H, W)
    reference_decoded = torch.tensor([0.7, 0.7]).reshape(2, 1, 1, 1).expand(2, 3, 1, 1)
    residual = torch.full((2, 3, 1, 1), 0.1)
    out = relative_decoding(decoded, reference_decoded, residual, torch.tensor([1.0, 0.5]), torch.tensor([0.0, 0.5]))
    # camera 0: 0.2 + 1 * 0.1; camera 1: change 0.5 = tau, gate exp(-1): 0.2 + 0.5 * exp(-1) * 0.1
    np.testing.assert_allclose(out[:, 0, 0, 0].numpy(), [0.3, 0.2 + 0.05 * math.exp(-1)], rtol=1e-6)
    np.testing.assert_allclose(relative_decoding(decoded, reference_decoded, residual, torch.tensor([1.0, 0.5]))
                               [:, 0, 0, 0].numpy(), [0.3, 0.25], rtol=1e-6)


def test_reference_correction_fades_per_frame_and_by_the_motion_gate(normalizer, tmp_path):
    torch.manual_seed(0)
    cams = ("exterior_1_left", "wrist_left")
    model = WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=cams,
                             reference_decay={"wrist_left": 0.5}, reference_gate={"wrist_left": 0.1}).eval()
    # camera order exterior_1, exterior_2, wrist: kept whole, plain, halved per frame
    np.testing.assert_allclose(model.reference_weights(torch.tensor([1, 3])).numpy(), [[1, 0, 0.5], [1, 0, 0.125]])
    frames, poses = _start(model)
    latents = model.codec.encode_views(frames[:, None])[:, 0]
    residual, reference_decoded = model.reference_correction(frames, latents).unbind(1)
    model.save_pretrained(tmp_path / "fade")
    loaded = WorldModel.from_pretrained(tmp_path / "fade")
    assert loaded.config.reference_decay == {"wrist_left": 0.5} and loaded.config.reference_gate == {"wrist_left": 0.1}
    eng = RolloutEngine(loaded)
    eng.reset(frames, poses, seeds=[0, 1])
    hold = np.tile(poses[:, None], (1, 4, 1))
    eng.step(hold)
    second = eng.step(hold)  # its frames are 5..8 frames after the reference
    plain = loaded.codec.decode_views_float(second.latents, 3).numpy()  # (B, 4, V, 3, H, W)
    by_hand = plain.copy()
    gate = np.exp(-(np.abs(plain[:, :, 2] - reference_decoded[:, None, 2].numpy()).mean(2, keepdims=True) / 0.1) ** 2)
    for f in range(4):
        by_hand[:, f, 0] += residual[:, 0].numpy()
        by_hand[:, f, 2] += 0.5 ** (5 + f) * gate[:, f] * residual[:, 2].numpy()
    np.testing.assert_array_equal(second.frames, float_to_uint8(torch.from_numpy(by_hand)).numpy())
    for bad in ({"reference_decay": {"wrist_left": 1.5}}, {"reference_decay": {"exterior_2_left": 0.5}},
                {"reference_gate": {"wrist_left": 0.0}}, {"reference_gate": {"exterior_2_left": 0.1}}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=cams, **bad)


def test_pose_gate_by_hand():
    # 3-4-0 cm position change (5 cm), yaw change 0.02 rad given as 0.02 + 2 pi (wrapped), gripper ignored
    change = torch.tensor([0.03, 0.04, 0.0, 0.0, 0.0, 0.02 + 2 * math.pi, 1.0])
    gate = pose_gate(change, torch.tensor([0.05, 0.0, 0.05, 0.0]), torch.tensor([0.02, 0.0, 0.0, 0.04]))
    # both terms (exp(-1-1)), no gate, position only (exp(-1)), rotation only (exp(-1/4))
    np.testing.assert_allclose(gate.numpy(), [math.exp(-2), 1.0, math.exp(-1), math.exp(-0.25)], rtol=1e-4)  # float32 wrap


def test_reference_correction_fades_with_the_pose_change(normalizer, tmp_path):
    torch.manual_seed(0)
    cams = ("exterior_1_left", "wrist_left")
    scales = {"position": 0.05, "rotation": 0.1}
    model = WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=cams,
                             reference_pose_gate={"wrist_left": scales}).eval()
    with pytest.raises(ValueError, match="pose_change"):
        model.reference_weights(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="shape"):
        model.reference_weights(torch.tensor([1, 2]), torch.zeros(2, 6))
    model.save_pretrained(tmp_path / "pose")
    loaded = WorldModel.from_pretrained(tmp_path / "pose")
    assert loaded.config.reference_pose_gate == {"wrist_left": scales}
    frames, poses = _start(model)
    latents = model.codec.encode_views(frames[:, None])[:, 0]
    residual = model.reference_correction(frames, latents)[:, 0].numpy()
    eng = RolloutEngine(loaded)
    eng.reset(frames, poses, seeds=[0, 1])
    commanded = np.tile(poses[:, None], (1, 4, 1))
    commanded[:, :, 0] += np.array([0.0, 0.05, 0.1, 0.0])  # x moves by 0, 5, 10 cm, then back
    commanded[:, 3, 5] += 0.1  # last frame: back in place, yawed by 0.1 rad
    out = eng.step(commanded)
    plain = loaded.codec.decode_views_float(out.latents, 3).numpy()  # (B, 4, V, 3, H, W)
    by_hand = plain.copy()
    for f, share in enumerate([1.0, math.exp(-1), math.exp(-4), math.exp(-1)]):
        by_hand[:, f, 0] += residual[:, 0]
        by_hand[:, f, 2] += share * residual[:, 2]
    np.testing.assert_array_equal(out.frames, float_to_uint8(torch.from_numpy(by_hand)).numpy())
    # a branch decodes with its parent's reference pose
    alt = RolloutEngine(loaded)
    alt.reset(frames, poses, seeds=[0, 1])
    np.testing.assert_array_equal(alt.branch(1, seeds=[0, 1]).step(commanded).frames, out.frames)
    for bad in ({"wrist_left": {"position": 0.05}}, {"wrist_left": {"position": 0.0, "rotation": 0.0}},
                {"wrist_left": {"position": -1.0, "rotation": 0.1}}, {"exterior_2_left": scales}):
        with pytest.raises(ValueError, match="reference_pose_gate"):
            WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=cams, reference_pose_gate=bad)


def test_residual_denoiser_is_an_x0_predictor_of_the_change_from_the_current_frame(normalizer):
    torch.manual_seed(0)
    model = WorldModel.build("tiny", normalizer, height=H, width=W, denoiser_overrides={"residual_to_current": True})
    den = model.denoiser
    c, vh, w = model.codec.latent_shape(H, W, 3)
    history, current = torch.randn(2, 6, c, vh, w), torch.randn(2, c, vh, w)
    noisy = torch.randn(2, 5, c, vh, w)
    sigma = torch.tensor([1.0, 2.0])
    # A still scene at (almost) zero noise comes back exactly, whatever the trained network says.
    x0_still = den(current[:, None].expand_as(noisy).clone(), torch.full((2,), 1e-6), history, current,
                   poses=torch.zeros(2, 11, 7))
    torch.testing.assert_close(x0_still, current[:, None].expand_as(noisy), atol=1e-5, rtol=0)
    den.network = lambda *args: torch.zeros_like(noisy)  # F = 0 leaves only the skip path
    x0 = den(noisy, sigma, history, current, poses=torch.zeros(2, 11, 7))
    c_skip = (1.0 / (sigma**2 + 1.0)).reshape(2, 1, 1, 1, 1)  # 0.5 and 0.2, by hand
    anchor = current[:, None]
    torch.testing.assert_close(x0, anchor + c_skip * (noisy - anchor))


@pytest.mark.parametrize("last", [1, 3])
def test_decoding_the_last_frames_gives_the_last_frames_of_the_whole_clip(normalizer, last):
    """``decoded_frames`` skips the first frames only: reference fading and the pose gate use each frame's own
    distance from the reference and its own commanded pose, as when the whole clip is decoded."""
    torch.manual_seed(0)
    cams = ("exterior_1_left", "wrist_left")
    model = WorldModel.build("tiny", normalizer, height=H, width=W, reference_cameras=cams,
                             reference_decay={"wrist_left": 0.8},
                             reference_pose_gate={"wrist_left": {"position": 0.05, "rotation": 0.3}}).eval()
    frames, poses = _start(model)
    moves = np.linspace(0.0, 0.04, 8, dtype=np.float32).reshape(2, 4)  # a different pose for every frame
    commands = np.tile(poses[:, None], (1, 4, 1))
    commands[..., 0] += moves
    whole, part = RolloutEngine(model), RolloutEngine(model)
    for eng in (whole, part):
        eng.reset(frames, poses, seeds=[0, 1])
    for step in range(2):
        a = whole.step(commands, alternatives=2)
        b = part.step(commands, alternatives=2, decoded_frames=last)
        torch.testing.assert_close(b.latents, a.latents)  # the rollout itself is the same
        assert b.frames.shape == (2, last, 3, H, W, 3) and b.alternatives.shape == (2, 2, last, 3, H, W, 3)
        for ours, theirs in ((b.frames, a.frames[:, -last:]), (b.alternatives, a.alternatives[:, :, -last:])):
            # the same images up to float rounding (a decoder call of another size may round a level apart)
            assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1 and (ours != theirs).mean() < 1e-3
    for bad in (0, 5, True, 2.5):
        with pytest.raises(ValueError, match="decoded_frames"):
            whole.step(commands, decoded_frames=bad)
