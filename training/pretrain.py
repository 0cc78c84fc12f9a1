"""``persistworld pretrain``: teacher-forced EDM pretraining of the world model's denoiser.

Built on accelerate: the same command runs on one CPU process or under ``accelerate launch`` on many
GPUs (batches sharded by process, gradients synchronised, one process logs and writes). The
autoencoder is frozen (train it first with ``persistworld train-vae``). Exact resume: the batch drawn
at step s depends only on (seed, step, process), and checkpoints hold the denoiser, its EMA, the
optimizer, the LR schedule and every RNG state.
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
from typing import Any, Iterator

import numpy as np
import torch

from persistworld_env.success import carry_success_detector
from training.checkpoints import (clip_gradients, finite_step, main_process_writer, resume_checkpoint, save_checkpoint,
                                  start_run)


@dataclass
class PretrainConfig:
    """Settings of a pretraining run (stored in every checkpoint and the model card)."""

    data_dir: str
    out_dir: str
    autoencoder: str | None = None  # trained autoencoder directory; None = random (tests only)
    scale: str = "default"
    steps: int = 20_000
    batch_size: int = 8
    lr: float = 2e-4
    warmup_steps: int = 200
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (GPU)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    eval_every: int = 1000
    eval_samples: int = 16
    log_every: int = 10
    val_mod: int = 100
    val_rem: int = 99
    val_episodes: tuple[int, ...] | None = None
    seed: int = 0
    num_threads: int | None = None
    cache_dir: str | None = None
    latent_cache: bool = True  # encode each episode once with the frozen autoencoder
    resume: bool = False
    command: str = ""
    #: Fine-tune: start from this model directory (its weights, autoencoder, pose normaliser and scale).
    init_from: str | None = None
    #: Std of the history frames' noise augmentation, sigma_h ~ |N(0, std^2)|; stronger fights drift.
    history_sigma_std: float = 0.3
    #: Fraction of clips trained at the model's sampling sigma_max instead of a log-normal level (see
    #: ``diffusion.edm``); for models sampled with very few steps.
    top_sigma_fraction: float = 0.0


def _step_rng(config: PretrainConfig, step: int, process: int, stream: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([config.seed, step, process, stream])


def batch_indices(config: PretrainConfig, step: int, process: int, dataset_size: int) -> list[int]:
    """Sample indices of the batch at ``step`` on ``process`` (with replacement; deterministic)."""
    rng = np.random.default_rng(_step_rng(config, step, process, 0))
    return rng.integers(0, dataset_size, config.batch_size).tolist()


def _batches(config: PretrainConfig, dataset, start: int, process: int) -> Iterator[dict[str, Any]]:
    from persistworld_env.data.dataset import collate_samples

    step = start
    while True:
        dataset.set_epoch(step * config.batch_size // max(1, len(dataset)))
        yield collate_samples([dataset[i] for i in batch_indices(config, step, process, len(dataset))])
        step += 1


def _weights_id(module: torch.nn.Module) -> str:
    """Short hash of a module's weights (names the latent cache of a frozen encoder)."""
    import hashlib

    h = hashlib.sha1()
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _lr_factor(config: PretrainConfig):
    def factor(step: int) -> float:
        return min(1.0, (step + 1) / max(1, config.warmup_steps))
    return factor


def _write_replay_video(model, dataset, path: Path, config: PretrainConfig) -> None:
    """Replay the first validation episode (up to 14 steps) and write truth-over-model video."""
    from persistworld_env.replay import load_replay_episode, max_replay_steps, write_replay_video
    from persistworld_env.rollout import RolloutEngine

    episode = int(dataset.episodes[0])
    steps = min(14, max_replay_steps(dataset.reader.length(episode)))
    if steps < 1:
        return
    write_replay_video(RolloutEngine(model), load_replay_episode(dataset.reader, episode, steps), path, config.seed)


