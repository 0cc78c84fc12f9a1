"""``persistworld posttrain``: RL post-training of a world model for long-horizon persistence (PersistWorld).

Per training group (one group per process per optimizer step):

S1. draw a training episode, a start step, a continuation of C clips (uniform in 1..``--max-clips``)
    and a prefix of L steps (uniform in 0..``--max-prefix``), clamped to the episode; roll the prefix
    out autoregressively with the **old** model on the recorded actions;
S2. branch K = ``--candidates`` continuations from that frozen state, generated in one batched call per
    clip with different noise (no classifier-free guidance, ``--sampling-steps`` Euler steps; the prefix
    uses the model's own sampler, or ``--prefix-sampling-steps``);
S3. score each against the ground-truth future (``--truth dataset``: the recording; ``--truth sim``:
    MiniDROID re-simulating the episode's scene, optionally under ``--action-noise``-perturbed actions)
    with per-camera PSNR, SSIM and LPIPS aggregated per clip, normalised within the group and combined
    with ``--metric-weights`` / ``--camera-weights`` (:mod:`persistworld_env.rewards`); with
    ``--per-view-rewards`` each camera keeps its own reward;
S4. one optimizer step of DiffusionNFT (:mod:`persistworld_env.diffusion.nft`) over all the group's
    clips (each clip a sample with the history it was generated from and its candidate's r, or with
    ``--per-view-rewards`` each camera's rows with that camera's r, the camera weights weighing the views; the K
    candidates' clips at one position share their noise level and noise unless ``--no-shared-noise``;
    ``--top-sigma-fraction`` of the levels at the model's sampling sigma_max), no backprop through sampling; then old <- EMA of the trained weights, decay rising by
    ``--old-decay-rate`` per step up to ``--old-decay-max``.

Parameters: LoRA adapters (rank ``--lora-rank``) on the UNet's attention and feed-forward layers, the
old model as a second adapter, the action encoder trained fully; ``--full-finetune`` trains everything.
``--average-decay D`` keeps an EMA of the trained weights and exports it instead of the last weights
(Polyak averaging of the noisy steps; ``persistworld average`` does it across model directories).

LPIPS (``--lpips``): ``real`` needs torchvision's AlexNet weights on this machine (else the run stops,
naming where to put them); ``random`` opts into a random backbone (not a perceptual metric; labelled
``alexnet-random`` everywhere); ``off`` rewards PSNR + SSIM only.

Run hygiene as in pretraining: accelerate (``accelerate launch`` / ``torchrun`` shard groups over
processes and synchronise gradients; one process writes), atomic checkpoints every
``--checkpoint-every`` steps with exact ``--resume`` (adapters and old adapter, action-encoder shadows,
optimizer, RNG, step), TensorBoard in ``<out>/logs`` (reward per metric and camera and its spread over
the candidates, r histogram, loss terms, grad norm, timings), replay videos of a validation episode in
``<out>/samples``, a NaN/inf guard that skips and counts bad steps. The result is a standalone model
directory ``<out>/model`` (adapters merged; with ``--average-decay`` the running average of the trained
weights) that ``gym.make("PersistWorld-DROID-v0", model=...)`` loads.

Defaults suit the embedded default model on MiniDROID (episodes of ~7 steps at the median): K = 16,
L_max = 6, C_max = 2, beta = 1, A_max = 5, reference L2 1e-4, LoRA rank 8, lr 1e-4.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

import numpy as np
import torch

from persistworld_env.diffusion.edm import EDMConfig
from persistworld_env.success import carry_success_detector
from training.checkpoints import (clip_gradients, finite_step, main_process_writer, resume_checkpoint, save_checkpoint,
                                  start_run)
from training.model_card import BASE_MODEL_HEADING

if TYPE_CHECKING:
    from persistworld_env.rewards import GroupScores


@dataclass
class PosttrainConfig:
    """Settings of a post-training run (stored in every checkpoint and the model card)."""

    data_dir: str
    out_dir: str
    model: str = "default"
    truth: str = "dataset"  # "dataset" | "sim"
    action_noise: float = 0.0  # --truth sim: std of the noise on normalised recorded actions
    groups: int = 2000  # total, over all processes (rounded up to a multiple of the process count)
    candidates: int = 16
    max_prefix: int = 6
    max_clips: int = 2
    #: Euler steps for the candidates (None = the model's default). Candidates must differ to be
    #: compared: with very few steps (the embedded model samples with 1) a sample is close to the
    #: posterior mean, so post-training samples them with more.
    sampling_steps: int | None = 4
    #: Euler steps for the prefix rollouts and the validation replays (None = the model's default: the
    #: states the environment and the evaluation roll the model into)
    prefix_sampling_steps: int | None = None
    lpips: str = "real"  # "real" | "random" | "off"
    lpips_weights: str | None = None
    metric_weights: str = "psnr=1,ssim=1,lpips=1"
    camera_weights: str = "exterior_1_left=1,exterior_2_left=1,wrist_left=1"
    beta: float = 1.0
    adv_clip: float = 5.0
    ref_weight: float = 1e-4
    #: the K candidates' clips at one position share their noise level and noise in the update
    #: (common random numbers, see ``shared_training_noise``); off = one draw per sample. On by default:
    #: at equal groups it moved the model where independent draws barely did (docs/results.md)
    shared_noise: bool = True
    #: per-view credit: each camera's rows of a clip get the optimality probability of that camera's own
    #: reward (``rewards.view_rewards``) and the camera weights weigh the views' losses; off = one
    #: combined reward per candidate for the whole clip
    per_view_rewards: bool = False
    #: share of the update's noise levels set to the model's sampling sigma_max instead of a log-normal
    #: draw (``diffusion.edm``): where a one-step sampler makes its whole prediction
    top_sigma_fraction: float = 0.0
    #: control experiment: the candidates' rewards are permuted at random within each group before the
    #: update, so it sees rewards of the same spread that say nothing about the truth (what the update does
    #: on its own, to compare a real run against)
    permute_rewards: bool = False
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    micro_batch: int = 16
    old_decay_rate: float = 0.001
    old_decay_max: float = 0.5
    #: decay of a running average (EMA) of the trained weights, exported as the model instead of the last
    #: weights (Polyak averaging: the updates' shared drift stays, their noise averages out); 0 = off
    average_decay: float = 0.0
    lora_rank: int = 8
    lora_alpha: float | None = None
    full_finetune: bool = False
    mixed_precision: str = "no"
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    eval_every: int = 50
    eval_steps: int = 14
    log_every: int = 1
    val_mod: int = 100
    val_rem: int = 99
    val_episodes: tuple[int, ...] | None = None
    seed: int = 0
    num_threads: int | None = None
    resume: bool = False
    command: str = ""

    def __post_init__(self) -> None:
        from persistworld_env.perceptual import LPIPS_MODES
        from persistworld_env.posttrain.truth import TRUTH_SOURCES

        if self.truth not in TRUTH_SOURCES:
            raise ValueError(f"truth must be one of {TRUTH_SOURCES}, got {self.truth!r}")
        if self.lpips not in LPIPS_MODES:
            raise ValueError(f"lpips must be one of {LPIPS_MODES}, got {self.lpips!r}")
        for name in ("groups", "candidates", "max_clips", "micro_batch", "checkpoint_every", "eval_every", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.candidates < 2:
            raise ValueError(f"candidates must be >= 2 (rewards are normalised within the group), "
                             f"got {self.candidates}")
        if self.max_prefix < 0 or self.beta <= 0 or self.action_noise < 0 or self.ref_weight < 0:
            raise ValueError("need max_prefix >= 0, beta > 0, action_noise >= 0 and ref_weight >= 0")
        if self.action_noise > 0 and self.truth != "sim":
            raise ValueError("--action-noise needs --truth sim (recorded futures exist only for recorded actions)")
        if not 0.0 <= self.average_decay < 1.0:
            raise ValueError(f"average_decay must be in [0, 1), got {self.average_decay}")
        if not 0.0 <= self.top_sigma_fraction <= 1.0:
            raise ValueError(f"top_sigma_fraction must be in [0, 1], got {self.top_sigma_fraction}")


def _seed(config: PosttrainConfig, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([config.seed, *[int(k) for k in keys]])


def group_rng(config: PosttrainConfig, group: int) -> tuple[np.random.Generator, list[int]]:
    """The group's draw/truth generator and its K + 1 sampling seeds (prefix, candidates); deterministic."""
    seeds = _seed(config, group, 1).generate_state(config.candidates + 1).tolist()
    return np.random.default_rng(_seed(config, group, 0)), [int(s) for s in seeds]


