"""Quality of a world model on held-out data: one-clip prediction against the repeat-the-current-frame baseline."""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from persistworld_env.data.dataset import WorldModelDataset, collate_samples
from persistworld_env.metrics import psnr, ssim
from persistworld_env.models.clip_sampler import SamplerConfig, sample_clip
from persistworld_env.models.world_model import WorldModel


@torch.no_grad()
def one_step_fidelity(model: WorldModel, dataset: WorldModelDataset, indices: Sequence[int],
                      sampler: SamplerConfig | None = None, seed: int = 0, batch_size: int = 8) -> dict[str, dict]:
    """Per camera: PSNR/SSIM of the 4 new frames of one sampled clip (real history) vs ground truth,
    and of the baseline that repeats the current frame."""
    sampler = sampler or model.config.sampler
    nh = model.config.denoiser.num_history
    scores = {k: [] for k in ("psnr", "ssim", "baseline_psnr", "baseline_ssim")}
    for start in range(0, len(indices), batch_size):
        batch = collate_samples([dataset[i] for i in indices[start:start + batch_size]])
        video = batch["video"].numpy()  # (B, 11, V, H, W, 3)
        latents = model.codec.encode_views(video).to(model.device)
        tokens = model.denoiser.tokens(batch["pose"].to(model.device), batch["instruction"])
        gens = [torch.Generator().manual_seed(seed + start + i) for i in range(video.shape[0])]
        clip = sample_clip(model.denoiser, latents[:, :nh], latents[:, nh], tokens, sampler, gens)
        pose = batch["pose_raw"]  # (B, 11, 7): the new frames' poses against the current (reference) frame's
        skip = batch["future_skip"]  # the new frames lie skip, 2 skip, ... model frames after the reference
        generated = model.decode(clip[:, 1:], model.reference_correction(video[:, nh], latents[:, nh]),
                                 first_frame=skip, pose_change=pose[:, nh + 1:] - pose[:, nh:nh + 1], frame_step=skip)
        truth = video[:, nh + 1:]
        repeat = np.repeat(video[:, nh:nh + 1], truth.shape[1], axis=1)
        scores["psnr"].append(psnr(generated, truth).mean(1))  # (B, V)
        scores["ssim"].append(ssim(generated, truth).mean(1))
        scores["baseline_psnr"].append(psnr(repeat, truth).mean(1))
        scores["baseline_ssim"].append(ssim(repeat, truth).mean(1))
    merged = {k: np.concatenate(v) for k, v in scores.items()}
    return {cam: {k: float(np.mean(v[:, i])) for k, v in merged.items()} for i, cam in enumerate(model.config.cameras)}


@torch.no_grad()
def decoded_reconstruction_psnr(model: WorldModel, frames, indices: Sequence[int], batch_size: int = 32) -> dict:
    """Per camera (and ``"mean"``): PSNR of encode -> decode of real frames *as the model decodes them*.

    For the model's ``reference_cameras`` that is ``ref + D(E(x)) - D(E(ref))`` with ``ref`` the first frame of
    the frame's episode (:meth:`WorldModel.reference_correction`, faded by :meth:`WorldModel.reference_weights`
    for the frame's distance and pose change from it); for the others plain ``D(E(x))``. ``frames``
    is a :class:`persistworld_env.models.vae_quality.SplitFrames`; first frames of episodes are skipped (they
    are their own reference, reproduced exactly).
    """
    indices = [int(i) for i in indices if frames.locate(int(i))[1] > 0]
    if not indices:
        raise ValueError("no frames to measure besides the episodes' first frames")
    values = []
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        x = frames.get(chunk)[:, None]  # (N, 1, V, H, W, 3)
        rows = [frames.locate(i)[1] for i in chunk]  # frames after the reference (the episode's first frame)
        ref_indices = [i - row for i, row in zip(chunk, rows)]
        refs = frames.get(ref_indices)  # (N, V, H, W, 3)
        correction = model.reference_correction(refs, model.codec.encode_views(refs[:, None])[:, 0])
        pose_change = frames.poses(chunk) - frames.poses(ref_indices)  # (N, 7)
        decoded = model.decode(model.codec.encode_views(x), correction, rows, pose_change[:, None])
        values.append(psnr(x, decoded)[:, 0])  # (N, V)
    per = np.concatenate(values).mean(0)
    return {**{cam: float(per[v]) for v, cam in enumerate(model.config.cameras)}, "mean": float(per.mean())}