def _model_card(config: PretrainConfig, summary: dict) -> str:
    lines = [f"# PersistWorld world model ({config.scale})", "",
             "Action-conditioned multi-view latent video diffusion model (Ctrl-World architecture), pretrained "
             "teacher-forced with the EDM objective.", "",
             f"- data: `{config.data_dir}` ({summary.get('train_episodes', '?')} training episodes, "
             f"{summary.get('val_episodes', '?')} validation episodes)",
             f"- autoencoder: `{config.autoencoder or config.init_from}`",
             *([f"- initialised from: `{config.init_from}` (fine-tune)"] if config.init_from else []),
             f"- history noise augmentation: sigma_h ~ |N(0, {config.history_sigma_std}^2)|",
             *([f"- {config.top_sigma_fraction:.0%} of clips trained at the sampler's sigma_max"]
               if config.top_sigma_fraction else []),
             f"- command: `{config.command}`",
             f"- steps: {summary['step']} (batch {config.batch_size} x {summary.get('processes', 1)} processes), EMA "
             f"decay {config.ema_decay}, weights: EMA",
             "", "## Validation (one clip, real history, EMA weights)", "",
             "| camera | PSNR | SSIM | repeat-frame PSNR | repeat-frame SSIM |", "|---|---|---|---|---|"]
    for cam, m in summary.get("validation", {}).items():
        lines.append(f"| {cam} | {m['psnr']:.2f} | {m['ssim']:.3f} | {m['baseline_psnr']:.2f} | "
                     f"{m['baseline_ssim']:.3f} |")
    return "\n".join(lines) + "\n"


def pretrain(config: PretrainConfig) -> dict:
    """Train (or resume) per ``config``; writes ``out_dir/model`` and returns a summary."""
    from diffusers.training_utils import EMAModel
    from tqdm.auto import tqdm

    from persistworld_env.data.dataset import WorldModelDataset
    from persistworld_env.data.stats import PoseNormalizer
    from persistworld_env.models.autoencoder import load_autoencoder
    from persistworld_env.diffusion.edm import EDMConfig
    from persistworld_env.models.objective import TrainingNoise, edm_loss
    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.quality import one_step_fidelity

    out_dir = Path(config.out_dir)
    accelerator, resume_from = start_run(out_dir, config.resume, config.mixed_precision, config.seed,
                                         config.num_threads)
    init = WorldModel.from_pretrained(config.init_from) if config.init_from else None
    if init is not None:
        config = dataclasses.replace(config, scale=init.config.scale)  # the checkpoints and card say what it is
    normalizer = init.normalizer if init is not None else PoseNormalizer.from_dataset(config.data_dir)
    split = dict(val_mod=config.val_mod, val_rem=config.val_rem, val_episodes=config.val_episodes,
                 normalizer=normalizer, seed=config.seed, cache_dir=config.cache_dir)
    train_set = WorldModelDataset(config.data_dir, "train", **split)
    val_set = WorldModelDataset(config.data_dir, "val", **split)
    split_sizes = {"train_episodes": int(len(train_set.episodes)), "val_episodes": int(len(val_set.episodes))}
    if len(train_set) == 0:
        raise ValueError(f"no training samples in {config.data_dir} (check the validation split settings)")
    height, width = train_set.reader.image_shape(train_set.cameras[0])
    if init is not None:
        if (init.config.height, init.config.width) != (height, width):
            raise ValueError(f"--init-from model makes {init.config.height}x{init.config.width} images, "
                             f"{config.data_dir} has {height}x{width}")
        model = init.train()
    else:
        autoencoder = load_autoencoder(config.autoencoder) if config.autoencoder else None
        model = WorldModel.build(config.scale, normalizer, height=height, width=width, autoencoder=autoencoder)
    model.autoencoder.requires_grad_(False).eval()
    noise = TrainingNoise(history_sigma_std=config.history_sigma_std,
                          edm=EDMConfig(top_fraction=config.top_sigma_fraction, top_sigma=model.config.sampler.sigma_max))
    if config.latent_cache:
        train_set.use_latents(lambda frames: model.codec.encode_views(frames[None])[0].cpu().numpy(),
                              _weights_id(model.autoencoder), cache_dir=out_dir / "latent_cache")
    denoiser = model.denoiser
    for p in denoiser.inert_parameters():  # never used by the forward: DDP would wait for their gradients
        p.requires_grad_(False)
    ema = EMAModel(denoiser.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(denoiser.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(config))
    denoiser, optimizer, scheduler = accelerator.prepare(denoiser, optimizer, scheduler)
    model.autoencoder.to(accelerator.device)
    accelerator.register_for_checkpointing(ema)
    ema.to(accelerator.device)
    step, bad_steps, validation = 0, 0, {}
    if resume_from is not None:
        state = resume_checkpoint(accelerator, resume_from)
        ema.to(accelerator.device)  # accelerate restores custom state on the CPU
        step, bad_steps = int(state["step"]), int(state.get("bad_steps", 0))
        validation = state.get("validation", {})
        accelerator.print(f"resumed from {resume_from} at step {step}")
    writer = main_process_writer(accelerator, out_dir)
    raw = accelerator.unwrap_model(denoiser)
    eval_idx = (np.linspace(0, len(val_set) - 1, min(config.eval_samples, len(val_set))).astype(int).tolist()
                if len(val_set) else [])

    def evaluate(at_step: int) -> dict:
        if not eval_idx or not accelerator.is_main_process:
            return {}
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
        raw.eval()
        result = one_step_fidelity(model, val_set, eval_idx, seed=config.seed)
        _write_replay_video(model, val_set, out_dir / "samples" / f"replay-{at_step:08d}.mp4", config)
        raw.train()
        ema.restore(raw.parameters())
        for cam, m in result.items():
            for k, v in m.items():
                writer.add_scalar(f"val/{k}/{cam}", v, at_step)
        return result

    batches = _batches(config, train_set, step, accelerator.process_index)
    bar = tqdm(total=config.steps, initial=step, desc="pretrain", disable=not accelerator.is_local_main_process)
    denoiser.train()
    while step < config.steps:
        t0 = time.perf_counter()
        batch = next(batches)
        if "latents" in batch:
            latents = batch["latents"].to(accelerator.device)
        else:
            with torch.no_grad():
                latents = model.codec.encode_views(batch["video"].numpy()).to(accelerator.device)
        gen = torch.Generator(device=accelerator.device).manual_seed(
            int(_step_rng(config, step, accelerator.process_index, 1).generate_state(1)[0]))
        with accelerator.autocast():
            loss = edm_loss(denoiser, latents, batch["pose"].to(accelerator.device), batch["instruction"],
                            noise=noise, generator=gen)
        accelerator.backward(loss)
        grad_norm = clip_gradients(accelerator, denoiser.parameters(), config.grad_clip)
        if finite_step(accelerator, optimizer, loss, grad_norm):
            scheduler.step()
            ema.step(raw.parameters())
        else:
            bad_steps += 1
            accelerator.print(f"step {step}: non-finite loss or gradient, skipped ({bad_steps} so far)")
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if writer is not None and step % config.log_every == 0:
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], step)
            writer.add_scalar("train/step_seconds", time.perf_counter() - t0, step)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.eval_every == 0 or step == config.steps:
            validation = evaluate(step) or validation
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint(accelerator, out_dir, step,
                            {"bad_steps": bad_steps, "config": dataclasses.asdict(config), "validation": validation,
                             **split_sizes},
                            keep=config.keep_checkpoints)
    bar.close()
    summary = {"step": step, "bad_steps": bad_steps, "processes": accelerator.num_processes, **split_sizes,
               "validation": validation}
    if accelerator.is_main_process:
        ema.store(raw.parameters())
        ema.copy_to(raw.parameters())
        model.save_pretrained(out_dir / "model", model_card=_model_card(config, summary))
        if config.init_from:
            carry_success_detector(config.init_from, out_dir / "model")
        ema.restore(raw.parameters())
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        writer.close()
    accelerator.wait_for_everyone()
    return summary