def split_episodes(reader, config: PosttrainConfig) -> tuple[list[int], list[int]]:
    """(training, validation) episodes: ``episode % val_mod == val_rem`` or the explicit list is validation."""
    explicit = set(config.val_episodes) if config.val_episodes is not None else None
    is_val = (lambda e: e in explicit) if explicit is not None else (lambda e: e % config.val_mod == config.val_rem)
    episodes = reader.episode_indices
    return [e for e in episodes if not is_val(e)], [e for e in episodes if is_val(e)]


def build_policy(denoiser, config: PosttrainConfig):
    """The trained / old / reference weights of ``denoiser`` per ``config`` (LoRA + action encoder, or full)."""
    from persistworld_env.models.lora import PolicyWeights

    return PolicyWeights(denoiser, full_finetune=config.full_finetune, lora_root=denoiser.unet,
                         fully_trained=[denoiser.action_encoder], lora_rank=config.lora_rank,
                         lora_alpha=config.lora_alpha, keep_reference=config.ref_weight > 0,
                         average_decay=config.average_decay, frozen=denoiser.inert_parameters())


def sampler_settings(model, steps: int | None):
    """The model's sampler without classifier-free guidance (data collection needs none), with ``steps``
    Euler steps (None = the model's own)."""
    return dataclasses.replace(model.config.sampler, guidance=1.0, steps=steps or model.config.sampler.steps)


