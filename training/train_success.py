"""Train the success detector (``persistworld_env.models.success_detector``) on MiniDROID's per-frame labels.

Frames are the dataset's 5 Hz frames (every ``frame_step``-th data tick, the frames the world model
sees), all cameras at once, each with its episode's instruction. Labels: the dataset's per-frame
``is_success`` column, or a labels file (``--labels``) recovered by re-simulating the episodes by seed
(:mod:`persistworld_env.sim.labels`; made on the first run and reused). Success frames are rare (the end
of successful episodes), so every batch is **balanced**: half success, half failure frames, drawn with
replacement. Augmentation: small random translations, blur, brightness jitter and pixel noise
(generated frames are never pixel-perfect, and decoded ones are soft). AdamW with warm-up and cosine
decay; binary cross-entropy.

World-model frames (``--rollout-frames``, made by ``persistworld collect-success-frames``): frames a world
model generated for a policy zoo, labelled by the simulator run on the same actions. A ``--rollout-fraction``
share of every batch (balanced as well) comes from them, so the detector learns what success does and does not
look like in generated frames; their episodes with ``seed % rollout_val_mod == rollout_val_mod - 1`` are held out
and reported per policy (false fires: the detector fires in an episode the simulator never solved).
``--init-from`` starts from an existing detector.

Held out: the dataset's validation episodes (``episode_index % val_mod == val_rem``, DROID's 100 / 99,
as in pre-training). Reported: accuracy, balanced accuracy, true positive / negative rates (all and per
task family) at the decision threshold, and per-episode agreement of "the detector fires at some frame"
with "the task succeeded at some frame".

Output directory::

    config.json, model.safetensors, README.md   the detector (README = model card with held-out metrics)
    training_summary.json                       the same figures as JSON
    val_curves.png                              P(success) over time for the held-out episodes vs the labels
    logs/                                       TensorBoard scalars
    frame_success_labels.parquet                labels made by re-simulation (when the dataset has none)
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from persistworld_env.constants import FRAME_STRIDE

LABELS_FILE = "frame_success_labels.parquet"


@dataclass
class SuccessTrainConfig:
    """Everything a training run depends on (recorded in the model card)."""

    data_dir: str
    out_dir: str
    labels: str | None = None             # labels parquet; made by re-simulation when missing
    scale: str = "default"
    channels: tuple[int, ...] | None = None  # override of the scale's CNN channels
    steps: int = 2500
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 100
    shift: int = 3                        # random translation, pixels (0 = off)
    brightness: float = 0.1               # random brightness/contrast jitter (0 = off)
    noise_std: float = 0.03               # Gaussian pixel noise in [-1, 1] units (0 = off)
    blur: float = 0.3                     # probability of a 3x3 binomial blur per image (decoded frames are soft)
    threshold: float = 0.5
    consecutive_steps: int = 1            # env steps in a row a success must hold (stored in the detector's config)
    #: World-model frames labelled by the simulator (``persistworld collect-success-frames``): files or folders.
    rollout_frames: tuple[str, ...] = ()
    rollout_fraction: float = 0.5         # share of every batch drawn from them (balanced as well)
    rollout_val_mod: int = 4              # their episodes with seed % mod == mod - 1 are held out
    init_from: str | None = None          # start from this detector's weights (same size) instead of at random
    seed: int = 0
    val_mod: int = 100
    val_rem: int = 99
    val_episodes: tuple[int, ...] | None = None
    max_train_episodes: int | None = None
    frame_step: int = FRAME_STRIDE
    cache_dir: str | None = None          # decoded-frame cache (shared with the other trainers)
    label_workers: int = 1                # simulator processes when labels must be made
    low_poly: bool = True                 # mesh setting the dataset was generated with
    eval_every: int = 500
    log_every: int = 25
    num_threads: int | None = None
    device: str = "cpu"
    progress: bool = True
    command: str | None = None


@dataclass
class LabelledFrames:
    """One split's frames with their labels: ``frames`` uint8 (N, V, H, W, 3) and per-frame metadata."""

    frames: np.ndarray
    labels: np.ndarray        # (N,) bool
    instructions: list[str]   # (N,)
    families: np.ndarray      # (N,) task family names
    episodes: np.ndarray      # (N,) episode index

    def __len__(self) -> int:
        return len(self.labels)