def export_checkpoint(checkpoint: str | Path, out: str | Path, model_card: str | None = None) -> Path:
    """Write the EMA weights of a pretraining checkpoint as a standalone model directory.

    Uses the run's stored config (data for the pose statistics, autoencoder, scale), so a run can be
    inspected or shipped at any checkpoint without stopping it.
    """
    from persistworld_env.data.lerobot_reader import LeRobotEpisodes
    from persistworld_env.data.stats import PoseNormalizer
    from persistworld_env.models.autoencoder import load_autoencoder
    from persistworld_env.models.world_model import WorldModel

    checkpoint = Path(checkpoint)
    state_file, ema_file = checkpoint / "trainer_state.json", checkpoint / "custom_checkpoint_0.pkl"
    for f in (state_file, ema_file):
        if not f.is_file():
            raise FileNotFoundError(f"not a complete pretraining checkpoint: missing {f}")
    state = json.loads(state_file.read_text())
    config = PretrainConfig(**{**state["config"], "val_episodes": None})
    if config.init_from:  # a fine-tune: the initial model's autoencoder and pose normaliser
        model = WorldModel.from_pretrained(config.init_from)
    else:
        normalizer = PoseNormalizer.from_dataset(config.data_dir)
        reader = LeRobotEpisodes(config.data_dir)
        height, width = reader.image_shape(reader.cameras[0])
        autoencoder = load_autoencoder(config.autoencoder) if config.autoencoder else None
        model = WorldModel.build(config.scale, normalizer, height=height, width=width, autoencoder=autoencoder)
    ema = torch.load(ema_file, map_location="cpu", weights_only=False)
    params = list(model.denoiser.parameters())
    if len(ema["shadow_params"]) != len(params):
        raise ValueError(f"{ema_file} does not match the {config.scale!r} denoiser")
    with torch.no_grad():
        for p, shadow in zip(params, ema["shadow_params"]):
            p.copy_(shadow)
    card = model_card or _model_card(config, {"validation": {}, **state})  # older checkpoints lack the split
    folder = model.save_pretrained(out, model_card=card)
    if config.init_from:
        carry_success_detector(config.init_from, folder)
    return folder


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = PretrainConfig(data_dir="", out_dir="")
    parser.add_argument("--data", default=None, help="LeRobot-layout dataset (e.g. from persistworld generate)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints/, logs/ (TensorBoard), model/")
    parser.add_argument("--autoencoder", default=None, help="trained autoencoder directory (persistworld train-vae)")
    parser.add_argument("--scale", default=d.scale, choices=["tiny", "default", "ctrl-world"])
    for name in ("steps", "batch_size", "warmup_steps", "checkpoint_every", "keep_checkpoints", "eval_every",
                 "eval_samples", "log_every", "val_mod", "val_rem", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "ema_decay"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name))
    parser.add_argument("--grad-clip", type=float, default=d.grad_clip,
                        help="max gradient norm, 0 = off (default: %(default)s)")
    parser.add_argument("--mixed-precision", default=d.mixed_precision, choices=["no", "fp16", "bf16"])
    parser.add_argument("--val-episodes", type=int, nargs="*", default=None, help="explicit validation episodes")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--cache-dir", default=None, help="decoded-frame cache folder")
    parser.add_argument("--no-latent-cache", dest="latent_cache", action="store_false",
                        help="encode frames at every step instead of once per episode")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    parser.add_argument("--init-from", default=None, metavar="MODEL_DIR",
                        help="fine-tune this model directory instead of a fresh one (its autoencoder, pose normaliser "
                             "and scale; --scale and --autoencoder are then ignored)")
    parser.add_argument("--history-sigma-std", type=float, default=d.history_sigma_std,
                        help="std of the history frames' noise augmentation (default: %(default)s, Ctrl-World's); "
                             "a larger value is the classic way to fight drift")
    parser.add_argument("--top-sigma-fraction", type=float, default=d.top_sigma_fraction,
                        help="fraction of clips trained at the model's sampling sigma_max instead of a log-normal "
                             "level: where a one- or two-step sampler makes its prediction (default: %(default)s)")
    parser.add_argument("--export", metavar="CHECKPOINT", default=None,
                        help="instead of training: write the EMA weights of this checkpoint folder as a model "
                             "directory at --out (the run's own settings are read from the checkpoint)")
    return parser