def build_truth(config: PosttrainConfig, reader, episodes, normalizer):
    from persistworld_env.posttrain.truth import DatasetTruth, SimTruth

    if config.truth == "sim":
        return SimTruth(reader, episodes, normalizer, config.action_noise)
    return DatasetTruth(reader, episodes)


def _model_card(config: PosttrainConfig, summary: dict, base_card: str) -> str:
    adapters = ("full fine-tuning" if config.full_finetune else
                f"LoRA rank {config.lora_rank} on UNet attention + feed-forward (merged), action encoder trained fully")
    lines = ["# PersistWorld world model (RL post-trained)", "",
             f"Post-trained from `{config.model}` with the PersistWorld procedure (variable-length prefix rolled "
             f"out by the old model, K = {config.candidates} branched candidates, multi-view perceptual rewards, "
             "DiffusionNFT on an EDM x0 predictor).", "",
             f"- data: `{config.data_dir}`, ground truth: {config.truth}"
             + (f" (action noise {config.action_noise})" if config.truth == "sim" else ""),
             f"- command: `{config.command}`",
             f"- groups: {summary['groups']} ({summary['step']} steps x {summary['processes']} processes), "
             f"bad steps skipped: {summary['bad_steps']}",
             f"- prefix 0..{config.max_prefix} steps, continuation 1..{config.max_clips} clips, beta {config.beta}, "
             f"A_max {config.adv_clip}, reference L2 {config.ref_weight}, lr {config.lr}",
             f"- parameters: {adapters}",
             "- exported weights: " + (f"running average of the trained weights (EMA decay {config.average_decay})"
                                       if config.average_decay else "the last trained weights"),
             f"- update noise: {'shared by the K candidates' if config.shared_noise else 'one draw per sample'}, "
             + (f"{config.top_sigma_fraction:.0%} of levels at the sampler's sigma_max, the rest " if
                config.top_sigma_fraction else "") + "log-normal as in pretraining",
             f"- reward: {summary['reward']}" + (" (per view: each camera's rows trained with its own r)"
                                                  if config.per_view_rewards else "")
             + (" -- PERMUTED at random within each group (a control run)" if config.permute_rewards else ""), ""]
    if base_card:
        lines += [BASE_MODEL_HEADING, "", base_card.strip(), ""]
    return "\n".join(lines)