def resolve_labels(config: SuccessTrainConfig) -> str | None:
    """The labels file to use (made by re-simulation if missing), or None when the dataset has the column."""
    from persistworld_env.data.lerobot_reader import LeRobotEpisodes
    from persistworld_env.sim.labels import label_dataset

    if config.labels is None and LeRobotEpisodes(config.data_dir, cameras=()).has_frame_success:
        return None
    path = Path(config.labels) if config.labels else Path(config.out_dir) / LABELS_FILE
    if not path.is_file():
        summary = label_dataset(config.data_dir, path, workers=config.label_workers, low_poly=config.low_poly,
                                progress=config.progress)
        print(f"per-frame labels by re-simulation: {json.dumps(summary)}", file=sys.stderr)
    return str(path)


def load_split(config: SuccessTrainConfig, split: str, labels: str | None) -> LabelledFrames:
    """All ``frame_step``-th frames of a split's episodes with their per-frame success labels."""
    from persistworld_env.models.vae_quality import SplitFrames
    from persistworld_env.sim.labels import load_frame_success

    source = SplitFrames(config.data_dir, split, val_mod=config.val_mod, val_rem=config.val_rem,
                         val_episodes=config.val_episodes, frame_step=config.frame_step, cache_dir=config.cache_dir,
                         max_episodes=config.max_train_episodes if split == "train" else None)
    per_frame = load_frame_success(config.data_dir, labels, episodes=source.episodes)
    frames, labs, instructions, families, episodes = [], [], [], [], []
    for ep in tqdm(source.episodes, desc=f"loading {split} frames", unit="ep", disable=not config.progress):
        arr = np.asarray(source.frames.get(ep))
        lab = per_frame[ep][::config.frame_step]
        if len(lab) != len(arr):
            raise ValueError(f"episode {ep}: {len(arr)} frames but {len(lab)} labels at frame step {config.frame_step}")
        meta = source.reader.episode_meta(ep)
        frames.append(arr)
        labs.append(lab)
        instructions += [source.reader.instruction(ep)] * len(arr)
        families.append(np.full(len(arr), str(meta.get("task_family", ""))))
        episodes.append(np.full(len(arr), ep, np.int64))
    return LabelledFrames(np.concatenate(frames), np.concatenate(labs), instructions, np.concatenate(families),
                          np.concatenate(episodes))


def load_rollout_frames(config: SuccessTrainConfig):
    """(train, held-out) :class:`SuccessFrames` of ``config.rollout_frames``, split by reset seed; None when none."""
    from persistworld_env.evaluation.success_frames import SuccessFrames
    from training.success_frames import FRAMES_FILE

    if not config.rollout_frames:
        return None
    if not 0.0 < config.rollout_fraction < 1.0 or config.rollout_val_mod < 2:
        raise ValueError(f"rollout_fraction must be in (0, 1) and rollout_val_mod >= 2, got {config.rollout_fraction} "
                         f"and {config.rollout_val_mod}")
    paths = [Path(p) / FRAMES_FILE if Path(p).is_dir() else Path(p) for p in config.rollout_frames]
    frames = SuccessFrames.concatenate([SuccessFrames.load(p) for p in paths])
    held_out = frames.seeds % config.rollout_val_mod == config.rollout_val_mod - 1
    train, val = frames.select(np.flatnonzero(~held_out)), frames.select(np.flatnonzero(held_out))
    if train.labels.all() or not train.labels.any():
        raise ValueError(f"the rollout frames need success and failure rows for training, got {int(train.labels.sum())} "
                         f"of {len(train)} successes")
    return train, val