def config_from_args(args: argparse.Namespace) -> PretrainConfig:
    return PretrainConfig(
        data_dir=args.data, out_dir=args.out, autoencoder=args.autoencoder, scale=args.scale, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps, weight_decay=args.weight_decay,
        grad_clip=args.grad_clip, ema_decay=args.ema_decay, mixed_precision=args.mixed_precision,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, eval_every=args.eval_every,
        eval_samples=args.eval_samples, log_every=args.log_every, val_mod=args.val_mod, val_rem=args.val_rem,
        val_episodes=tuple(args.val_episodes) if args.val_episodes else None, seed=args.seed,
        num_threads=args.num_threads, cache_dir=args.cache_dir, latent_cache=args.latent_cache, resume=args.resume,
        init_from=args.init_from, history_sigma_std=args.history_sigma_std,
        top_sigma_fraction=args.top_sigma_fraction,
        command="persistworld " + " ".join(shlex.quote(a) for a in sys.argv[1:]))


def main(args: argparse.Namespace) -> int:
    if args.export:
        print(f"wrote {export_checkpoint(args.export, args.out)}")
        return 0
    if not args.data:
        raise SystemExit("persistworld pretrain: --data is required (unless --export)")
    summary = pretrain(config_from_args(args))
    print(json.dumps(summary, indent=2))
    return 0
