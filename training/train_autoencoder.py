"""Train the world model's autoencoder (diffusers ``AutoencoderKL``) on the frames of a LeRobot dataset.

Single frames (every camera, each encoded separately as at inference) are drawn from the dataset's
training episodes; validation episodes give the reconstruction PSNR per camera. Loss: L1 (+ optional
MSE and image-gradient L1) on pixels in [-1, 1] + a small KL to N(0, 1) (per pixel). AdamW, cosine or
constant LR with warm-up, gradient clipping. Built on ``accelerate`` (one CPU process, or ``accelerate
launch`` on GPUs with fp16/bf16).

``--init-from DIR`` starts from a trained autoencoder (or a world model directory's ``autoencoder/``);
with ``--train decoder`` only the decoder side (``post_quant_conv`` and ``decoder``) is trained and the
encoder is frozen, so the latent space, and with it every world model trained on it, stays valid (the
recipe of Stable Diffusion's fine-tuned "ft-MSE" decoder). The scaling factor is then kept, not
recomputed; ``persistworld swap-decoder`` puts the new decoder into a world model.

Output directory::

    config.json, diffusion_pytorch_model.safetensors   the trained model (scaling_factor = 1 / latent std)
    model_card.md, training_summary.json               data, command, steps, validation PSNR per camera
    checkpoints/checkpoint-XXXXXXXX/                   model, optimizer, scheduler, RNG states, step
    logs/                                              TensorBoard scalars and reconstruction images
    samples/step-XXXXXXXX.png                          reconstruction grids (rows: original, reconstruction)

Checkpoints are written to a temporary folder and moved into place with ``os.replace``. A batch depends
only on (seed, step, process), so ``--resume`` continues exactly where the interrupted run stopped.
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
from torch import nn

from persistworld_env.models.autoencoder import (ENCODER_PREFIXES, build_autoencoder, compute_scaling_factor,
                                                 load_autoencoder)
from persistworld_env.models.image_codec import LatentCodec, uint8_to_float
from persistworld_env.models.vae_quality import SplitFrames, reconstruction_psnr
from persistworld_env.models.world_model import AUTOENCODER_DIR, model_dir
from training.checkpoints import optimizer_step, resume_checkpoint, save_checkpoint, start_run, warmup_cosine


@dataclass
class AutoencoderTrainConfig:
    """Everything a training run depends on (saved with every checkpoint and in the model card)."""

    data_dir: str
    out_dir: str
    scale: str = "default"
    init_from: str | None = None                 # start from this autoencoder (or world model) directory
    train_part: str = "all"                      # "all", or "decoder" (encoder frozen: same latent space)
    latent_channels: int | None = None           # override of the scale's latent channels
    block_out_channels: tuple[int, ...] | None = None  # override of the scale's channels
    decoder_layers: int | None = None            # decoder layers per up block (+1 resnets), if not the encoder's
    steps: int = 6000
    batch_size: int = 16                         # time steps per batch, each with every camera
    crop: tuple[int, int] | None = None          # train on random (h, w) crops, offsets on the latent grid
    lr: float = 1e-3
    lr_schedule: str = "cosine"                  # "cosine" or "constant" (both after warm-up)
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    kl_weight: float = 1e-6                      # on the KL per pixel
    mse_weight: float = 1.0                      # on the pixel MSE (PSNR is MSE-based)
    gradient_loss_weight: float = 0.5            # L1 of image-gradient differences (sharper edges)
    sample_posterior: bool = True                # decode a posterior sample in training (mode in eval)
    mixed_precision: str = "no"                  # "no", "fp16", "bf16" (accelerate)
    seed: int = 0
    val_mod: int = 100
    val_rem: int = 99
    val_episodes: tuple[int, ...] | None = None
    max_train_episodes: int | None = None
    frame_step: int = 3                          # data ticks between usable frames (3: the 5 Hz frames)
    cache_dir: str | None = None                 # decoded-frame cache (shared with world-model training)
    val_frames: int = 256                        # evenly spaced validation frames for the PSNR
    eval_every: int = 500
    log_every: int = 25
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    scaling_frames: int = 512                    # training frames for the latent std
    grid_frames: int = 4                         # validation frames in the PNG grid
    resume: bool = False
    stop_after: int | None = None                # stop (with a checkpoint) after this global step
    num_threads: int | None = None               # torch CPU threads (None: torch's default)
    progress: bool = True
    command: str | None = None                   # command line recorded in the model card

    def model_overrides(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.latent_channels is not None:
            out["latent_channels"] = int(self.latent_channels)
        if self.block_out_channels is not None:
            out["block_out_channels"] = tuple(int(c) for c in self.block_out_channels)
        return out


#: What a run trains: everything, or the decoder side only (``ENCODER_PREFIXES`` frozen: same latent space).
TRAIN_PARTS = ("all", "decoder")


class _PosteriorAutoencoder(nn.Module):
    """``forward(x) -> (reconstruction, kl per image)``, so ``accelerate``/DDP sees one forward call.

    With ``train_encoder=False`` the encoder runs without gradients and its parameters are frozen.
    """

    def __init__(self, vae: nn.Module, train_encoder: bool = True):
        super().__init__()
        self.vae, self.train_encoder = vae, train_encoder
        for name, param in vae.named_parameters():
            if name.startswith(ENCODER_PREFIXES):
                param.requires_grad_(train_encoder)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None, sample: bool):
        with torch.set_grad_enabled(self.train_encoder and torch.is_grad_enabled()):
            posterior = self.vae.encode(x).latent_dist
        z = posterior.sample(generator) if sample else posterior.mode()
        return self.vae.decode(z).sample, posterior.kl()


def _image_gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    d = a - b
    return (d[..., 1:, :] - d[..., :-1, :]).abs().mean() + (d[..., :, 1:] - d[..., :, :-1]).abs().mean()


def autoencoder_loss(recon: torch.Tensor, target: torch.Tensor, kl: torch.Tensor,
                     config: AutoencoderTrainConfig) -> dict[str, torch.Tensor]:
    """Loss terms (float32); ``kl`` is the per-image KL sum, normalised here per pixel."""
    recon, target = recon.float(), target.float()
    terms = {"l1": (recon - target).abs().mean(), "kl": kl.float().mean() / target[0].numel()}
    total = terms["l1"] + config.kl_weight * terms["kl"]
    if config.mse_weight:
        terms["mse"] = ((recon - target) ** 2).mean()
        total = total + config.mse_weight * terms["mse"]
    if config.gradient_loss_weight:
        terms["grad"] = _image_gradient_l1(recon, target)
        total = total + config.gradient_loss_weight * terms["grad"]
    terms["total"] = total
    return terms


def training_batch(config: AutoencoderTrainConfig, frames: SplitFrames, step: int, process: int,
                   grid: int) -> np.ndarray:
    """uint8 ``(batch * V, h, w, 3)`` images of one process at ``step``: a function of (seed, step, process)."""
    rng = np.random.default_rng((config.seed, step, process))
    images = frames.get(rng.integers(0, len(frames), size=config.batch_size))
    return random_crops(images.reshape(-1, *images.shape[2:]), config.crop, grid, rng)


def random_crops(images: np.ndarray, crop: tuple[int, int] | None, grid: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Random ``crop`` windows (offsets multiples of ``grid``) of uint8 ``(N, H, W, 3)`` images (None: all)."""
    if crop is None:
        return images
    n, h, w = images.shape[:3]
    ch, cw = crop
    if ch > h or cw > w or ch % grid or cw % grid:
        raise ValueError(f"crop {crop} must fit in {h}x{w} and be a multiple of the downsampling factor {grid}")
    ys = rng.integers(0, (h - ch) // grid + 1, size=n) * grid
    xs = rng.integers(0, (w - cw) // grid + 1, size=n) * grid
    return np.stack([img[y:y + ch, x:x + cw] for img, y, x in zip(images, ys, xs)])


def initial_autoencoder(config: AutoencoderTrainConfig, height: int) -> nn.Module:
    """The autoencoder a run starts from: ``config.init_from``'s weights, or a new one of ``config.scale``; with
    ``config.decoder_layers``, its decoder rebuilt at that depth (``with_decoder_depth``: encoder kept, decoder
    tensors copied where they fit)."""
    if config.train_part not in TRAIN_PARTS:
        raise ValueError(f"train_part must be one of {TRAIN_PARTS}, got {config.train_part!r}")
    if config.init_from is None:
        if config.train_part != "all":
            raise ValueError("training only the decoder needs a trained autoencoder: pass init_from (--init-from)")
        vae = build_autoencoder(config.scale, **config.model_overrides(), sample_size=height)
    else:
        if config.model_overrides():
            raise ValueError("latent_channels / block_out_channels cannot change an initial autoencoder's shape")
        source = model_dir(config.init_from)
        vae = load_autoencoder(source / AUTOENCODER_DIR if (source / AUTOENCODER_DIR).is_dir() else source)
    from diffusers import AutoencoderKL

    if not isinstance(vae, AutoencoderKL):
        raise ValueError(f"{type(vae).__name__} is not trainable here (only AutoencoderKL and its split-depth variant)")
    if config.decoder_layers is not None:
        from persistworld_env.models.split_depth_autoencoder import with_decoder_depth

        vae = with_decoder_depth(vae, config.decoder_layers)
    return vae


def _step_generator(config: AutoencoderTrainConfig, step: int, process: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(np.random.SeedSequence([config.seed, step, process, 1]).generate_state(1)[0]))


def _save_grid(path: Path, originals: np.ndarray, recons: np.ndarray) -> np.ndarray:
    """PNG of rows (original views | reconstructed views) per frame; returns the uint8 (H, W, 3) grid."""
    from PIL import Image

    rows = []
    for orig, rec in zip(originals, recons):  # (V, H, W, 3)
        rows.append(np.concatenate(list(orig), axis=1))
        rows.append(np.concatenate(list(rec), axis=1))
    grid = np.concatenate(rows, axis=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid).save(path)
    return grid


def _origin(config: AutoencoderTrainConfig) -> str:
    if config.init_from is None:
        return "trained from scratch (encoder and decoder)"
    if config.train_part == "decoder":
        return (f"decoder fine-tuned from `{config.init_from}` with the encoder frozen: same latents and scaling "
                "factor, so world models trained on that autoencoder can use this decoder "
                "(`persistworld swap-decoder`)")
    return f"fine-tuned from `{config.init_from}` (encoder and decoder: a new latent space)"


def _model_card(config: AutoencoderTrainConfig, model_config: dict, summary: dict) -> str:
    psnr = "\n".join(f"| {cam} | {value:.2f} |" for cam, value in summary["val_psnr"].items())
    return f"""# PersistWorld autoencoder (`{config.scale}` scale)

A diffusers `AutoencoderKL` (`AutoencoderKLSplitDepth` when `decoder_layers` is set below) trained by
`training/train_autoencoder.py` on single multi-view frames
(each camera encoded separately). Load with `persistworld_env.models.autoencoder.load_autoencoder(dir)`.

- data: `{config.data_dir}` ({summary['train_episodes']} training episodes, {summary['val_episodes']} validation
  episodes; frames {config.frame_step} ticks apart: {summary['train_frames']} / {summary['val_frames']} frames)
- command: `{config.command or '(python API)'}`
- {_origin(config)}
- steps: {summary['steps']} x batch {config.batch_size} frames (x cameras images), crops {config.crop or 'none'}; \
training time of the last session {summary['train_seconds']:.0f} s
- latent: {model_config['latent_channels']} channels, downsampling {2 ** (len(model_config['block_out_channels']) - 1)}x;
  scaling_factor = 1 / std of training latents = {summary['scaling_factor']:.6f}
- parameters: {summary['parameters']:,}

## Validation reconstruction PSNR (dB, data range 1, mean over {summary['val_psnr_frames']} frames)

| camera | PSNR |
|---|---|
{psnr}

## Training configuration

```json
{json.dumps(dataclasses.asdict(config), indent=2)}
```
"""


def train_autoencoder(config: AutoencoderTrainConfig) -> dict:
    """Train (or resume) per ``config``; returns a summary (steps, val PSNR per camera, scaling factor, ...)."""
    from tqdm.auto import tqdm

    if config.lr_schedule not in ("cosine", "constant"):
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {config.lr_schedule!r}")
    out_dir = Path(config.out_dir)
    accelerator, resume_from = start_run(out_dir, config.resume, config.mixed_precision, config.seed,
                                         config.num_threads)
    val_episodes = list(config.val_episodes) if config.val_episodes is not None else None
    split = dict(val_mod=config.val_mod, val_rem=config.val_rem, val_episodes=val_episodes,
                 frame_step=config.frame_step, cache_dir=config.cache_dir)
    train_frames = SplitFrames(config.data_dir, "train", max_episodes=config.max_train_episodes, **split)
    val_frames = SplitFrames(config.data_dir, "val", **split)
    height, width = train_frames.image_shape()

    vae = initial_autoencoder(config, height)
    net = _PosteriorAutoencoder(vae, train_encoder=config.train_part == "all")
    grid = 2 ** (len(vae.config.block_out_channels) - 1)
    trainable = [p for p in net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, warmup_cosine(config.warmup_steps, config.steps, cosine=config.lr_schedule == "cosine"))
    net, optimizer, scheduler = accelerator.prepare(net, optimizer, scheduler)

    step = 0
    if resume_from is not None:
        step = int(resume_checkpoint(accelerator, resume_from, {"decoder_layers": config.decoder_layers})["step"])
        accelerator.print(f"resumed from {resume_from} at step {step}")

    writer = None
    if accelerator.is_main_process:
        out_dir.mkdir(parents=True, exist_ok=True)
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "logs"))
    val_idx = val_frames.evenly_spaced(config.val_frames)
    grid_idx = val_frames.evenly_spaced(config.grid_frames)
    unwrapped = accelerator.unwrap_model(net).vae

    def evaluate(at_step: int) -> dict[str, float]:
        codec = LatentCodec(unwrapped)
        psnr = reconstruction_psnr(codec, val_frames, val_idx)
        originals = val_frames.get(grid_idx)
        recons = codec.reconstruct_views(originals[:, None])[:, 0].numpy()
        if writer is not None:
            for cam, value in psnr.items():
                writer.add_scalar(f"val/psnr_{cam}", value, at_step)
            grid = _save_grid(out_dir / "samples" / f"step-{at_step:08d}.png", originals, recons)
            writer.add_image("val/reconstruction", grid, at_step, dataformats="HWC")
        net.train()
        return psnr

    start_time, start_step = time.perf_counter(), step
    last_stop = min(config.steps, config.stop_after if config.stop_after is not None else config.steps)
    bar = tqdm(total=config.steps, initial=step, desc="autoencoder", unit="step",
               disable=not (config.progress and accelerator.is_main_process))
    net.train()
    losses: dict[str, float] = {}
    loss_history: list[float] = []
    while step < last_stop:
        images = training_batch(config, train_frames, step, accelerator.process_index, grid)
        x = uint8_to_float(images, device=accelerator.device)  # (B * V, 3, h, w)
        with accelerator.autocast():
            recon, kl = net(x, _step_generator(config, step, accelerator.process_index), config.sample_posterior)
        terms = autoencoder_loss(recon, x, kl, config)
        optimizer_step(accelerator, terms["total"], trainable, optimizer, scheduler, config.grad_clip)
        step += 1
        losses = {k: float(v.detach()) for k, v in terms.items()}
        loss_history.append(losses["total"])
        bar.update(1)
        if step % config.log_every == 0 or step == last_stop:
            bar.set_postfix(loss=f"{losses['total']:.4f}", l1=f"{losses['l1']:.4f}")
            if writer is not None:
                for k, v in losses.items():
                    writer.add_scalar(f"train/loss_{k}", v, step)
                writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
                writer.add_scalar("train/steps_per_s", (step - start_step) / (time.perf_counter() - start_time), step)
        if step % config.eval_every == 0 and step < config.steps:
            psnr = evaluate(step)
            bar.write(f"step {step}: val PSNR " + ", ".join(f"{k} {v:.2f}" for k, v in psnr.items()))
        if step % config.checkpoint_every == 0 or step == last_stop:
            save_checkpoint(accelerator, out_dir, step, {"config": dataclasses.asdict(config)},
                            keep=config.keep_checkpoints)
    bar.close()
    train_seconds = time.perf_counter() - start_time
    summary: dict[str, Any] = {"steps": step, "final_loss": losses, "train_seconds": train_seconds,
                               "out_dir": str(out_dir), "finished": step >= config.steps}
    if step < config.steps:  # stopped early on purpose: the checkpoint above is the result
        if writer is not None:
            writer.close()
        return {**summary, "loss_history": loss_history}

    # final: scaling factor (kept when the encoder was frozen), validation PSNR, diffusers directory and model card
    unwrapped.eval()
    if config.train_part == "decoder":
        scaling_factor = float(unwrapped.config.scaling_factor)
    else:
        scale_idx = train_frames.evenly_spaced(config.scaling_frames)
        scale_batches = (uint8_to_float(train_frames.get(scale_idx[i:i + 64])).flatten(0, 1)
                         for i in range(0, len(scale_idx), 64))
        scaling_factor = compute_scaling_factor(unwrapped, scale_batches)
    unwrapped.register_to_config(scaling_factor=scaling_factor, sample_size=height)
    psnr = evaluate(step)
    summary.update(val_psnr=psnr, val_psnr_frames=len(val_idx), scaling_factor=scaling_factor,
                   parameters=sum(p.numel() for p in unwrapped.parameters()),
                   train_episodes=len(train_frames.episodes), val_episodes=len(val_frames.episodes),
                   train_frames=len(train_frames), val_frames=len(val_frames))
    if accelerator.is_main_process:
        unwrapped.save_pretrained(str(out_dir))
        (out_dir / "model_card.md").write_text(_model_card(config, dict(unwrapped.config), summary))
        (out_dir / "training_summary.json").write_text(json.dumps(summary, indent=2, default=str))
        writer.close()
    accelerator.wait_for_everyone()
    return {**summary, "loss_history": loss_history}


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``persistworld train-vae``."""
    d = AutoencoderTrainConfig(data_dir="", out_dir="")
    parser.add_argument("--data", required=True, help="LeRobot-layout dataset directory (e.g. MiniDROID)")
    parser.add_argument("--out", required=True, help="output directory (model, checkpoints, logs)")
    parser.add_argument("--scale", default=d.scale, choices=["tiny", "default"], help=f"model size ({d.scale})")
    parser.add_argument("--init-from", default=None, metavar="DIR",
                        help="start from this trained autoencoder, or a world model directory's autoencoder/ "
                             "('default': the embedded model's)")
    parser.add_argument("--train", dest="train_part", choices=TRAIN_PARTS, default=d.train_part,
                        help="what to train: all, or decoder (encoder frozen, latent space and scaling factor kept; "
                             "needs --init-from) (all)")
    parser.add_argument("--latent-channels", type=int, default=None, help="override the scale's latent channels")
    parser.add_argument("--block-out-channels", type=int, nargs="+", default=None, help="override its channels")
    parser.add_argument("--decoder-layers", type=int, default=None,
                        help="decoder layers per up block (diffusers' layers_per_block; the block holds one more "
                             "residual block), for a decoder lighter or deeper than the encoder; with --init-from "
                             "the matching decoder tensors are copied (default: as the encoder)")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"training steps ({d.steps})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"frames per batch, all cameras ({d.batch_size})")
    parser.add_argument("--crop", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="train on random HxW crops (multiples of the downsampling factor; default: whole frames)")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    parser.add_argument("--lr-schedule", choices=["cosine", "constant"], default=d.lr_schedule, help="after warm-up")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help=f"({d.warmup_steps})")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW ({d.weight_decay})")
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip, help=f"max gradient norm, 0 = off ({d.grad_clip})")
    parser.add_argument("--kl-weight", type=float, default=d.kl_weight, help=f"KL per pixel weight ({d.kl_weight})")
    parser.add_argument("--mse-weight", type=float, default=d.mse_weight, help=f"pixel MSE weight ({d.mse_weight})")
    parser.add_argument("--gradient-loss-weight", type=float, default=d.gradient_loss_weight,
                        help=f"image-gradient L1 weight ({d.gradient_loss_weight})")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], default="no", help="GPU only (no)")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--val-mod", type=int, default=d.val_mod, help="validation: episode %% val_mod == val_rem (100)")
    parser.add_argument("--val-rem", type=int, default=d.val_rem, help="validation remainder (99)")
    parser.add_argument("--val-episodes", type=int, nargs="+", default=None, help="explicit validation episodes")
    parser.add_argument("--max-train-episodes", type=int, default=None, help="first N training episodes only")
    parser.add_argument("--cache-dir", default=None, help="decoded-frame cache directory (default: memory only)")
    parser.add_argument("--val-frames", type=int, default=d.val_frames, help=f"validation frames ({d.val_frames})")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help=f"steps ({d.eval_every})")
    parser.add_argument("--log-every", type=int, default=d.log_every, help=f"steps ({d.log_every})")
    parser.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help=f"steps ({d.checkpoint_every})")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args: argparse.Namespace, command: str | None = None) -> AutoencoderTrainConfig:
    return AutoencoderTrainConfig(
        data_dir=args.data, out_dir=args.out, scale=args.scale, init_from=args.init_from, train_part=args.train_part,
        latent_channels=args.latent_channels, decoder_layers=args.decoder_layers,
        block_out_channels=tuple(args.block_out_channels) if args.block_out_channels else None,
        steps=args.steps, batch_size=args.batch_size, crop=tuple(args.crop) if args.crop else None, lr=args.lr, lr_schedule=args.lr_schedule,
        warmup_steps=args.warmup_steps, weight_decay=args.weight_decay, grad_clip=args.grad_clip,
        kl_weight=args.kl_weight, mse_weight=args.mse_weight, gradient_loss_weight=args.gradient_loss_weight,
        mixed_precision=args.mixed_precision, seed=args.seed, val_mod=args.val_mod, val_rem=args.val_rem,
        val_episodes=tuple(args.val_episodes) if args.val_episodes else None,
        max_train_episodes=args.max_train_episodes, cache_dir=args.cache_dir, val_frames=args.val_frames,
        eval_every=args.eval_every, log_every=args.log_every, checkpoint_every=args.checkpoint_every,
        resume=args.resume, num_threads=args.num_threads, progress=not args.no_progress,
        command=command if command is not None else " ".join(shlex.quote(a) for a in sys.argv))


def main(args: argparse.Namespace) -> int:
    summary = train_autoencoder(config_from_args(args))
    print(json.dumps({k: summary[k] for k in ("steps", "val_psnr", "scaling_factor", "out_dir") if k in summary},
                     indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
