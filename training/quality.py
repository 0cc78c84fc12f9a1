"""``persistworld quality``: how good a world model is on held-out episodes, in one table.

Per camera: the autoencoder's reconstruction PSNR; one-clip prediction PSNR/SSIM (real history) against
the repeat-the-current-frame baseline; PSNR/SSIM of a ``--steps``-step replay at its first, middle and
last step. Writes ``quality.json`` and a truth-over-model replay video to ``--out``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from training.cli import add_dtype_argument


def evaluate_quality(model_dir: str, data_dir: str, out: str, episodes: int = 8, samples: int = 64, steps: int = 14,
                     val_mod: int = 100, val_rem: int = 99, val_episodes=None, seed: int = 0,
                     dtype: str | None = None) -> dict:
    """The figures of the module docstring as a dict (also written to ``out/quality.json``).

    ``dtype``: the model's weights' precision (None: float32; see ``WorldModel.from_pretrained``).
    """
    import torch

    from persistworld_env.data.dataset import WorldModelDataset
    from persistworld_env.models.vae_quality import SplitFrames, reconstruction_psnr
    from persistworld_env.models.world_model import WorldModel, dtype_name
    from persistworld_env.quality import decoded_reconstruction_psnr, one_step_fidelity
    from persistworld_env.replay import fidelity, load_replay_episode, rollout_replay, select_replay_episodes
    from persistworld_env.rollout import RolloutEngine
    from persistworld_env.visualization import comparison_frames, write_video

    torch.manual_seed(seed)
    model = WorldModel.from_pretrained(model_dir, dtype=dtype)
    split = dict(val_mod=val_mod, val_rem=val_rem, val_episodes=val_episodes)
    val = WorldModelDataset(data_dir, "val", normalizer=model.normalizer, seed=seed, **split)
    if len(val) == 0:
        raise ValueError(f"{data_dir} has no validation episodes (set --val-episodes or --val-mod/--val-rem)")
    frames = SplitFrames(data_dir, "val", max_episodes=episodes, **split)
    vae = reconstruction_psnr(model.codec, frames, frames.evenly_spaced(256))
    vae_as_decoded = decoded_reconstruction_psnr(model, frames, frames.evenly_spaced(256))
    one_step = one_step_fidelity(model, val, np.linspace(0, len(val) - 1, min(samples, len(val))).astype(int).tolist(),
                                 seed=seed)
    reader = val.reader
    eligible = select_replay_episodes(reader, val.episodes, steps, episodes)
    result: dict = {"model": str(model_dir), "data": str(data_dir), "cameras": list(model.config.cameras),
                    "dtype": dtype_name(model.denoiser.dtype),
                    "vae_psnr": vae, "vae_psnr_as_decoded": vae_as_decoded, "one_step": one_step, "replay": {}}
    if eligible:
        eps = [load_replay_episode(reader, e, steps) for e in eligible]
        seeds = [seed + i for i in range(len(eps))]  # sampling seed of each replay
        generated = rollout_replay(RolloutEngine(model), eps, steps, seeds=seeds)
        truth = np.stack([ep.frames for ep in eps])
        scores = fidelity(generated, truth)  # (B, steps, V)
        result["replay"] = {"episodes": eligible, "seeds": seeds, "steps": steps,
                            **{k: v.mean(0).T.tolist() for k, v in scores.items()}}  # per camera, per step
        flat = lambda v: v.reshape(-1, *v.shape[2:])  # noqa: E731
        write_video(comparison_frames(flat(truth[0]), flat(generated[0])), Path(out) / "replay.mp4")
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / "quality.json").write_text(json.dumps(result, indent=2))
    return result


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    precision = "" if result.get("dtype", "float32") == "float32" else f" ({result['dtype']})"
    table = Table(title=f"quality of {result['model']}{precision}")
    cols = ["camera", "VAE PSNR", "VAE PSNR as decoded", "1-step PSNR", "repeat PSNR", "1-step SSIM", "repeat SSIM"]
    replay = result["replay"]
    if replay:
        n = replay["steps"]
        picks = sorted({0, n // 2, n - 1})
        cols += [f"replay PSNR @{k + 1}" for k in picks] + [f"replay SSIM @{k + 1}" for k in picks]
    for c in cols:
        table.add_column(c, justify="right")
    for v, cam in enumerate(result["cameras"]):
        m = result["one_step"][cam]
        row = [cam, f"{result['vae_psnr'][cam]:.2f}", f"{result['vae_psnr_as_decoded'][cam]:.2f}",
               f"{m['psnr']:.2f}", f"{m['baseline_psnr']:.2f}", f"{m['ssim']:.3f}", f"{m['baseline_ssim']:.3f}"]
        if replay:
            row += [f"{replay['psnr'][v][k]:.2f}" for k in picks] + [f"{replay['ssim'][v][k]:.3f}" for k in picks]
        table.add_row(*row)
    Console().print(table)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", default="default", help="model directory or 'default' (the embedded model)")
    parser.add_argument("--data", required=True, help="LeRobot-layout dataset with a validation split")
    parser.add_argument("--out", default="quality_out", help="folder for quality.json and replay.mp4")
    parser.add_argument("--episodes", type=int, default=8, help="validation episodes for VAE and replay")
    parser.add_argument("--samples", type=int, default=64, help="validation samples for one-clip prediction")
    parser.add_argument("--steps", type=int, default=14, help="replay horizon in env steps (0.8 s each)")
    parser.add_argument("--val-mod", type=int, default=100)
    parser.add_argument("--val-rem", type=int, default=99)
    parser.add_argument("--val-episodes", type=int, nargs="*", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_dtype_argument(parser, "the model's weights")
    return parser


def main(args: argparse.Namespace) -> int:
    result = evaluate_quality(args.model, args.data, args.out, args.episodes, args.samples, args.steps,
                              args.val_mod, args.val_rem, args.val_episodes, args.seed, dtype=args.dtype)
    print(json.dumps(result)) if args.json else print_table(result)
    return 0
