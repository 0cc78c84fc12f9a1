"""Pictures a person looks at: tiled cameras, model-vs-truth comparisons, mp4 videos and contact sheets."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def tile_views(views: np.ndarray) -> np.ndarray:
    """(..., V, H, W, 3) -> (..., H, V*W, 3): the cameras side by side."""
    v = views.shape[-4]
    return np.concatenate([views[..., i, :, :, :] for i in range(v)], axis=-2)


def upscale(images: np.ndarray, factor: int) -> np.ndarray:
    """Nearest-neighbour upscaling of (..., H, W, 3) images."""
    return np.repeat(np.repeat(images, factor, axis=-3), factor, axis=-2)


def comparison_frames(truth: np.ndarray, *generated: np.ndarray) -> np.ndarray:
    """(T, V, H, W, 3) videos -> (T, (1+n)*H, V*W, 3): ground truth on top, each model below."""
    rows = [tile_views(truth)] + [tile_views(g) for g in generated]
    return np.concatenate(rows, axis=-3)


def side_by_side(*videos: np.ndarray, gap: int = 2) -> np.ndarray:
    """(T, H, W, 3) videos of one size -> (T, H, n*W + (n-1)*gap, 3): left to right, white gaps between."""
    if not videos or any(v.shape != videos[0].shape for v in videos):
        raise ValueError(f"need videos of one shape, got {[v.shape for v in videos]}")
    spacer = np.full((*videos[0].shape[:2], gap, 3), 255, np.uint8)
    parts = [videos[0]]
    for v in videos[1:]:
        parts += [spacer, v] if gap else [v]
    return np.concatenate(parts, axis=2)


def write_video(frames: np.ndarray, path: str | os.PathLike, fps: int = 5, scale: int = 3) -> Path:
    """Write uint8 (T, H, W, 3) frames as a widely playable mp4 (H.264, yuv420p)."""
    from persistworld_env.data.video import encode_video

    frames = upscale(np.asarray(frames, dtype=np.uint8), scale)
    h, w = frames.shape[1:3]
    frames = frames[:, : h - h % 2, : w - w % 2]  # yuv420p needs even sizes
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    encode_video(frames, path, fps=fps, pix_fmt="yuv420p", crf=18)
    return path


def contact_sheet(frames: np.ndarray, path: str | os.PathLike, columns: int = 8, scale: int = 2) -> Path:
    """Save up to ``columns`` evenly spaced frames of (T, H, W, 3), stacked vertically, as a PNG."""
    from PIL import Image

    idx = np.linspace(0, len(frames) - 1, min(columns, len(frames))).astype(int)
    sheet = np.concatenate([upscale(frames[i], scale) for i in idx], axis=0)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(sheet).save(path)
    return path
