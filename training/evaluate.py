"""``persistworld evaluate``: replay fidelity of one or more world models on held-out episodes.

Every model replays the same held-out episodes from their first frame for ``--horizon`` steps (14 =
~11 s) with the recorded poses, batched across episodes. Writes to ``--out``:

* ``metrics.json``: per model, camera group and step PSNR / SSIM / LPIPS, per-episode and per-camera
  values, paired sign tests between every two models, Elo ratings with bootstrap intervals (schema:
  :mod:`persistworld_env.evaluation.fidelity`);
* ``fidelity_<metric>.png``: each metric over the steps, all models, external and wrist panels;
* ``videos/episode_<id>_<camera>.mp4``: ground truth and each model side by side (left to right in the
  order of ``metrics.json["videos"]["columns"]``), for the first ``--videos`` episodes;
* ``runs/<name>.npz``: each model's scores, stored with a fingerprint of its weights and the settings.
  Running the command again with one more model replays only that one: a stored run is reused exactly
  when the weights and every setting that shapes it match.

LPIPS needs torchvision's ImageNet AlexNet weights (``--lpips real``, the default); offline without
them choose ``--lpips random`` (labelled ``alexnet-random``: not a perceptual metric) or ``--lpips off``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from training.cli import add_dtype_argument


def run_evaluation(models: Sequence[str], data: str, out: str, episodes: int = 8, horizon: int = 14,
                   lpips: str = "real", lpips_weights: str | None = None, batch_size: int = 8, seed: int = 0,
                   sampling_steps: int | None = None, guidance: float | None = None, videos: int = 2,
                   bootstrap: int = 1000, split: str = "val", val_mod: int = 100, val_rem: int = 99,
                   val_episodes: Sequence[int] | None = None, device: str = "cpu", progress: bool = True,
                   command: str | None = None, dtype: str | None = None) -> dict:
    """Evaluate ``models`` (``NAME=PATH`` or ``PATH``) on ``data``; writes ``out``, returns metrics.json's content.

    ``dtype``: load every model's weights in this precision (None: float32; see ``WorldModel.from_pretrained``)."""
    import torch

    from persistworld_env.data.dataset import WorldModelDataset
    from persistworld_env.evaluation.fidelity import (
        ModelSpec, build_metrics_document, load_replay_run, model_fingerprint, replay_model, save_replay_run,
        unique_specs, validate_metrics,
    )
    from persistworld_env.evaluation.plots import plot_fidelity_curves
    from persistworld_env.models.world_model import WorldModel, dtype_name
    from persistworld_env.perceptual import build_lpips
    from persistworld_env.replay import select_replay_episodes
    from training.cli import command_line

    if horizon < 1 or episodes < 1:
        raise ValueError(f"--horizon and --episodes must be >= 1, got {horizon} and {episodes}")
    specs = unique_specs([m if isinstance(m, ModelSpec) else ModelSpec.parse(m) for m in models])
    torch.manual_seed(seed)
    metric = build_lpips(lpips, lpips_weights, device)  # fails fast, before any rollout, without weights
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    sampler = {k: v for k, v in (("steps", sampling_steps), ("guidance", guidance)) if v is not None}
    runs, chosen, reader, cameras, kept = {}, None, None, None, {}
    precision = dtype_name(dtype, device)  # what "auto" means on this device, as recorded
    for spec in specs:
        model = WorldModel.from_pretrained(spec.path, device=device, dtype=dtype)
        if chosen is None:
            ds = WorldModelDataset(data, split, normalizer=model.normalizer, val_mod=val_mod, val_rem=val_rem,
                                   val_episodes=val_episodes, cameras=model.config.cameras)
            reader, cameras = ds.reader, list(model.config.cameras)
            chosen = select_replay_episodes(reader, ds.episodes, horizon, episodes)
            if not chosen:
                raise ValueError(f"{data}: no {split} episode is long enough for {horizon} replay steps "
                                 f"(set --split, --val-episodes or a smaller --horizon)")
            if len(chosen) < episodes:
                print(f"note: only {len(chosen)} {split} episodes fit {horizon} steps (asked {episodes})")
        _check_compatible(model, reader, cameras, spec)
        key = {"model": model_fingerprint(model), "data": str(Path(data).resolve()),
               "data_files": hashlib.sha1("".join(reader.file_stamp(e) for e in chosen).encode()).hexdigest(),
               "episodes": [int(e) for e in chosen], "horizon": horizon, "seed": seed, "batch_size": batch_size,
               "sampler": sampler, "lpips": metric.backbone if metric is not None else None,
               "videos": [int(e) for e in chosen[:videos]], **({"dtype": precision} if dtype else {})}
        stored = out_dir / "runs" / f"{spec.name}.npz"
        run = load_replay_run(stored, key)
        if run is not None:
            print(f"[{spec.name}] reusing {stored} (same weights and settings)")
        else:
            print(f"[{spec.name}] replaying {len(chosen)} episodes x {horizon} steps")
            run = replay_model(model, reader, chosen, horizon, seed=seed, batch_size=batch_size, lpips=metric,
                               sampler_overrides=sampler, keep_videos=chosen[:videos], progress=progress)
            save_replay_run(run, stored, key)
        runs[spec.name] = (spec, run)
        kept[spec.name] = run.videos
        del model
    doc = build_metrics_document(
        runs, cameras=cameras, episodes=chosen, horizon=horizon,
        lpips_backbone=metric.backbone if metric is not None else None, seed=seed, data=str(data), split=split,
        sampler=sampler, command=command if command is not None else command_line(), bootstrap=bootstrap)
    validate_metrics(doc)
    doc["dtype"] = precision
    doc["figures"] = {m: p.name for m, p in plot_fidelity_curves(doc, out_dir).items()}
    doc["videos"] = _write_videos(reader, chosen[:videos], horizon, cameras, kept, out_dir)
    (out_dir / "metrics.json").write_text(json.dumps(doc, indent=1))
    return doc


