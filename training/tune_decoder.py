"""``persistworld tune-decoder``: fine-tune a world model's decoder on the latents the model itself generates.

An autoencoder's decoder is trained on the encoder's latents of real frames. A world model's decoder sees
something else: the denoiser's sampled latents, a little off, and after a few autoregressive steps further
off. A decoder that reconstructs real latents better can render those worse (sharper errors); see
``persistworld train-vae --train decoder``. This command trains the decoder for what it is used for:

1. **Collect**: replay training episodes with the model (from their first frame, on their recorded poses,
   as ``persistworld evaluate`` does) and keep, for every generated frame, the sampled latent, the latent of
   the real frame at that instant and the real frame; plus each episode's reference (first) frame and each
   frame's recorded pose change since it (for models whose reference correction has a pose gate).
   Saved once as ``<out>/pairs.npz``; ``--resume`` reuses it.
2. **Train** the decoder side (``post_quant_conv`` + ``decoder``; encoder frozen, so the latent space and
   the denoiser are untouched) on MSE (+ optional L1) between what the model would output and the real
   frame. For the reference cameras that output is ``ref + D(z) - D(z_ref)`` exactly as the rollout decodes
   it, so the gradient also flows through the reference's decoding. A share ``--real-fraction`` of the
   inputs are real-frame latents, decoded like the generated ones (``--real-decoding relative``), or plainly
   for every camera (``plain``), which keeps the decoder a good plain decoder of real frames at some cost to
   the model's output (on the embedded model: exterior replay PSNR +1.39 instead of +1.64 dB, plain exterior
   reconstruction 27.4 instead of 23.7 dB; docs/results_decoder.md).
3. **Validate** on held-out replays (every ``--val-every``-th collected episode): per-camera PSNR of the
   decoded generated frames against the real ones, before and during training.

``--decoder-layers N`` first rebuilds the decoder with ``N + 1`` residual blocks per up block
(``AutoencoderKLSplitDepth``: same encoder and latent space, the previous decoder's tensors copied where they
still fit), so a cheaper decoder is trained for the same model (0 on the embedded model: docs/benchmarks.md).

Output ``<out>/model``: the world model with the tuned autoencoder (denoiser, normalisation, sampler and
success detector unchanged; the model card records the run). Checkpoints are atomic and resume exactly
(a batch depends only on seed, step and process).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from persistworld_env.metrics import psnr, ssim_torch
from persistworld_env.models.autoencoder import ENCODER_PREFIXES, ModelLoadError
from persistworld_env.models.image_codec import float_to_uint8, uint8_to_float, unstack_views
from persistworld_env.models.world_model import WorldModel, relative_decoding
from training.checkpoints import (ResumeError, main_process_writer, optimizer_step, resume_checkpoint,
                                  save_checkpoint, save_derived_model, start_run, warmup_cosine)
from training.model_card import add_section

PAIRS_FILE = "pairs.npz"


@dataclass
class DecoderTuneConfig:
    """Everything a run depends on (saved with every checkpoint and in the model card)."""

    model: str
    data_dir: str
    out_dir: str
    episodes: int = 96                 # training episodes replayed for pairs (the first that are long enough)
    horizon: int = 14                  # replay steps of 0.8 s per episode
    val_every: int = 8                 # every k-th collected episode is held out for validation
    replay_batch: int = 8
    steps: int = 1500
    batch_size: int = 16               # generated frames per step, each with every camera
    real_fraction: float = 0.25        # share of inputs that are real-frame latents
    real_decoding: str = "relative"    # real-frame latents decoded "relative" (to the reference) or "plain"
    lr: float = 2e-4
    warmup_steps: int = 50
    l1_weight: float = 0.0             # on top of the pixel MSE
    ssim_weight: float = 0.0           # x (1 - SSIM) on top of the pixel MSE
    grad_clip: float = 1.0
    seed: int = 0
    val_mod: int = 100                 # the dataset's validation split (never replayed here)
    val_rem: int = 99
    eval_every: int = 250
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    resume: bool = False
    stop_after: int | None = None      # stop (with a checkpoint) after this step; --resume continues
    keep_best: bool = False            # end with the decoder of the best validation (mean PSNR), not the last
    decoder_layers: int | None = None  # rebuild the decoder with this many layers per block (+1 resnets) first
    num_threads: int | None = None
    mixed_precision: str = "no"
    progress: bool = True
    command: str | None = None

    def validate(self) -> None:
        if self.real_decoding not in ("plain", "relative"):
            raise ValueError(f"real_decoding must be 'plain' or 'relative', got {self.real_decoding!r}")
        if not 0.0 <= self.real_fraction < 1.0:
            raise ValueError(f"real_fraction must be in [0, 1), got {self.real_fraction}")
        if self.episodes < 2 or self.val_every < 2 or self.episodes < self.val_every:
            raise ValueError(f"need episodes >= val_every >= 2 (episodes {self.episodes}, val_every {self.val_every})")
        if self.l1_weight < 0 or self.ssim_weight < 0:
            raise ValueError(f"loss weights must be >= 0, got l1 {self.l1_weight}, ssim {self.ssim_weight}")
        if self.decoder_layers is not None and self.decoder_layers < 0:
            raise ValueError(f"decoder_layers must be >= 0, got {self.decoder_layers}")
        for name in ("horizon", "steps", "batch_size", "replay_batch"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


# ------------------------------------------------------------------------------------------- collect
@torch.no_grad()
def collect_pairs(model: WorldModel, config: DecoderTuneConfig) -> dict[str, np.ndarray]:
    """Replay ``config.episodes`` training episodes; arrays per episode (see the module docstring)."""
    from tqdm.auto import tqdm

    from persistworld_env.data.dataset import WorldModelDataset
    from persistworld_env.replay import load_replay_episode, select_replay_episodes
    from persistworld_env.rollout import RolloutEngine

    train = WorldModelDataset(config.data_dir, "train", val_mod=config.val_mod, val_rem=config.val_rem)
    chosen = select_replay_episodes(train.reader, train.episodes, config.horizon, config.episodes)
    if len(chosen) < config.episodes:
        raise ValueError(f"{config.data_dir} has {len(chosen)} training episodes long enough for {config.horizon} "
                         f"replay steps, {config.episodes} asked (generate longer ones with --min-seconds)")
    engine = RolloutEngine(model)
    out: dict[str, list] = {k: [] for k in ("episode", "generated", "real", "truth", "reference", "reference_latent",
                                            "pose_change")}
    for start in tqdm(range(0, len(chosen), config.replay_batch), desc="replays", disable=not config.progress):
        eps = [load_replay_episode(train.reader, e, config.horizon) for e in chosen[start:start + config.replay_batch]]
        engine.reset(np.stack([ep.first_frames for ep in eps]), np.stack([ep.first_pose for ep in eps]),
                     [ep.instruction for ep in eps], seeds=[config.seed + e.episode_index for e in eps])
        generated = torch.cat([engine.step(np.stack([ep.poses[k] for ep in eps]), decode=False).latents.cpu()
                               for k in range(config.horizon)], dim=1)  # (B, horizon * 4, C, V*h, w)
        truth = np.stack([ep.frames.reshape(-1, *ep.frames.shape[2:]) for ep in eps])  # (B, T, V, H, W, 3)
        reference = np.stack([ep.first_frames for ep in eps])
        out["episode"].append(np.array([ep.episode_index for ep in eps]))
        out["generated"].append(generated.numpy())
        out["real"].append(model.codec.encode_views(truth).cpu().numpy())
        out["truth"].append(truth)
        out["reference"].append(reference)
        out["reference_latent"].append(model.codec.encode_views(reference[:, None])[:, 0].cpu().numpy())
        out["pose_change"].append(np.stack([(ep.poses - ep.first_pose).reshape(-1, ep.poses.shape[-1]) for ep in eps]))
    return {k: np.concatenate(v) for k, v in out.items()}


def _save_pairs(path: Path, pairs: dict[str, np.ndarray]) -> None:
    from persistworld_env.data.io_utils import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **pairs)


def _load_pairs(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as data:
            return {k: data[k] for k in data.files}
    except Exception as e:  # zipfile / pickle / value errors of a truncated file
        raise ValueError(f"cannot read {path} (truncated or corrupt? delete it to collect again): {e}") from e


# ---------------------------------------------------------------------------------------------- loss
def decoded_output(vae: torch.nn.Module, latents: torch.Tensor, reference: torch.Tensor,
                   reference_latent: torch.Tensor, reference_weights: torch.Tensor, scaling: float,
                   shift: float = 0.0, gate_tau: torch.Tensor | None = None) -> torch.Tensor:
    """What the world model outputs for scaled latents (N, C, V*h, w), with gradients (float (N, V, 3, H, W)).

    Camera v of sample n is decoded relative to its reference frame (float (N, V, 3, H, W) in [-1, 1], latent
    (N, C, V*h, w)) with weight ``reference_weights[n, v]`` ((V,) or (N, V)) and the motion gate ``gate_tau``
    (see ``persistworld_env.models.world_model.relative_decoding``); weight 0 is plain decoding ``D(z)``.
    """
    views = reference.shape[1]

    def decode(z: torch.Tensor) -> torch.Tensor:  # (N, C, V*h, w) -> (N, V, 3, H, W)
        per_view = unstack_views(z[:, None], views)[:, 0]  # (N, V, C, h, w)
        x = vae.decode(per_view.flatten(0, 1) / scaling + shift).sample
        return x.reshape(z.shape[0], views, *x.shape[1:])

    out = decode(latents)
    if not bool(reference_weights.any()):
        return out
    reference_decoded = decode(reference_latent)
    weights = reference_weights if reference_weights.ndim == 2 else reference_weights[None]
    return relative_decoding(out, reference_decoded, reference - reference_decoded, weights, gate_tau)


class RelativeDecoder(torch.nn.Module):
    """``forward(...)`` is :func:`decoded_output` of the autoencoder, so ``accelerate``/DDP sees one forward call
    (a DDP wrapper has no ``decode``, and would not synchronise the gradients of one).

    Its state dict is the autoencoder's, without a ``vae.`` prefix: checkpoints hold the same keys as before.
    """

    def __init__(self, vae: torch.nn.Module):
        super().__init__()
        self.vae = vae
        self.register_state_dict_post_hook(_without_vae_prefix)
        self.register_load_state_dict_pre_hook(_with_vae_prefix)

    def forward(self, latents: torch.Tensor, reference: torch.Tensor, reference_latent: torch.Tensor,
                reference_weights: torch.Tensor, scaling: float, shift: float = 0.0,
                gate_tau: torch.Tensor | None = None) -> torch.Tensor:
        return decoded_output(self.vae, latents, reference, reference_latent, reference_weights, scaling, shift,
                              gate_tau)


def _without_vae_prefix(module, state_dict, prefix: str, local_metadata) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "vae.")]:
        state_dict[prefix + key[len(prefix + "vae."):]] = state_dict.pop(key)


def _with_vae_prefix(module, state_dict, prefix: str, *args) -> None:
    for key in [k for k in state_dict if k.startswith(prefix) and not k.startswith(prefix + "vae.")]:
        state_dict[prefix + "vae." + key[len(prefix):]] = state_dict.pop(key)


def pixel_loss(output: torch.Tensor, truth: torch.Tensor, l1_weight: float, ssim_weight: float = 0.0) -> torch.Tensor:
    """MSE (+ ``l1_weight`` x L1, + ``ssim_weight`` x (1 - SSIM) on the [0, 1] scale, per image and channel) of
    float images ``(..., 3, H, W)`` in [-1, 1]."""
    diff = output.float() - truth.float()
    loss = (diff ** 2).mean() + (l1_weight * diff.abs().mean() if l1_weight else 0.0)
    if ssim_weight:
        h, w = output.shape[-2:]
        unit = lambda z: ((z.float() + 1) / 2).reshape(-1, 3, h, w)  # noqa: E731
        loss = loss + ssim_weight * (1 - ssim_torch(unit(output), unit(truth)).mean())
    return loss


def training_batch(pairs: dict[str, np.ndarray], train_rows: np.ndarray, config: DecoderTuneConfig, step: int,
                   process: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, frames, use_real) of one process at ``step``: a function of (seed, step, process)."""
    rng = np.random.default_rng((config.seed, step, process, 7))
    rows = rng.choice(train_rows, size=config.batch_size)
    frames = rng.integers(0, pairs["generated"].shape[1], size=config.batch_size)
    return rows, frames, rng.random(config.batch_size) < config.real_fraction


