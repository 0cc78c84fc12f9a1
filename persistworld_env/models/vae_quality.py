"""Multi-view frames of a dataset split, and the autoencoder's reconstruction quality on them.

:class:`SplitFrames` serves single time steps (all cameras) of a LeRobot dataset's train or
validation episodes, through the project's reader, split rule and decoded-frame cache
(:class:`persistworld_env.data.WorldModelDataset`). :func:`evaluate_reconstruction` reports the PSNR
(data range 1, mean over frames) per camera of encode -> decode; ``main`` is its command line.
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Sequence

import numpy as np
import torch

from persistworld_env.constants import CAMERAS, FRAME_STRIDE
from persistworld_env.metrics import psnr
from persistworld_env.models.image_codec import LatentCodec


class SplitFrames:
    """Every ``frame_step``-th frame (all cameras) of a dataset split's episodes.

    Args:
        root: LeRobot-layout dataset directory.
        split: ``"train"``, ``"val"`` or ``"all"`` (rule of :class:`WorldModelDataset`: episode
            ``% val_mod == val_rem``, or membership in ``val_episodes``).
        max_episodes: keep only the first N episodes of the split.
        frame_step: data ticks between kept frames (default 3: the 5 Hz frames the world model sees,
            sharing the world model's decoded-frame cache files).
        cache_dir: on-disk decoded-frame cache (None: in memory only).
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", cameras: Sequence[str] = CAMERAS,
                 val_mod: int = 100, val_rem: int = 99, val_episodes: Sequence[int] | None = None,
                 max_episodes: int | None = None, frame_step: int = FRAME_STRIDE,
                 cache_dir: str | os.PathLike | None = None, max_episodes_in_memory: int = 100_000):
        from persistworld_env.data.dataset import SamplingConfig, WorldModelDataset

        ds = WorldModelDataset(root, split=split, cameras=cameras, val_mod=val_mod, val_rem=val_rem,
                               val_episodes=val_episodes, cache_dir=cache_dir,
                               sampling=SamplingConfig(stride=frame_step, current_stride=frame_step),
                               max_episodes_in_memory=max_episodes_in_memory)
        self.root, self.split, self.cameras = str(root), split, ds.cameras
        self.frame_step = frame_step
        self._poses: dict[int, np.ndarray] = {}
        self.reader, self.frames = ds.reader, ds.frames
        self.episodes = [int(e) for e in ds.episodes[:max_episodes]]
        if not self.episodes:
            raise ValueError(f"split {split!r} of {root} has no episodes (val_mod={val_mod}, val_rem={val_rem}, "
                             f"val_episodes={val_episodes}); choose another split")
        rows = [-(-self.reader.length(ep) // frame_step) for ep in self.episodes]
        self._starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._starts[-1])

    def image_shape(self) -> tuple[int, int]:
        return self.reader.image_shape(self.cameras[0])

    def locate(self, index: int) -> tuple[int, int]:
        """(episode_index, row in its cached frames) of frame ``index``."""
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self.episodes[k], int(index - self._starts[k])

    def _locations(self, indices: Sequence[int] | np.ndarray) -> list[tuple[int, int]]:
        """``locate`` of every index, range-checked."""
        out = []
        for i in np.asarray(indices, dtype=np.int64):
            if not 0 <= i < len(self):
                raise IndexError(f"frame {i} out of range [0, {len(self)})")
            out.append(self.locate(int(i)))
        return out

    def get(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 ``(N, V, H, W, 3)`` frames at the given indices."""
        return np.stack([np.asarray(self.frames.get(ep)[row]) for ep, row in self._locations(indices)])

    def poses(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Raw 7-D poses ``(N, 7)`` recorded with the frames at the given indices."""
        out = []
        for ep, row in self._locations(indices):
            if ep not in self._poses:
                self._poses[ep] = np.asarray(self.reader.load_pose(ep), dtype=np.float32)
            out.append(self._poses[ep][row * self.frame_step])
        return np.stack(out)

    def evenly_spaced(self, count: int | None) -> np.ndarray:
        """``count`` indices spread evenly over all frames (all of them when ``count`` is None or larger)."""
        n = len(self)
        if count is None or count >= n:
            return np.arange(n)
        return np.linspace(0, n - 1, count).round().astype(np.int64)


def reconstruction_psnr(codec: LatentCodec, frames: SplitFrames, indices: Sequence[int] | np.ndarray,
                        batch_size: int = 32) -> dict[str, float]:
    """Mean PSNR per camera (and ``"mean"`` over cameras) of encode -> decode of the given frames."""
    values = []
    indices = np.asarray(indices)
    for start in range(0, len(indices), batch_size):
        x = frames.get(indices[start:start + batch_size])[:, None]  # (N, 1, V, H, W, 3): one frame per sample
        values.append(torch.from_numpy(psnr(x, codec.reconstruct_views(x).numpy()))[:, 0])
    per = torch.cat(values).mean(0)
    result = {cam: float(per[v]) for v, cam in enumerate(frames.cameras)}
    result["mean"] = float(per.mean())
    return result


def evaluate_reconstruction(autoencoder_dir: str | os.PathLike, data_dir: str | os.PathLike,
                            episodes: int | None = None, split: str = "val", max_frames: int | None = None,
                            val_mod: int = 100, val_rem: int = 99, val_episodes: Sequence[int] | None = None,
                            device: str = "cpu", cache_dir: str | os.PathLike | None = None,
                            batch_size: int = 32) -> dict[str, float]:
    """PSNR (dB) per camera of the autoencoder at ``autoencoder_dir`` on ``split`` of ``data_dir``.

    ``episodes`` limits the split to its first N episodes, ``max_frames`` to N evenly spaced frames.
    """
    from persistworld_env.models.autoencoder import load_codec

    codec = load_codec(autoencoder_dir, device=device)
    frames = SplitFrames(data_dir, split=split, val_mod=val_mod, val_rem=val_rem, val_episodes=val_episodes,
                         max_episodes=episodes, cache_dir=cache_dir)
    return reconstruction_psnr(codec, frames, frames.evenly_spaced(max_frames), batch_size=batch_size)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments of the ``vae-eval`` command."""
    parser.add_argument("--model", required=True, help="autoencoder directory (config.json + safetensors)")
    parser.add_argument("--data", required=True, help="LeRobot-layout dataset directory")
    parser.add_argument("--split", choices=["train", "val", "all"], default="val", help="episodes to use (default: val)")
    parser.add_argument("--episodes", type=int, default=None, help="first N episodes of the split (default: all)")
    parser.add_argument("--max-frames", type=int, default=None, help="N evenly spaced frames (default: all)")
    parser.add_argument("--val-mod", type=int, default=100, help="validation: episode %% val_mod == val_rem (100)")
    parser.add_argument("--val-rem", type=int, default=99, help="validation remainder (default: 99)")
    parser.add_argument("--val-episodes", type=int, nargs="*", default=None, help="explicit validation episodes")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--cache-dir", default=None, help="decoded-frame cache directory")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def main(args: argparse.Namespace) -> int:
    """Print the reconstruction PSNR per camera."""
    result = evaluate_reconstruction(args.model, args.data, episodes=args.episodes, split=args.split,
                                     max_frames=args.max_frames, val_mod=args.val_mod, val_rem=args.val_rem,
                                     val_episodes=args.val_episodes, device=args.device, cache_dir=args.cache_dir)
    if args.json:
        print(json.dumps(result))
    else:
        for cam, value in result.items():
            print(f"{cam:>16s}  PSNR {value:6.2f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(add_arguments(argparse.ArgumentParser(description=__doc__)).parse_args()))