def _check_compatible(model, reader, cameras: list[str], spec) -> None:
    """Every model must see the data's image size and the first model's cameras."""
    shape = reader.image_shape(cameras[0])
    if (model.config.height, model.config.width) != shape or list(model.config.cameras) != cameras:
        raise ValueError(f"model {spec.name} ({spec.path}) expects {model.config.height}x{model.config.width} images "
                         f"of {list(model.config.cameras)}; the data has {shape[0]}x{shape[1]} of {cameras}")


def _write_videos(reader, episodes: Sequence[int], horizon: int, cameras: list[str], generated: dict, out_dir: Path
                  ) -> dict:
    """Per episode and camera: ground truth then each model, side by side, from the shared first frame."""
    from persistworld_env.replay import load_replay_episode
    from persistworld_env.visualization import side_by_side, write_video

    files = {}
    for e in episodes:
        ep = load_replay_episode(reader, e, horizon)
        first = ep.first_frames[None]
        truth = np.concatenate([first, ep.frames[:horizon].reshape(-1, *ep.frames.shape[2:])])
        models = [np.concatenate([first, frames[e]]) for frames in generated.values()]
        for v, cam in enumerate(cameras):
            path = out_dir / "videos" / f"episode_{e:06d}_{cam}.mp4"
            write_video(side_by_side(truth[:, v], *[m[:, v] for m in models]), path, fps=5, scale=3)
            files.setdefault(str(e), {})[cam] = str(path.relative_to(out_dir))
    return {"columns": ["ground truth", *generated], "files": files}


def print_table(doc: dict) -> None:
    """The fidelity table (paper's shape) and the paired sign tests, on the terminal."""
    from rich.console import Console
    from rich.table import Table

    from persistworld_env.evaluation.fidelity import fidelity_table

    console = Console()
    headers, rows = fidelity_table(doc)
    table = Table(title=f"replay fidelity: {len(doc['episodes'])} episodes x {doc['horizon']} steps "
                        f"(LPIPS backbone: {doc['lpips_backbone']})")
    for h in headers:
        table.add_column(h, justify="left" if h == "model" else "right")
    for r in rows:
        table.add_row(*r)
    console.print(table)
    if doc["paired"]:
        paired = Table(title="paired per-episode comparisons (A vs B, two-sided sign test)")
        for h in ("A", "B", "group", "metric", "A wins / n", "win rate", "p-value"):
            paired.add_column(h)
        for p in doc["paired"]:
            paired.add_row(p["model_a"], p["model_b"], p["group"], p["metric"], f"{p['wins']} / {p['n']}",
                           f"{p['win_rate']:.2f}", f"{p['p_value']:.2g}")
        console.print(paired)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="model to evaluate (repeat for several); PATH is a model directory or 'default'")
    parser.add_argument("--data", required=True, help="LeRobot-layout dataset (MiniDROID or DROID)")
    parser.add_argument("--out", required=True, help="folder for metrics.json, plots and videos")
    parser.add_argument("--episodes", type=int, default=8, help="held-out episodes to replay (default: 8)")
    parser.add_argument("--horizon", type=int, default=14, help="replay steps of 0.8 s (default: 14, ~11 s)")
    parser.add_argument("--lpips", choices=["real", "random", "off"], default="real",
                        help="LPIPS backbone: real AlexNet weights (default), a random one (labelled, not a "
                             "perceptual metric), or off")
    parser.add_argument("--lpips-weights", default=None, help="torchvision AlexNet checkpoint for --lpips real")
    parser.add_argument("--batch-size", type=int, default=8, help="episodes replayed at once (default: 8)")
    parser.add_argument("--seed", type=int, default=0, help="base sampling seed; every model replays an episode "
                        "with the same seed (default: 0)")
    parser.add_argument("--sampling-steps", type=int, default=None, help="override the models' sampling steps")
    parser.add_argument("--guidance", type=float, default=None, help="override the models' guidance scale")
    parser.add_argument("--videos", type=int, default=2, help="episodes with side-by-side videos (default: 2)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for Elo intervals")
    parser.add_argument("--split", choices=["val", "train", "all"], default="val", help="episodes to draw from")
    parser.add_argument("--val-mod", type=int, default=100)
    parser.add_argument("--val-rem", type=int, default=99)
    parser.add_argument("--val-episodes", type=int, nargs="*", default=None, help="explicit validation episodes")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    add_dtype_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    doc = run_evaluation(args.model, args.data, args.out, episodes=args.episodes, horizon=args.horizon,
                         lpips=args.lpips, lpips_weights=args.lpips_weights, batch_size=args.batch_size,
                         seed=args.seed, sampling_steps=args.sampling_steps, guidance=args.guidance,
                         videos=args.videos, bootstrap=args.bootstrap, split=args.split, val_mod=args.val_mod,
                         val_rem=args.val_rem, val_episodes=args.val_episodes, device=args.device,
                         command=getattr(args, "command_line", None), dtype=args.dtype)
    print_table(doc)
    print(f"wrote {Path(args.out) / 'metrics.json'}")
    return 0