def balanced_indices(labels: np.ndarray, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` indices, half (rounded down) of success frames and the rest of failure frames."""
    pos, neg = np.flatnonzero(labels), np.flatnonzero(~labels)
    if len(pos) == 0 or len(neg) == 0:
        raise ValueError(f"balanced sampling needs both success and failure frames, got {len(pos)} and {len(neg)}")
    half = batch_size // 2
    return np.concatenate([rng.choice(pos, half), rng.choice(neg, batch_size - half)])


def training_batch(train: LabelledFrames, rollouts, config: SuccessTrainConfig,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(frames, labels, instructions) of one balanced batch: a ``rollout_fraction`` share from the world-model
    ``rollouts`` (:class:`SuccessFrames`, when given), the rest from the dataset, each half success frames."""
    n_roll = int(round(config.batch_size * config.rollout_fraction)) if rollouts is not None else 0
    idx = balanced_indices(train.labels, config.batch_size - n_roll, rng)
    frames, labels, instructions = [train.frames[idx]], [train.labels[idx]], [train.instructions[i] for i in idx]
    if n_roll:
        ridx = balanced_indices(rollouts.labels, n_roll, rng)
        frames.append(rollouts.frames[ridx])
        labels.append(rollouts.labels[ridx])
        instructions += [str(t) for t in rollouts.instructions[ridx]]
    return np.concatenate(frames), np.concatenate(labels), instructions


def blur3(x: torch.Tensor) -> torch.Tensor:
    """3x3 binomial blur ([1, 2, 1] / 4 in each direction, edges replicated) of float (N, C, H, W)."""
    k = torch.tensor([1.0, 2.0, 1.0], dtype=x.dtype) / 4
    kernel = (k[:, None] * k[None, :]).expand(x.shape[1], 1, 3, 3)
    return torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 1, 1, 1), mode="replicate"), kernel,
                                      groups=x.shape[1])


def augment(x: torch.Tensor, config: SuccessTrainConfig, rng: np.random.Generator) -> torch.Tensor:
    """Random translation (edge-replicated), blur, brightness/contrast jitter and noise of float (B, V, 3, H, W)."""
    b, v, c, h, w = x.shape
    if config.blur:
        chosen = torch.from_numpy(rng.random(b * v) < config.blur)
        flat = x.reshape(b * v, c, h, w)
        x = torch.where(chosen[:, None, None, None], blur3(flat), flat).reshape(b, v, c, h, w)
    if config.shift:
        s = config.shift
        padded = torch.nn.functional.pad(x.reshape(b * v, c, h, w), (s, s, s, s), mode="replicate")
        offsets = rng.integers(0, 2 * s + 1, size=(b * v, 2))
        x = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)]).reshape(b, v, c, h, w)
    if config.brightness:
        gain = torch.from_numpy(rng.uniform(1 - config.brightness, 1 + config.brightness, (b, v, 1, 1, 1)))
        bias = torch.from_numpy(rng.uniform(-config.brightness, config.brightness, (b, v, 1, 1, 1)))
        x = x * gain.float() + bias.float()
    if config.noise_std:
        x = x + config.noise_std * torch.from_numpy(rng.standard_normal(x.shape, dtype=np.float32))
    return x.clamp(-1, 1)


def classification_metrics(probs: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean of TPR and TNR), TPR, TNR and counts at ``threshold``.

    A rate whose class is absent is NaN; balanced accuracy is then the rate that exists.
    """
    labels = np.asarray(labels, bool)
    pred = np.asarray(probs) > threshold
    pos, neg = labels.sum(), (~labels).sum()
    tpr = float((pred & labels).sum() / pos) if pos else float("nan")
    tnr = float((~pred & ~labels).sum() / neg) if neg else float("nan")
    return {"accuracy": float((pred == labels).mean()) if len(labels) else float("nan"),
            "balanced_accuracy": float(np.nanmean([tpr, tnr])) if (pos or neg) else float("nan"),
            "tpr": tpr, "tnr": tnr, "frames": int(len(labels)), "positives": int(pos)}


@torch.no_grad()
def predict(model, data, batch_size: int = 256) -> np.ndarray:
    """P(success) of every frame of ``data`` (:class:`LabelledFrames` or :class:`SuccessFrames`)."""
    return np.concatenate([model.predict_proba(data.frames[i:i + batch_size], list(data.instructions[i:i + batch_size]))
                           for i in range(0, len(data), batch_size)])


def longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    best = run = 0
    for flag in flags:
        run = run + 1 if flag else 0
        best = max(best, run)
    return best


def evaluate_rollouts(model, data, threshold: float, consecutive_steps: int = 1) -> dict[str, Any]:
    """On held-out world-model frames (:class:`SuccessFrames`): frame metrics, and per policy the episodes in which
    the detector fires (``consecutive_steps`` steps in a row) against those in which the simulator succeeded at
    some step."""
    probs = predict(model, data)
    result: dict[str, Any] = classification_metrics(probs, data.labels, threshold)
    per_policy = {}
    for name in sorted(set(data.policies.tolist())):
        sel = data.policies == name
        seeds = np.unique(data.seeds[sel])
        fired, solved = np.zeros(len(seeds), bool), np.zeros(len(seeds), bool)
        for k, seed in enumerate(seeds):
            episode = sel & (data.seeds == seed)
            in_order = np.argsort(data.steps[episode])
            fired[k] = longest_run(probs[episode][in_order] > threshold) >= consecutive_steps
            solved[k] = data.labels[episode].any()
        per_policy[name] = {"episodes": int(len(seeds)), "sim_success": float(solved.mean()),
                            "detector_success": float(fired.mean()),
                            "false_fires": int((fired & ~solved).sum()), "misses": int((~fired & solved).sum())}
    result["per_policy"] = per_policy
    return result


def evaluate(model, data: LabelledFrames, threshold: float) -> tuple[dict[str, Any], np.ndarray]:
    """Held-out metrics (overall, per task family, per episode) and the probabilities."""
    probs = predict(model, data)
    result: dict[str, Any] = classification_metrics(probs, data.labels, threshold)
    result["per_family"] = {f: classification_metrics(probs[data.families == f], data.labels[data.families == f],
                                                      threshold) for f in sorted(set(data.families))}
    eps = np.unique(data.episodes)
    fired = np.array([(probs[data.episodes == e] > threshold).any() for e in eps])
    succeeded = np.array([data.labels[data.episodes == e].any() for e in eps])
    result["episode_agreement"] = float((fired == succeeded).mean())
    result["episodes"] = int(len(eps))
    return result, probs


def _lr_factor(config: SuccessTrainConfig, step: int) -> float:
    if step < config.warmup_steps:
        return (step + 1) / max(1, config.warmup_steps)
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def train_success_detector(config: SuccessTrainConfig) -> dict:
    """Train, evaluate on the held-out episodes and write the detector directory; returns the summary."""
    from torch.utils.tensorboard import SummaryWriter

    from persistworld_env.models.image_codec import uint8_to_float
    from persistworld_env.models.success_detector import SuccessDetector, detector_config
    from training.success_card import format_rate, model_card, plot_curves

    if config.steps < 1 or config.batch_size < 2:
        raise ValueError(f"steps must be >= 1 and batch_size >= 2, got {config.steps} and {config.batch_size}")
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    torch.manual_seed(config.seed)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    labels_path = resolve_labels(config)
    train, val = load_split(config, "train", labels_path), load_split(config, "val", labels_path)
    height, width = train.frames.shape[2:4]
    overrides: dict[str, Any] = {"height": int(height), "width": int(width), "threshold": config.threshold,
                                 "consecutive_steps": config.consecutive_steps}
    if config.channels:
        overrides["channels"] = tuple(config.channels)
    rollouts = load_rollout_frames(config)
    if rollouts is not None and rollouts[0].frames.shape[2:4] != (height, width):
        raise ValueError(f"rollout frames are {rollouts[0].frames.shape[2:4]}, the dataset's {(height, width)}")
    if config.init_from:
        model = SuccessDetector.from_pretrained(config.init_from, device=config.device)
        if (model.config.height, model.config.width) != (height, width):
            raise ValueError(f"--init-from {config.init_from} expects {model.config.height}x{model.config.width} "
                             f"frames, the dataset has {height}x{width}")
        model.config = dataclasses.replace(model.config, threshold=config.threshold,
                                           consecutive_steps=config.consecutive_steps)
    else:
        model = SuccessDetector(detector_config(config.scale, **overrides)).to(config.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _lr_factor(config, s))
    writer = SummaryWriter(str(out / "logs"))
    bar = tqdm(range(config.steps), desc="success detector", unit="step", disable=not config.progress)
    start, running, history = time.perf_counter(), [], []
    model.train()
    for step in bar:
        rng = np.random.default_rng((config.seed, step))
        frames, labels, instructions = training_batch(train, rollouts[0] if rollouts else None, config, rng)
        x = augment(uint8_to_float(frames), config, rng).to(config.device)
        y = torch.from_numpy(labels.astype(np.float32)).to(config.device)
        logits = model(x, instructions)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        running.append((loss.item(), ((logits.detach() > 0) == (y > 0.5)).float().mean().item()))
        history.append(running[-1][0])
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            loss_avg, acc_avg = np.mean(running, axis=0)
            running = []
            bar.set_postfix(loss=f"{loss_avg:.3f}", acc=f"{acc_avg:.3f}")
            writer.add_scalar("train/loss", loss_avg, done)
            writer.add_scalar("train/balanced_batch_accuracy", acc_avg, done)
            writer.add_scalar("train/lr", scheduler.get_last_lr()[0], done)
        if done % config.eval_every == 0 and done < config.steps:
            metrics, _ = evaluate(model, val, config.threshold)
            model.train()
            for key in ("accuracy", "balanced_accuracy", "tpr", "tnr"):
                writer.add_scalar(f"val/{key}", metrics[key], done)
            bar.write(f"step {done}: held-out accuracy {format_rate(metrics['accuracy'])}, balanced "
                      f"{format_rate(metrics['balanced_accuracy'])}")
    bar.close()
    train_seconds = time.perf_counter() - start
    model.eval()
    metrics, probs = evaluate(model, val, config.threshold)
    for key in ("accuracy", "balanced_accuracy", "tpr", "tnr"):
        writer.add_scalar(f"val/{key}", metrics[key], config.steps)
    rollout_metrics = (evaluate_rollouts(model, rollouts[1], config.threshold, config.consecutive_steps)
                       if rollouts and len(rollouts[1]) else None)
    if rollout_metrics is not None:
        for key in ("accuracy", "balanced_accuracy", "tpr", "tnr"):
            writer.add_scalar(f"val_rollouts/{key}", rollout_metrics[key], config.steps)
    writer.close()
    summary = {
        "steps": config.steps, "train_seconds": train_seconds, "threads": torch.get_num_threads(),
        "final_loss": history[-1], "parameters": sum(p.numel() for p in model.parameters()),
        "cameras": list(model.config.cameras), "image_size": f"{height}x{width}",
        "train_episodes": int(len(np.unique(train.episodes))), "train_frames": len(train),
        "train_positives": int(train.labels.sum()),
        "labels_source": (f"re-simulation by seed, file `{labels_path}`" if labels_path
                          else "the dataset's per-frame `is_success` column"),
        "val": metrics, "out_dir": str(out),
        "rollouts": None if rollouts is None else {
            "train_rows": len(rollouts[0]), "train_positives": int(rollouts[0].labels.sum()),
            "val_rows": len(rollouts[1]), "val": rollout_metrics},
    }
    model.save_pretrained(out, model_card=model_card(config, summary))
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2))
    plot_curves(out / "val_curves.png", val, probs, config.threshold)
    return {**summary, "loss_history": history}


# ---------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of ``persistworld train-success``."""
    d = SuccessTrainConfig(data_dir="", out_dir="")
    parser.add_argument("--data", required=True, help="MiniDROID dataset directory (LeRobot layout)")
    parser.add_argument("--out", required=True, help="output directory (the detector, model card, logs)")
    parser.add_argument("--labels", default=None,
                        help="per-frame labels parquet; made by re-simulating the episodes when the file is missing "
                             f"(default: the dataset's is_success column, else <out>/{LABELS_FILE})")
    parser.add_argument("--scale", choices=["tiny", "default"], default=d.scale, help=f"detector size ({d.scale})")
    parser.add_argument("--channels", type=int, nargs="+", default=None, help="override the CNN channels per block")
    parser.add_argument("--steps", type=int, default=d.steps, help=f"training steps ({d.steps})")
    parser.add_argument("--batch-size", type=int, default=d.batch_size, help=f"frames per batch ({d.batch_size})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    parser.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW ({d.weight_decay})")
    parser.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help=f"({d.warmup_steps})")
    parser.add_argument("--shift", type=int, default=d.shift, help=f"random translation in pixels, 0 = off ({d.shift})")
    parser.add_argument("--brightness", type=float, default=d.brightness, help=f"brightness jitter ({d.brightness})")
    parser.add_argument("--noise-std", type=float, default=d.noise_std, help=f"pixel noise, [-1, 1] units ({d.noise_std})")
    parser.add_argument("--blur", type=float, default=d.blur, help=f"probability of blurring an image ({d.blur})")
    parser.add_argument("--threshold", type=float, default=d.threshold, help=f"decision threshold ({d.threshold})")
    parser.add_argument("--consecutive-steps", type=int, default=d.consecutive_steps,
                        help="env steps in a row a success must hold before the episode counts, stored as the "
                             f"detector's default ({d.consecutive_steps})")
    parser.add_argument("--rollout-frames", nargs="+", default=[], metavar="PATH",
                        help="world-model frames labelled by the simulator (outputs of collect-success-frames)")
    parser.add_argument("--rollout-fraction", type=float, default=d.rollout_fraction,
                        help=f"share of every batch drawn from the rollout frames ({d.rollout_fraction})")
    parser.add_argument("--rollout-val-mod", type=int, default=d.rollout_val_mod,
                        help=f"rollout episodes with seed %% mod == mod - 1 are held out ({d.rollout_val_mod})")
    parser.add_argument("--init-from", default=None, help="start from this detector directory's weights")
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--val-mod", type=int, default=d.val_mod, help="held out: episode %% val_mod == val_rem (100)")
    parser.add_argument("--val-rem", type=int, default=d.val_rem, help="held-out remainder (99)")
    parser.add_argument("--val-episodes", type=int, nargs="+", default=None, help="explicit held-out episodes")
    parser.add_argument("--max-train-episodes", type=int, default=None, help="first N training episodes only")
    parser.add_argument("--cache-dir", default=None, help="decoded-frame cache directory (default: memory only)")
    parser.add_argument("--label-workers", type=int, default=d.label_workers,
                        help=f"simulator processes when labels must be made ({d.label_workers})")
    parser.add_argument("--full-meshes", action="store_true",
                        help="the dataset was generated with --full-meshes (for re-simulating labels)")
    parser.add_argument("--eval-every", type=int, default=d.eval_every, help=f"steps ({d.eval_every})")
    parser.add_argument("--log-every", type=int, default=d.log_every, help=f"steps ({d.log_every})")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads (default: all)")
    parser.add_argument("--device", default=d.device, help=f"torch device ({d.device})")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def config_from_args(args: argparse.Namespace, command: str | None = None) -> SuccessTrainConfig:
    return SuccessTrainConfig(
        data_dir=args.data, out_dir=args.out, labels=args.labels, scale=args.scale,
        channels=tuple(args.channels) if args.channels else None, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_steps=args.warmup_steps, shift=args.shift,
        brightness=args.brightness, noise_std=args.noise_std, blur=args.blur, threshold=args.threshold,
        consecutive_steps=args.consecutive_steps,
        rollout_frames=tuple(args.rollout_frames), rollout_fraction=args.rollout_fraction,
        rollout_val_mod=args.rollout_val_mod, init_from=args.init_from, seed=args.seed,
        val_mod=args.val_mod, val_rem=args.val_rem,
        val_episodes=tuple(args.val_episodes) if args.val_episodes else None,
        max_train_episodes=args.max_train_episodes, cache_dir=args.cache_dir, label_workers=args.label_workers,
        low_poly=not args.full_meshes, eval_every=args.eval_every, log_every=args.log_every,
        num_threads=args.num_threads, device=args.device, progress=not args.no_progress,
        command=command if command is not None else " ".join(shlex.quote(a) for a in sys.argv))


def main(args: argparse.Namespace) -> int:
    summary = train_success_detector(config_from_args(args))
    val = summary["val"]
    print(json.dumps({"steps": summary["steps"], "held_out_accuracy": val["accuracy"],
                      "held_out_balanced_accuracy": val["balanced_accuracy"], "tpr": val["tpr"], "tnr": val["tnr"],
                      "episode_agreement": val["episode_agreement"], "out_dir": summary["out_dir"]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