# --------------------------------------------------------------------------------------------- train
class BestDecoder:
    """The trainable (decoder-side) weights at the best validation so far, and every validation's mean PSNR.

    Registered with accelerate, so checkpoints carry it and ``--resume`` continues exactly.
    """

    def __init__(self) -> None:
        self.step, self.score, self.weights = -1, float("-inf"), {}
        self.history: list[tuple[int, float]] = []

    def offer(self, step: int, score: float, module: torch.nn.Module) -> None:
        """Record a validation; keep ``module``'s trainable weights when ``score`` is the best yet."""
        self.history.append((step, score))
        if score > self.score:
            self.step, self.score = step, score
            self.weights = {k: p.detach().clone() for k, p in module.named_parameters() if p.requires_grad}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"step": torch.tensor(self.step), "score": torch.tensor(self.score, dtype=torch.float64),
                "history": torch.tensor(self.history, dtype=torch.float64).reshape(-1, 2),
                **{"weights." + k: v for k, v in self.weights.items()}}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.step, self.score = int(state["step"]), float(state["score"])
        self.history = [(int(a), float(b)) for a, b in state["history"].tolist()]
        self.weights = {k[len("weights."):]: v for k, v in state.items() if k.startswith("weights.")}


def tune_decoder(config: DecoderTuneConfig) -> dict[str, Any]:
    """Collect (or reuse) the pairs, train the decoder, write ``<out>/model``; returns a summary."""
    from tqdm.auto import tqdm

    config.validate()
    out_dir = Path(config.out_dir)
    accelerator, resume_from = start_run(out_dir, config.resume, config.mixed_precision, config.seed,
                                         config.num_threads)
    model = WorldModel.from_pretrained(config.model)
    if config.decoder_layers is not None:  # a decoder of another depth over the same latents (tune from copies)
        from persistworld_env.models.split_depth_autoencoder import with_decoder_depth

        model = model.with_autoencoder(with_decoder_depth(model.autoencoder, config.decoder_layers))
    pairs_path = out_dir / PAIRS_FILE
    if accelerator.is_main_process and not pairs_path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        _save_pairs(pairs_path, collect_pairs(model, config))
    accelerator.wait_for_everyone()
    pairs = _load_pairs(pairs_path)
    held_out = np.arange(len(pairs["episode"])) % config.val_every == config.val_every - 1
    train_rows, val_rows = np.flatnonzero(~held_out), np.flatnonzero(held_out)

    vae = model.autoencoder.train()
    for name, param in vae.named_parameters():
        param.requires_grad_(not name.startswith(ENCODER_PREFIXES))
    trainable = [p for p in vae.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(config.warmup_steps, config.steps))
    decoder, optimizer, scheduler = accelerator.prepare(RelativeDecoder(vae), optimizer, scheduler)
    net = accelerator.unwrap_model(decoder).vae
    best = BestDecoder()
    accelerator.register_for_checkpointing(best)
    device, cameras = accelerator.device, model.config.cameras
    if model.config.reference_pose_gate and "pose_change" not in pairs:
        raise ValueError(f"{pairs_path} was collected without poses, which this model's reference_pose_gate needs; "
                         "delete it to collect again")

    def weights_at(rows: np.ndarray, frames: np.ndarray) -> torch.Tensor:  # (N, V)
        """Replay frame f lies f + 1 frames after the reference (the episode's first frame)."""
        change = pairs["pose_change"][rows, frames] if "pose_change" in pairs else None
        return model.reference_weights(np.asarray(frames) + 1, change).to(device)

    gate = model.reference_gate_tau().to(device)
    scaling, shift = model.codec.scaling_factor, model.codec.shift_factor

    def batch_tensors(rows: np.ndarray, frames: np.ndarray, use_real: np.ndarray):
        source = np.where(use_real[:, None, None, None], pairs["real"][rows, frames], pairs["generated"][rows, frames])
        as_float = lambda u: uint8_to_float(u, device=device)  # noqa: E731  (N, V, H, W, 3) -> (N, V, 3, H, W)
        return (torch.from_numpy(source).to(device), as_float(pairs["reference"][rows]),
                torch.from_numpy(pairs["reference_latent"][rows]).to(device), as_float(pairs["truth"][rows, frames]))

    @torch.no_grad()
    def validation_psnr() -> dict[str, float]:
        net.eval()
        frames = np.arange(pairs["generated"].shape[1])
        scores = []
        for row in val_rows:
            z, ref, zref, _ = batch_tensors(np.full(len(frames), row), frames, np.zeros(len(frames), bool))
            output = decoded_output(net, z, ref, zref, weights_at(np.full(len(frames), row), frames), scaling, shift,
                                    gate)
            output = float_to_uint8(output).cpu().numpy()
            scores.append(psnr(output, pairs["truth"][row]))  # (frames, V), as every metric of the project
        net.train()
        per = np.concatenate(scores).mean(0)
        return {**{cam: float(v) for cam, v in zip(cameras, per)}, "mean": float(per.mean())}

    step = 0
    if resume_from is not None:
        step = int(resume_checkpoint(accelerator, resume_from, {"decoder_layers": config.decoder_layers})["step"])
    writer = main_process_writer(accelerator, out_dir)
    before = validation_psnr() if step == 0 else None
    if before is not None and writer is not None:
        for cam, value in before.items():
            writer.add_scalar(f"val/psnr_{cam}", value, 0)
    bar = tqdm(total=config.steps, initial=step, desc="decoder", unit="step",
               disable=not (config.progress and accelerator.is_main_process))
    losses: list[float] = []
    start_time = time.perf_counter()
    last_step = min(config.steps, config.stop_after if config.stop_after is not None else config.steps)
    while step < last_step:
        rows, frames, use_real = training_batch(pairs, train_rows, config, step, accelerator.process_index)
        z, ref, zref, truth = batch_tensors(rows, frames, use_real)
        relative_rows = ~use_real if config.real_decoding == "plain" else np.ones_like(use_real)
        relative = weights_at(rows, frames) * torch.from_numpy(relative_rows.astype(np.float32)).to(device)[:, None]
        with accelerator.autocast():
            output = decoder(z, ref, zref, relative, scaling, shift, gate)
        loss = pixel_loss(output, truth, config.l1_weight, config.ssim_weight)
        optimizer_step(accelerator, loss, trainable, optimizer, scheduler, config.grad_clip)
        step += 1
        losses.append(float(loss.detach()))
        bar.update(1)
        if writer is not None:
            writer.add_scalar("train/loss", losses[-1], step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
        if step % config.eval_every == 0 or step == config.steps:
            val = validation_psnr()
            best.offer(step, val["mean"], net)
            bar.write(f"step {step}: held-out replay PSNR " + ", ".join(f"{k} {v:.2f}" for k, v in val.items()))
            if writer is not None:
                for cam, value in val.items():
                    writer.add_scalar(f"val/psnr_{cam}", value, step)
        if step % config.checkpoint_every == 0 or step == last_step:
            save_checkpoint(accelerator, out_dir, step, {"config": dataclasses.asdict(config)},
                            keep=config.keep_checkpoints)
    bar.close()
    if step < config.steps:  # stopped early on purpose: the checkpoint is the result
        if writer is not None:
            writer.close()
        return {"steps": step, "loss_history": losses, "finished": False}
    if config.keep_best and best.step >= 0:
        net.load_state_dict(best.weights, strict=False)
    after = validation_psnr()
    summary = {"steps": step, "finished": True, "train_seconds": time.perf_counter() - start_time, "val_psnr": after,
               "val_psnr_before": before, "train_episodes": len(train_rows), "val_episodes": len(val_rows),
               "frames_per_episode": int(pairs["generated"].shape[1]), "loss_history": losses,
               "val_mean_history": best.history, "kept_step": best.step if config.keep_best else step}
    if accelerator.is_main_process:
        net.eval()
        model.model_card = _model_card(model.model_card, config, summary)
        save_derived_model(model, out_dir / "model", config.model)
        (out_dir / "training_summary.json").write_text(
            json.dumps({k: v for k, v in summary.items() if k != "loss_history"}, indent=2))
        writer.close()
    accelerator.wait_for_everyone()
    return summary


def _model_card(card: str, config: DecoderTuneConfig, summary: dict) -> str:
    before = summary["val_psnr_before"]
    kept = (f" The decoder kept is that of step {summary['kept_step']}, the best held-out validation (mean PSNR, "
            f"checked every {config.eval_every} steps; chosen on the episodes below, so their figure is optimistic)."
            if config.keep_best else "")
    depth = ("" if config.decoder_layers is None else
             f" The decoder was first rebuilt with {config.decoder_layers + 1} residual block(s) per up block "
             "(`AutoencoderKLSplitDepth`, tensors copied from the previous decoder where they still fit), so the "
             "first column is that rebuilt decoder before tuning.")
    rows = "\n".join(f"| {cam} | {before[cam]:.2f} | {value:.2f} |" if before else f"| {cam} | | {value:.2f} |"
                     for cam, value in summary["val_psnr"].items())
    return add_section(card, f"""## Decoder tuned on the model's own latents (`persistworld tune-decoder`)

The decoder (encoder frozen: same latents, denoiser unchanged) was fine-tuned on the latents this model
generates in {config.horizon}-step replays of {summary['train_episodes']} training episodes of `{config.data_dir}`,
against the real frames ({config.steps} steps of {config.batch_size} frames, {config.real_fraction:.0%} real-frame
latents, decoded {config.real_decoding}; loss MSE{f" + {config.l1_weight:g} x L1" if config.l1_weight else ""}\
{f" + {config.ssim_weight:g} x (1 - SSIM)" if config.ssim_weight else ""}).{kept}{depth}
Figures above that involve decoding were measured with the previous decoder.

- command: `{config.command or '(python API)'}`

Held-out replays ({summary['val_episodes']} episodes, every frame; PSNR in dB of the generated frames):

| camera | previous decoder | tuned decoder |
|---|---|---|
{rows}
""")


# ----------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = DecoderTuneConfig(model="", data_dir="", out_dir="")
    parser.add_argument("--model", required=True, help="world model directory (or 'default')")
    parser.add_argument("--data", required=True, help="dataset whose training episodes are replayed (long ones: "
                                                      "generate with --min-seconds 12 for 14 steps)")
    parser.add_argument("--out", required=True, help="run directory (pairs, checkpoints, logs, model/)")
    for name, help_text in (("episodes", "training episodes replayed"), ("horizon", "replay steps per episode"),
                            ("val_every", "every k-th replayed episode is held out"),
                            ("replay_batch", "episodes replayed at once"), ("steps", "training steps"),
                            ("batch_size", "generated frames per step"), ("warmup_steps", "learning-rate warm-up"),
                            ("seed", "sampling and batch seed"), ("eval_every", "steps between validations"),
                            ("checkpoint_every", "steps between checkpoints")):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                            help=f"{help_text} ({getattr(d, name)})")
    parser.add_argument("--real-decoding", choices=["plain", "relative"], default=d.real_decoding,
                        help="decode the real-frame latents relative to the reference like the generated ones, or "
                             f"plainly (keeps the plain reconstruction, costs some output quality) ({d.real_decoding})")
    for name, help_text in (("real_fraction", "share of inputs that are real-frame latents"),
                            ("lr", "peak learning rate (cosine decay)"), ("l1_weight", "L1 weight on top of MSE"),
                            ("ssim_weight", "weight of 1 - SSIM on top of MSE (keeps structure MSE blurs)"),
                            ("grad_clip", "max gradient norm, 0 = off")):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                            help=f"{help_text} ({getattr(d, name)})")
    parser.add_argument("--decoder-layers", type=int, default=None,
                        help="rebuild the decoder with this many layers per up block (diffusers' layers_per_block: "
                             "the block holds one more residual block) before tuning, copying the tensors that still "
                             "fit: 0 = one residual block per up block, a cheaper decoder for the same latents "
                             "(default: keep the model's decoder)")
    parser.add_argument("--keep-best", action="store_true",
                        help="end with the decoder of the best held-out validation (mean PSNR over cameras, checked "
                             "every --eval-every steps) instead of the last one; the model card says which step")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(args: argparse.Namespace) -> int:
    names = {f.name for f in dataclasses.fields(DecoderTuneConfig)}
    values = {k: v for k, v in vars(args).items() if k in names}
    command = getattr(args, "command_line", None) or " ".join(shlex.quote(a) for a in sys.argv)
    config = DecoderTuneConfig(**{**values, "data_dir": args.data, "out_dir": args.out,
                                  "progress": not args.no_progress, "command": command})
    try:
        summary = tune_decoder(config)
    except (ValueError, ModelLoadError, ResumeError) as e:
        raise SystemExit(f"persistworld tune-decoder: {e}") from None
    print(json.dumps({k: summary[k] for k in ("steps", "val_psnr_before", "val_psnr")}, indent=2))
    return 0