def permute_candidates(scores: GroupScores, rng: np.random.Generator) -> None:
    """Shuffle which candidate gets which reward (``--permute-rewards``, a control), in place."""
    order = rng.permutation(len(scores.rewards))
    scores.rewards, scores.view_rewards = scores.rewards[order], scores.view_rewards[order]


def optimality_per_sample(samples, config: PosttrainConfig, cameras: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(r, view_weights): r (N,) from the candidates' combined rewards, or with ``per_view_rewards`` (N, V)
    from their per-view rewards, normalised within the group per view, with the camera weights as view weights."""
    from persistworld_env.diffusion.nft import optimality_probability
    from persistworld_env.rewards import RewardWeights

    candidate = torch.as_tensor(samples.candidate)
    if not config.per_view_rewards:
        return optimality_probability(torch.as_tensor(samples.rewards)[None], config.adv_clip)[0][candidate], None
    r = optimality_probability(torch.as_tensor(samples.scores.view_rewards).T, config.adv_clip).T
    cameras_weights = RewardWeights.parse(config.metric_weights, config.camera_weights).cameras
    return r[candidate], torch.tensor([cameras_weights[c] for c in cameras], dtype=torch.float32)


@contextmanager
def sampling_as_old(accelerator, policy) -> Iterator[None]:
    """The old policy under the run's autocast, for collecting a group. Autocast is entered first: the old policy
    merges its adapters into the weights only where that is exact, which it judges on entering."""
    with accelerator.autocast(), policy.old(merged=True):
        yield


def accumulate_gradients(accelerator, trained, policy, samples, r: torch.Tensor, config: PosttrainConfig,
                         generator: torch.Generator, view_weights: torch.Tensor | None = None,
                         edm: EDMConfig = EDMConfig()) -> tuple[torch.Tensor, torch.Tensor]:
    """S4's gradient: the mean DiffusionNFT loss over all the group's samples, in micro-batches.

    Gradients accumulate locally and are synchronised across processes once, on the last micro-batch
    (the number of micro-batches may differ between processes). Returns the means of the loss terms
    (total, positive, negative, reference) and the clipped gradient's norm.
    """
    from persistworld_env.posttrain.update import nft_batch_loss, shared_training_noise

    dev, n, size = accelerator.device, len(samples), config.micro_batch
    starts = list(range(0, n, size))
    sums = torch.zeros(4, dtype=torch.float64)
    shared = None
    if config.shared_noise:
        shared = shared_training_noise(samples.clip_index, samples.x0.shape[1:], edm, generator=generator, device=dev,
                                       dtype=samples.x0.dtype)
    for i, lo in enumerate(starts):
        batch = {k: (v.to(dev) if torch.is_tensor(v) else v) for k, v in samples.batch(slice(lo, lo + size)).items()}
        if shared is not None:
            batch.update(sigma=shared[0][lo:lo + size], noise=shared[1][lo:lo + size])
        sync = nullcontext() if i == len(starts) - 1 else accelerator.no_sync(trained)
        with sync, accelerator.autocast():
            terms = nft_batch_loss(trained, policy, r=r[lo:lo + size], beta=config.beta, ref_weight=config.ref_weight,
                                   edm=edm, generator=generator, view_weights=view_weights, **batch)
            accelerator.backward(terms.total.sum() / n)
        sums += torch.stack([t.detach().double().sum().cpu() for t in
                             (terms.total, terms.positive, terms.negative, terms.reference)])
    return sums / n, clip_gradients(accelerator, policy.trainable_parameters(), config.grad_clip)


def _mean_figures(figures: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each figure over the groups that have it (a still continuation has no moving-region PSNR)."""
    keys = sorted({k for f in figures for k in f})
    return {k: float(np.mean([f[k] for f in figures if k in f])) for k in keys}


def _psnr_postfix(figures: dict[str, float]) -> dict[str, str]:
    """The progress bar's PSNR: the full-frame camera mean, else the moving region's, else nothing."""
    for name in ("psnr", "psnr_moving"):
        values = [v for k, v in figures.items() if k.split("/")[0] == name]
        if values:
            return {name: f"{np.mean(values):.2f}"}
    return {}


def posttrain(config: PosttrainConfig) -> dict:
    """Post-train (or resume) per ``config``; writes ``out_dir/model`` and returns a summary."""
    from tqdm.auto import tqdm

    from persistworld_env.data.lerobot_reader import LeRobotEpisodes
    from persistworld_env.diffusion.nft import old_decay
    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.perceptual import build_lpips
    from persistworld_env.posttrain.groups import collect_group, draw_group
    from persistworld_env.replay import load_replay_episode, max_replay_steps, write_replay_video
    from persistworld_env.rewards import RewardScorer, RewardWeights
    from persistworld_env.rollout import RolloutEngine

    out_dir = Path(config.out_dir)
    accelerator, resume_from = start_run(out_dir, config.resume, config.mixed_precision, config.seed,
                                         config.num_threads)
    dev = accelerator.device
    weights = RewardWeights.parse(config.metric_weights, config.camera_weights)
    lpips_mode = config.lpips if weights.metrics.get("lpips", 0) > 0 else "off"
    # Stops here, before any work, naming where the weights go, when --lpips real finds none.
    lpips = build_lpips(lpips_mode, config.lpips_weights, device=dev)
    model = WorldModel.from_pretrained(config.model).to(dev)
    scorer = RewardScorer(weights, lpips, cameras=tuple(model.config.cameras))
    model.requires_grad_(False)
    reader = LeRobotEpisodes(config.data_dir)
    if reader.image_shape(model.config.cameras[0]) != (model.config.height, model.config.width):
        raise ValueError(f"{config.data_dir} has {reader.image_shape(model.config.cameras[0])} images, the model "
                         f"expects {(model.config.height, model.config.width)}")
    train_eps, val_eps = split_episodes(reader, config)
    if not train_eps:
        raise ValueError(f"no training episodes in {config.data_dir} (check the validation split settings)")
    truth = build_truth(config, reader, train_eps, model.normalizer)
    engine = RolloutEngine(model, sampler_settings(model, config.prefix_sampling_steps))
    candidate_sampler = sampler_settings(model, config.sampling_steps)
    edm = EDMConfig(top_fraction=config.top_sigma_fraction, top_sigma=model.config.sampler.sigma_max)
    denoiser = model.denoiser
    policy = build_policy(denoiser, config)
    params = policy.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    trained, optimizer = accelerator.prepare(denoiser, optimizer)
    accelerator.register_for_checkpointing(policy)
    processes, rank = accelerator.num_processes, accelerator.process_index
    total_steps = math.ceil(config.groups / processes)
    step, bad_steps = 0, 0
    if resume_from is not None:
        state = resume_checkpoint(accelerator, resume_from)
        step, bad_steps = int(state["step"]), int(state.get("bad_steps", 0))
        accelerator.print(f"resumed from {resume_from} at step {step}")
    writer = main_process_writer(accelerator, out_dir)
    eval_episode = next((e for e in val_eps if max_replay_steps(reader.length(e)) >= 1), None)
    if eval_episode is None:
        accelerator.print("no validation episode: periodic replay videos are off")

    def evaluate(at_step: int) -> None:
        if eval_episode is None or writer is None:
            return
        steps = min(config.eval_steps, max_replay_steps(reader.length(eval_episode)))
        episode = load_replay_episode(reader, eval_episode, steps)
        scores = write_replay_video(engine, episode, out_dir / "samples" / f"replay-{at_step:08d}.mp4", config.seed)
        for metric, values in scores.items():
            for v, cam in enumerate(model.config.cameras):
                writer.add_scalar(f"val/{metric}/{cam}", float(values[..., v].mean()), at_step)

    recent: list[dict[str, float]] = []
    bar = tqdm(total=total_steps, initial=step, desc="posttrain", disable=not accelerator.is_local_main_process)
    while step < total_steps:
        t0 = time.perf_counter()
        group = step * processes + rank
        rng, seeds = group_rng(config, group)
        spec = draw_group(rng, truth.available, config.max_prefix, config.max_clips)
        episode = truth.episode(spec.episode, spec.start + spec.steps, rng).window(spec.start, spec.steps)
        with sampling_as_old(accelerator, policy):
            samples = collect_group(engine, episode, spec, seeds, scorer, candidate_sampler=candidate_sampler)
        if config.permute_rewards:
            permute_candidates(samples.scores, np.random.default_rng(_seed(config, group, 3)))
        t_update = time.perf_counter()
        r, view_weights = optimality_per_sample(samples, config, model.config.cameras)
        r = r.to(dev)
        view_weights = view_weights.to(dev) if view_weights is not None else None
        gen = torch.Generator(device=dev).manual_seed(int(_seed(config, step, rank, 2).generate_state(1)[0]))
        means, grad_norm = accumulate_gradients(accelerator, trained, policy, samples, r, config, gen, view_weights,
                                                edm)
        if finite_step(accelerator, optimizer, means, grad_norm):
            policy.update_old(old_decay(step + 1, config.old_decay_rate, config.old_decay_max))
            policy.update_average()
        else:
            bad_steps += 1
            accelerator.print(f"step {step}: non-finite loss or gradient, skipped ({bad_steps} so far)")
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        now = time.perf_counter()
        figures = samples.scores.camera_means(model.config.cameras)
        recent = (recent + [figures])[-50:]
        if writer is not None and step % config.log_every == 0:
            for k, v in figures.items():
                writer.add_scalar(f"reward/{k}", v, step)
            writer.add_scalar("reward/combined_std", float(samples.rewards.std()), step)
            for k, v in samples.scores.camera_spreads(model.config.cameras).items():
                writer.add_scalar(f"reward_spread/{k}", v, step)
            writer.add_histogram("train/r", r, step)
            for k, v in zip(("loss", "positive", "negative", "reference_l2"), means.tolist()):
                writer.add_scalar(f"train/{k}", v, step)
            writer.add_scalar("train/grad_norm", float(grad_norm), step)
            writer.add_scalar("train/old_decay", old_decay(step, config.old_decay_rate, config.old_decay_max), step)
            writer.add_scalar("train/bad_steps", bad_steps, step)
            writer.add_scalar("group/prefix_steps", spec.prefix_steps, step)
            writer.add_scalar("group/clips", spec.clips, step)
            for k, v in {**samples.timings, "update": now - t_update, "step": now - t0}.items():
                writer.add_scalar(f"time/{k}_seconds", v, step)
            bar.set_postfix(loss=f"{means[0].item():.4f}", **_psnr_postfix(figures))
        if step % config.eval_every == 0 or step == total_steps:
            evaluate(step)
        if step % config.checkpoint_every == 0 or step == total_steps:
            save_checkpoint(accelerator, out_dir, step, {"bad_steps": bad_steps, "config": dataclasses.asdict(config)},
                            keep=config.keep_checkpoints)
    bar.close()
    truth.close()
    recent_means = _mean_figures(recent)
    # Per process: sum and sum of squares of the trained parameters (equal when in sync) and the mean PSNR
    # of its own recent groups (different when the groups are sharded).
    check = torch.tensor([[sum(p.detach().double().sum().item() for p in params),
                           sum(p.detach().double().pow(2).sum().item() for p in params),
                           float(np.mean([v for k, v in recent_means.items() if k.startswith("psnr/")] or [0.0]))]],
                         dtype=torch.float64, device=dev)
    check = accelerator.gather(check).cpu()
    summary = {"step": step, "groups": step * processes, "bad_steps": bad_steps, "processes": processes,
               "reward": scorer.description, "lpips_backbone": lpips.backbone if lpips is not None else None,
               "recent_rewards": recent_means, "parameter_sums": check[:, :2].tolist(),
               "recent_psnr_per_process": check[:, 2].tolist()}
    if accelerator.is_main_process:
        merged = WorldModel(model.config, model.autoencoder, model.normalizer)
        merged.denoiser.load_state_dict(policy.merged_state_dict(averaged=config.average_decay > 0),
                                       strict=True)
        merged.save_pretrained(out_dir / "model", model_card=_model_card(config, summary, model.model_card))
        carry_success_detector(config.model, out_dir / "model")
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        writer.close()
    accelerator.wait_for_everyone()
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    d = PosttrainConfig(data_dir="", out_dir="")
    parser.add_argument("--data", required=True, help="LeRobot-layout dataset (MiniDROID for --truth sim)")
    parser.add_argument("--out", required=True, help="run folder: checkpoints/, logs/ (TensorBoard), samples/, model/")
    parser.add_argument("--model", default=d.model, help="model to post-train: a directory or 'default' (embedded)")
    parser.add_argument("--truth", default=d.truth, choices=["dataset", "sim"],
                        help="ground truth: the recorded future, or MiniDROID re-simulating the episode's scene")
    parser.add_argument("--action-noise", type=float, default=d.action_noise,
                        help="--truth sim: std of Gaussian noise on the normalised recorded actions (default 0)")
    parser.add_argument("--groups", type=int, default=d.groups, help="training groups in total (one optimizer step "
                        "per group per process)")
    parser.add_argument("--candidates", "-K", type=int, default=d.candidates, help="candidates per group")
    parser.add_argument("--max-prefix", type=int, default=d.max_prefix, help="prefix length L ~ U{0..this} steps")
    parser.add_argument("--max-clips", type=int, default=d.max_clips, help="continuation length ~ U{1..this} clips")
    parser.add_argument("--sampling-steps", type=int, default=4,
                        help="Euler steps of the candidates (0 = the model's default)")
    parser.add_argument("--prefix-sampling-steps", type=int, default=0,
                        help="Euler steps of the prefix rollouts and validation replays (0 = the model's default: "
                             "the states the environment and the evaluation roll it into)")
    parser.add_argument("--lpips", default=d.lpips, choices=["real", "random", "off"],
                        help="LPIPS backbone: real AlexNet weights (must be on this machine), an explicitly "
                             "random backbone, or off (PSNR + SSIM rewards only)")
    parser.add_argument("--lpips-weights", default=None, help="torchvision AlexNet checkpoint file for --lpips real")
    parser.add_argument("--metric-weights", default=d.metric_weights,
                        help="reward weights per metric: psnr, ssim, lpips, psnr_moving (the PSNR of the region "
                             "that moves in the true clip; 0 by default); unnamed ones keep their defaults")
    parser.add_argument("--camera-weights", default=d.camera_weights, help="reward weights per camera")
    helps = {"beta": "DiffusionNFT implicit-policy step (loss divided by it; ~1, 0.1 for hard rewards)",
             "adv_clip": "A_max: advantages clipped to [-A_max, A_max] before r = 0.5 + A / (2 A_max)",
             "ref_weight": "weight of the L2 to the model before post-training (0 = off, saves a forward)",
             "old_decay_rate": "old-model EMA decay added per step", "old_decay_max": "old-model EMA decay cap",
             "average_decay": "EMA decay of a running average of the trained weights, exported as the model "
                              "instead of the last weights (0 = off)",
             "micro_batch": "samples per forward/backward (gradients accumulate over the group)",
             "lora_rank": "LoRA adapter rank", "grad_clip": "max gradient norm, 0 = off",
             "eval_steps": "replay steps of the validation videos",
             "checkpoint_every": "steps between checkpoints", "eval_every": "steps between validation videos"}
    for name in ("beta", "adv_clip", "ref_weight", "lr", "weight_decay", "grad_clip", "old_decay_rate",
                 "old_decay_max", "average_decay"):
        parser.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(d, name),
                            help=f"{helps.get(name, name.replace('_', ' '))} (default: %(default)s)")
    for name in ("micro_batch", "lora_rank", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_steps",
                 "log_every", "val_mod", "val_rem", "seed"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name),
                            help=f"{helps.get(name, name.replace('_', ' '))} (default: %(default)s)")
    parser.add_argument("--lora-alpha", type=float, default=None, help="LoRA scale numerator (default: the rank)")
    parser.add_argument("--full-finetune", action="store_true", help="train all weights instead of LoRA adapters")
    parser.add_argument("--shared-noise", action=argparse.BooleanOptionalAction, default=d.shared_noise,
                        help="noise the K candidates' clips alike in the update (common random numbers: the "
                             "part of the gradient driven by the noise draw cancels within the group); "
                             "--no-shared-noise draws per sample (default: %(default)s)")
    parser.add_argument("--per-view-rewards", action=argparse.BooleanOptionalAction, default=d.per_view_rewards,
                        help="per-view credit: each camera's part of a clip is scored with that camera's own "
                             "reward, and --camera-weights weigh the views' losses instead of the reward "
                             "(default: %(default)s)")
    parser.add_argument("--top-sigma-fraction", type=float, default=d.top_sigma_fraction,
                        help="share of the update's noise levels set to the model's sampling sigma_max instead of a "
                             "log-normal draw: where a one-step sampler makes its prediction (default: %(default)s)")
    parser.add_argument("--permute-rewards", action="store_true",
                        help="control run: permute the candidates' rewards at random within each group, so the "
                             "update gets rewards of the same spread that say nothing about the truth")
    parser.add_argument("--mixed-precision", default=d.mixed_precision, choices=["no", "fp16", "bf16"])
    parser.add_argument("--val-episodes", type=int, nargs="*", default=None, help="explicit validation episodes")
    parser.add_argument("--num-threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    return parser


def config_from_args(args: argparse.Namespace) -> PosttrainConfig:
    fields = {f.name for f in dataclasses.fields(PosttrainConfig)} - {"data_dir", "out_dir", "command"}
    values = {k: v for k, v in vars(args).items() if k in fields}
    values["val_episodes"] = tuple(args.val_episodes) if args.val_episodes else None
    return PosttrainConfig(data_dir=args.data, out_dir=args.out,
                           command="persistworld " + " ".join(shlex.quote(a) for a in sys.argv[1:]), **values)


def main(args: argparse.Namespace) -> int:
    from persistworld_env.perceptual import LPIPSWeightsMissing

    try:
        summary = posttrain(config_from_args(args))
    except LPIPSWeightsMissing as e:
        raise SystemExit(f"persistworld posttrain: {e}") from None
    print(json.dumps(summary, indent=2))
    return 0
