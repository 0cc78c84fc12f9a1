"""Encode uint8 frame arrays to mp4 and decode them back (PyAV).

Defaults suit MiniDROID's tiny frames (48x80): H.264 (libx264) in **4:4:4** chroma (``yuv444p``) at
high quality (CRF 12). 4:2:0 halves chroma resolution, which smears the colour of objects a few
pixels wide. Encoding is single-threaded with the colour conversion done in numpy, and x264's macroblock
tree rate control is off (``mbtree=0``): on frames this small it made the output depend on the process's
memory state (the same frames encoded twice in one process decoded up to 59 levels apart on some wrist
frames). Without it identical frames decode to identical frames; compare *decoded* frames, not mp4 bytes,
when checking determinism (the container may differ).
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from persistworld_env.constants import DATA_FPS
from persistworld_env.data.errors import DatasetError

DEFAULT_CODEC = "libx264"
DEFAULT_PIX_FMT = "yuv444p"
DEFAULT_CRF = 12
#: x264 settings beyond the preset: no macroblock tree, whose output depended on memory state (see above)
X264_PARAMS = "mbtree=0"
_BT601, _LIMITED, _FULL = 6, 1, 2  # AVCOL_SPC_SMPTE170M, AVCOL_RANGE_MPEG, AVCOL_RANGE_JPEG


def encode_video(
    frames: np.ndarray,
    path: str | os.PathLike,
    fps: int = DATA_FPS,
    codec: str = DEFAULT_CODEC,
    pix_fmt: str = DEFAULT_PIX_FMT,
    crf: int = DEFAULT_CRF,
) -> None:
    """Encode ``frames`` (uint8, (T, H, W, 3), RGB) to an mp4 file at ``path``.

    Writes ``path`` directly; callers that need atomicity write to a temporary name (see
    :func:`persistworld_env.data.io_utils.atomic_path`).
    """
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or frames.shape[0] == 0:
        raise ValueError(f"frames must be uint8 (T>0, H, W, 3), got {frames.dtype} {frames.shape}")
    _, height, width, _ = frames.shape
    options = {"crf": str(crf), "preset": "medium"} if codec in ("libx264", "libx265") else {}
    if codec == "libx264":
        options["x264-params"] = X264_PARAMS
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.codec_context.thread_count = 1
        stream.codec_context.colorspace, stream.codec_context.color_range = _BT601, _LIMITED
        stream.codec_context.time_base = Fraction(1, fps)
        for i, frame in enumerate(frames):
            vf = _to_encoder_frame(frame, pix_fmt)
            vf.pts, vf.time_base = i, Fraction(1, fps)
            for packet in stream.encode(vf):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


# BT.601 limited ("TV") range, the default a decoder assumes for SD/unspecified H.264 and what we tag.
_RGB2YUV = np.array([[0.256788, 0.504129, 0.097906],
                     [-0.148223, -0.290993, 0.439216],
                     [0.439216, -0.367788, -0.071427]])
_YUV_OFFSET = np.array([16.0, 128.0, 128.0])
_YUV2RGB = np.linalg.inv(_RGB2YUV)


def rgb_to_yuv444(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB (H, W, 3) -> uint8 planar YUV 4:4:4 (3, H, W), BT.601 limited range."""
    yuv = np.tensordot(_RGB2YUV, rgb.astype(np.float64), axes=([1], [2])) + _YUV_OFFSET[:, None, None]
    return np.clip(np.rint(yuv), 0, 255).astype(np.uint8)


def yuv444_to_rgb(yuv: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_yuv444`: uint8 planar (3, H, W) -> uint8 RGB (H, W, 3)."""
    centered = yuv.astype(np.float64) - _YUV_OFFSET[:, None, None]
    rgb = np.tensordot(centered, _YUV2RGB, axes=([0], [1]))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _to_encoder_frame(rgb: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    """RGB -> encoder input frame.

    For yuv444p the conversion is done in numpy (bit-identical to swscale's BT.601 limited-range
    result here, and independent of library state); other formats go through swscale.
    """
    if pix_fmt == "yuv444p":
        frame = av.VideoFrame.from_ndarray(rgb_to_yuv444(rgb), format="yuv444p")
    else:
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24").reformat(format=pix_fmt)
    frame.colorspace, frame.color_range = _BT601, _LIMITED
    return frame


def decode_video(path: str | os.PathLike, expected_frames: int | None = None, step: int = 1) -> np.ndarray:
    """Decode an mp4 file to uint8 RGB frames (T, H, W, 3).

    Args:
        path: the video file.
        expected_frames: the frame count the dataset index records. Fewer decoded frames (a truncated
            file) raise :class:`DatasetError`; surplus frames are dropped.
        step: keep only frames ``0, step, 2*step, ...`` (all frames are still decoded, since inter-coded
            frames depend on their predecessors; only memory is saved).

    Raises:
        DatasetError: naming ``path`` when it is missing, unreadable, corrupt or too short.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"missing video file: {path}")
    kept: list[np.ndarray] = []
    n = 0
    try:
        with av.open(str(path), mode="r") as container:
            if not container.streams.video:
                raise DatasetError(f"no video stream in {path}")
            for frame in container.decode(video=0):
                if expected_frames is not None and n >= expected_frames:
                    break
                if n % step == 0:
                    kept.append(_to_rgb(frame))
                n += 1
    except DatasetError:
        raise
    except (av.FFmpegError, OSError, ValueError) as e:
        raise DatasetError(f"cannot decode video {path} (truncated or corrupt?): {e}") from e
    if expected_frames is not None and n < expected_frames:
        raise DatasetError(f"video {path} has {n} frames but the dataset index says {expected_frames} "
                           "(truncated or corrupt file)")
    if not kept:
        raise DatasetError(f"video {path} contains no frames")
    return np.stack(kept)


def _to_rgb(frame: av.VideoFrame) -> np.ndarray:
    if frame.format.name == "yuv444p" and frame.color_range != _FULL:
        return yuv444_to_rgb(frame.to_ndarray())  # exact inverse of the encoder-side conversion
    return frame.to_ndarray(format="rgb24")


def probe_video(path: str | os.PathLike) -> dict:
    """Stream properties of a video file in LeRobot's ``features[...]['info']`` vocabulary."""
    path = Path(path)
    try:
        with av.open(str(path), mode="r") as container:
            s = container.streams.video[0]
            return {
                "video.fps": float(s.average_rate) if s.average_rate else None,
                "video.height": s.codec_context.height,
                "video.width": s.codec_context.width,
                "video.channels": 3,
                "video.codec": s.codec_context.name,
                "video.pix_fmt": s.codec_context.pix_fmt,
                "video.is_depth_map": False,
                "has_audio": bool(container.streams.audio),
            }
    except (av.FFmpegError, OSError, IndexError) as e:
        raise DatasetError(f"cannot probe video {path}: {e}") from e
