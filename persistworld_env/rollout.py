"""The autoregressive rollout engine, written once for the environment, the post-training and the evaluation.

A batch of B independent rollouts. Each keeps a history buffer of latents and poses, one entry per
step: the first entry is the real first observation, and after every step only the last new frame is
appended. A step reads the 6 history entries at fixed sparse offsets, conditions on the current frame
(the last entry) and on 11 pose tokens (history poses, current pose, the 4 commanded poses), samples the
5-frame clip (frame 0 re-predicts the current frame), and returns its 4 new frames. Only the first
entry and the most recent ``max(-offset)`` entries are stored, so a step's cost and memory do not
grow with episode length.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np
import torch

from persistworld_env.constants import FRAMES_PER_STEP, POSE_DIM
from persistworld_env.models.clip_sampler import SamplerConfig, default_max_batch, sample_clip
from persistworld_env.models.world_model import WorldModel


@dataclass
class StepInputs:
    """What a step's clip was sampled from (the denoiser's conditioning) and the whole sampled clip."""

    history: torch.Tensor  # (B, 6, C, V*h, w) history latents read from the memory
    current: torch.Tensor  # (B, C, V*h, w) current-frame latent
    poses: torch.Tensor  # (B, 11, 7) normalised token poses (history, current, 4 commanded)
    instructions: list[str] | None
    clip: torch.Tensor  # (B, 5, C, V*h, w) sampled clip (frame 0 re-predicts the current frame)


@dataclass
class StepOutput:
    """The 4 new frames of every rollout: scaled latents and decoded uint8 images (CPU)."""

    latents: torch.Tensor  # (B, 4, C, V*h, w)
    frames: np.ndarray | None  # (B, F, V, H, W, 3) uint8, the last F = decoded_frames; None when not decoded
    alternatives: np.ndarray | None = None  # (B, K, F, V, H, W, 3) uint8 when asked for
    inputs: StepInputs | None = None


class _History:
    """One rollout's buffer: the first entry plus a window of the most recent ones."""

    def __init__(self, latent: torch.Tensor, pose: torch.Tensor, window: int) -> None:
        self.first = (latent, pose)
        self.recent: list[tuple[torch.Tensor, torch.Tensor]] = [(latent, pose)]
        self.length = 1
        self.window = window

    def copy(self) -> "_History":
        """An independent buffer with the same entries (entries are never modified, so they are shared)."""
        other = _History.__new__(_History)
        other.first, other.recent, other.length, other.window = self.first, list(self.recent), self.length, self.window
        return other

    def append(self, latent: torch.Tensor, pose: torch.Tensor) -> None:
        self.recent.append((latent, pose))
        self.length += 1
        if len(self.recent) > self.window:
            self.recent.pop(0)

    def read(self, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Entry ``length + offset`` (offset < 0), or the first entry (offset 0), clamped at the start."""
        index = 0 if offset == 0 else max(0, self.length + offset)
        if index == 0:
            return self.first
        return self.recent[index - (self.length - len(self.recent))]


class RolloutEngine:
    """Batched autoregressive rollouts of a :class:`WorldModel` (no gradients).

    Args:
        model: the world model (its device is used).
        sampler: sampling settings; the model's defaults when None.

    ``max_batch`` (attribute): rollouts per denoiser forward, by default ``default_max_batch(model.device)``
    (8 on a CPU, where larger forwards cost more per rollout; no limit on a GPU); None runs one forward.
    """

    def __init__(self, model: WorldModel, sampler: SamplerConfig | None = None) -> None:
        self.model = model
        self.sampler = sampler or model.config.sampler
        self.max_batch = default_max_batch(model.device)
        self.offsets = tuple(model.config.history_offsets)
        self._window = max([1] + [-o + 1 for o in self.offsets if o < 0])
        self._histories: list[_History | None] = []
        self._instructions: list[str | None] = []
        self._generators: list[torch.Generator] = []
        self._corrections: list[torch.Tensor | None] = []

    @property
    def batch_size(self) -> int:
        return len(self._histories)

    def with_sampler(self, **changes) -> "RolloutEngine":
        """Change sampling settings (steps, guidance, ...) in place; returns self."""
        self.sampler = replace(self.sampler, **changes)
        return self

    # -- reset ---------------------------------------------------------------------------------
    @torch.no_grad()
    def reset(self, frames: np.ndarray, poses: np.ndarray, instructions: Sequence[str | None] | None = None,
              seeds: Sequence[int] | None = None) -> None:
        """Start B rollouts from real first observations.

        Args:
            frames: uint8 (B, V, H, W, 3), cameras in the model's order.
            poses: raw 7-D poses (B, 7) of those observations.
            instructions: optional task text per rollout.
            seeds: sampling seed per rollout (reproducible noise); random when None.
        """
        b = _check_frames(frames, self.model)
        self.allocate(b)
        self.reset_slots(range(b), frames, poses, instructions, seeds)

    def allocate(self, batch_size: int) -> None:
        """Make room for ``batch_size`` rollouts; each must be started with :meth:`reset_slots` before stepping."""
        self._histories = [None] * batch_size
        self._instructions = [None] * batch_size
        self._generators = [torch.Generator(device="cpu") for _ in range(batch_size)]
        self._corrections = [None] * batch_size
        self._reference_poses = [None] * batch_size  # raw (7,) pose of each rollout's reference (first) frame

    @torch.no_grad()
    def reset_slots(self, slots: Sequence[int], frames: np.ndarray, poses: np.ndarray,
                    instructions: Sequence[str | None] | None = None, seeds: Sequence[int] | None = None) -> None:
        """Restart the rollouts in ``slots`` in place (the others keep going)."""
        slots = list(slots)
        if _check_frames(frames, self.model) != len(slots):
            raise ValueError(f"got frames for {frames.shape[0]} rollouts but {len(slots)} slots")
        poses = _check_poses(poses, (len(slots), POSE_DIM), "poses")
        latents = self.model.codec.encode_views(frames[:, None]).to(self.model.device)[:, 0]  # (n, C, Vh, w)
        normalized = self.model.normalizer.normalize(torch.as_tensor(poses, dtype=torch.float32))
        corrections = self.model.reference_correction(frames, latents)
        for i, slot in enumerate(slots):
            self._histories[slot] = _History(latents[i], normalized[i].to(self.model.device), self._window)
            self._corrections[slot] = corrections[i] if corrections is not None else None
            self._reference_poses[slot] = torch.from_numpy(poses[i].copy())
            self._instructions[slot] = instructions[i] if instructions is not None else None
            seed = int(seeds[i]) if seeds is not None else int(torch.randint(2**62, (1,)).item())
            self._generators[slot].manual_seed(seed)

    def branch(self, copies: int, seeds: Sequence[int] | None = None) -> "RolloutEngine":
        """A new engine with ``copies`` continuations of every rollout from its current state.

        Rollout b's copies are rollouts ``b * copies .. b * copies + copies - 1`` of the new engine; they
        share the history so far (nothing is recomputed) and draw their noise from ``seeds`` (one per new
        rollout; random when None). This engine is unchanged.
        """
        if not self._histories or any(h is None for h in self._histories):
            raise RuntimeError("RolloutEngine.reset() must be called before branch()")
        if copies < 1:
            raise ValueError(f"copies must be >= 1, got {copies}")
        n = self.batch_size * copies
        if seeds is not None and len(seeds) != n:
            raise ValueError(f"need one seed per branched rollout ({n}), got {len(seeds)}")
        other = RolloutEngine(self.model, self.sampler)
        other.max_batch = self.max_batch
        other.allocate(n)
        for j in range(n):
            other._histories[j] = self._histories[j // copies].copy()
            other._instructions[j] = self._instructions[j // copies]
            other._corrections[j] = self._corrections[j // copies]
            other._reference_poses[j] = self._reference_poses[j // copies]
            seed = int(seeds[j]) if seeds is not None else int(torch.randint(2**62, (1,)).item())
            other._generators[j].manual_seed(seed)
        return other

    # -- step ----------------------------------------------------------------------------------
    def _condition(self, poses: np.ndarray) -> tuple[torch.Tensor, ...]:
        """History latents, current latents, token poses, instructions and normalised new poses (nothing changes)."""
        if not self._histories or any(h is None for h in self._histories):
            raise RuntimeError("RolloutEngine.reset() must be called before step()")
        poses = _check_poses(poses, (self.batch_size, FRAMES_PER_STEP, POSE_DIM), "poses")
        model, dev = self.model, self.model.device
        new_poses = model.normalizer.normalize(torch.as_tensor(poses, dtype=torch.float32)).to(dev)
        history, history_poses, current, current_pose = [], [], [], []
        for h in self._histories:
            entries = [h.read(o) for o in self.offsets]
            history.append(torch.stack([e[0] for e in entries]))
            history_poses.append(torch.stack([e[1] for e in entries]))
            current.append(h.recent[-1][0])
            current_pose.append(h.recent[-1][1])
        history, current = torch.stack(history), torch.stack(current)
        token_poses = torch.cat([torch.stack(history_poses), torch.stack(current_pose)[:, None], new_poses], dim=1)
        instructions = self._instructions if any(s is not None for s in self._instructions) else None
        if instructions is not None:
            instructions = [s or "" for s in instructions]
        return history, current, token_poses, instructions, new_poses

    @torch.no_grad()
    def step(self, poses: np.ndarray, alternatives: int = 0, decode: bool = True,
             decoded_frames: int = FRAMES_PER_STEP) -> StepOutput:
        """Advance every rollout by one clip given the raw poses (B, 4, 7) commanded for the 4 new frames.

        ``alternatives`` K > 0 also samples K other clips of the same step (not used by the rollout) into
        ``StepOutput.alternatives``; their noise is derived from each rollout's own stream without
        advancing it, so the rollout is the same with or without them. ``decode=False`` skips decoding
        (``frames`` is None); ``decoded_frames`` F < 4 decodes only the last F new frames (the same images as
        when all are decoded, up to float rounding; the latents of all 4 are returned and kept either way).
        ``StepOutput.inputs`` holds the step's conditioning and its whole clip.
        """
        if (isinstance(decoded_frames, bool) or not isinstance(decoded_frames, (int, np.integer))
                or not 1 <= decoded_frames <= FRAMES_PER_STEP):
            raise ValueError(f"decoded_frames must be in 1..{FRAMES_PER_STEP}, got {decoded_frames!r}")
        history, current, token_poses, instructions, new_poses = self._condition(poses)
        raw = torch.as_tensor(np.asarray(poses, dtype=np.float32))
        tokens = self.model.denoiser.tokens(token_poses, instructions)
        others = (self._alternatives(history, current, tokens, raw, alternatives, decoded_frames)
                  if alternatives > 0 else None)
        clip = sample_clip(self.model.denoiser, history, current, tokens, self.sampler, self._generators,
                           self.max_batch)
        new = clip[:, 1:]
        frames = self._decode(new, raw, last=decoded_frames) if decode else None
        for i, h in enumerate(self._histories):
            h.append(new[i, -1], new_poses[i, -1])
        return StepOutput(latents=new, frames=frames, alternatives=others,
                          inputs=StepInputs(history, current, token_poses, instructions, clip))

    def _decode(self, new: torch.Tensor, poses: torch.Tensor, repeats: int = 1,
                last: int = FRAMES_PER_STEP) -> np.ndarray:
        """Decode the last ``last`` frames of the next clip ``new`` of every rollout (each repeated ``repeats`` times
        in ``new``), commanded at the raw ``poses`` (B, 4, 7), with the rollouts' reference corrections
        (``WorldModel.reference_correction``)."""
        skipped = new.shape[1] - last
        if self._corrections[0] is None:
            return self.model.decode(new[:, skipped:])
        # Frame f of the next clip lies (steps so far) * clip length + f + 1 frames after the reference.
        first = [(h.length - 1) * new.shape[1] + 1 + skipped for h in self._histories]
        pose_change = poses[:, skipped:] - torch.stack(self._reference_poses)[:, None]  # (B, last, 7)
        rep = lambda t: t.repeat_interleave(repeats, dim=0)  # noqa: E731
        return self.model.decode(new[:, skipped:], rep(torch.stack(self._corrections)), rep(torch.tensor(first)),
                                 rep(pose_change))

    def _alternatives(self, history: torch.Tensor, current: torch.Tensor, tokens: torch.Tensor, poses: torch.Tensor,
                      samples: int, last: int = FRAMES_PER_STEP) -> np.ndarray:
        """uint8 (B, samples, last, V, H, W, 3): other clips for the same conditions (their last ``last`` frames)."""
        b = history.shape[0]
        gens = []
        for g in self._generators:
            copy = torch.Generator()
            copy.set_state(g.get_state())  # read the stream without advancing it
            base = int(torch.randint(2**62, (1,), generator=copy).item())
            gens += [torch.Generator().manual_seed(base + k + 1) for k in range(samples)]
        rep = lambda t: t.repeat_interleave(samples, dim=0)  # noqa: E731
        clip = sample_clip(self.model.denoiser, rep(history), rep(current), rep(tokens), self.sampler, gens,
                           self.max_batch)
        frames = self._decode(clip[:, 1:], poses, samples, last)
        return frames.reshape(b, samples, *frames.shape[1:])


def _check_frames(frames: np.ndarray, model: WorldModel) -> int:
    cfg = model.config
    expected = (len(cfg.cameras), cfg.height, cfg.width, 3)
    if not isinstance(frames, np.ndarray) or frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[1:] != expected:
        shape = getattr(frames, "shape", None)
        raise ValueError(f"frames must be uint8 (B, {', '.join(map(str, expected))}), got "
                         f"{getattr(frames, 'dtype', type(frames).__name__)} {shape}")
    return frames.shape[0]


def _check_poses(poses, shape: tuple[int, ...], name: str) -> np.ndarray:
    arr = np.asarray(poses, dtype=np.float32)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contain NaN or inf")
    return arr
