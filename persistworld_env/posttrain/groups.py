"""One post-training group, steps S1-S3 of PersistWorld (DESIGN.md section 2).

* draw: an episode, a continuation of C clips (uniform in 1..C_max), a prefix of L steps (uniform in
  0..L_max) and a start step, all clamped so that start + L + C fits the episode;
* S1: from the recorded frame at the start, roll the L-step prefix out autoregressively with the
  (old) model under the recorded actions;
* S2: branch K candidates from that frozen state and generate their C clips, all K in one batched
  call per clip, each from its own noise;
* S3: score every candidate against the true future (:class:`~persistworld_env.rewards.RewardScorer`).

Every clip of every candidate becomes a training sample: the conditioning it was generated from
(history latents, current latent, token poses), its sampled latents (the x0 of step S4) and the index
of its candidate (whose reward it shares). Nothing here keeps gradients.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import torch

from persistworld_env.models.clip_sampler import SamplerConfig
from persistworld_env.replay import ReplayEpisode
from persistworld_env.rewards import GroupScores, RewardScorer
from persistworld_env.rollout import RolloutEngine, StepInputs


@dataclass(frozen=True)
class GroupSpec:
    """Where a group starts and how long its prefix and continuation are (in env steps of 4 frames)."""

    episode: int
    start: int
    prefix_steps: int
    clips: int

    @property
    def steps(self) -> int:
        """Steps of ground truth the group needs from its start."""
        return self.prefix_steps + self.clips


def draw_group(rng: np.random.Generator, available: Mapping[int, int], max_prefix: int, max_clips: int) -> GroupSpec:
    """Draw a group over episodes with ``available[episode]`` replay steps (see module docstring)."""
    if max_prefix < 0 or max_clips < 1:
        raise ValueError(f"need max_prefix >= 0 and max_clips >= 1, got {max_prefix} and {max_clips}")
    episodes = sorted(e for e, n in available.items() if n >= 1)
    if not episodes:
        raise ValueError("no episode with at least one replay step")
    episode = episodes[int(rng.integers(len(episodes)))]
    n = int(available[episode])
    clips = int(rng.integers(1, min(max_clips, n) + 1))
    prefix = int(rng.integers(0, min(max_prefix, n - clips) + 1))
    start = int(rng.integers(0, n - clips - prefix + 1))
    return GroupSpec(episode, start, prefix, clips)


@dataclass
class GroupSamples:
    """The training samples of one group (N = K candidates x C clips, candidate-major: n = k * C + c)."""

    history: torch.Tensor  # (N, 6, C, V*h, w)
    current: torch.Tensor  # (N, C, V*h, w)
    poses: torch.Tensor  # (N, 11, 7) normalised token poses
    x0: torch.Tensor  # (N, 5, C, V*h, w) the sampled clips
    instructions: list[str] | None
    candidate: np.ndarray  # (N,) index of each sample's candidate
    scores: GroupScores
    frames: np.ndarray  # (K, C, 4, V, H, W, 3) uint8, the candidates' decoded frames
    timings: dict[str, float] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.x0.shape[0])

    @property
    def clip_index(self) -> np.ndarray:
        """(N,) position of each sample's clip within its candidate's continuation (0..C-1)."""
        clips = len(self) // len(self.scores.rewards)
        return np.arange(len(self)) % clips

    @property
    def rewards(self) -> np.ndarray:
        """(K,) scalar reward per candidate."""
        return self.scores.rewards

    def batch(self, index: Sequence[int] | slice) -> dict:
        """A minibatch as keyword arguments for the update: ``history, current, poses, x0, instructions``."""
        idx = np.arange(len(self))[index]
        t = torch.as_tensor(idx, dtype=torch.long)
        return {"history": self.history[t], "current": self.current[t], "poses": self.poses[t], "x0": self.x0[t],
                "instructions": [self.instructions[i] for i in idx] if self.instructions is not None else None}


def rollout_prefix(engine: RolloutEngine, episode: ReplayEpisode, steps: int, seed: int) -> None:
    """S1: reset ``engine`` to ``episode``'s first frame and roll ``steps`` steps under its recorded poses."""
    if steps > episode.steps:
        raise ValueError(f"prefix of {steps} steps, but the episode window has {episode.steps}")
    engine.reset(episode.first_frames[None], episode.first_pose[None],
                 [episode.instruction] if episode.instruction else None, seeds=[seed])
    for t in range(steps):
        engine.step(episode.poses[t][None], decode=False)


def generate_candidates(engine: RolloutEngine, poses: np.ndarray, seeds: Sequence[int],
                        batch_size: int | None = None, sampler: SamplerConfig | None = None, decode: bool = True
                        ) -> tuple[np.ndarray | None, list[StepInputs]]:
    """S2: branch len(seeds) candidates from ``engine``'s single rollout and step each through ``poses`` (C, 4, 7).

    ``batch_size=None`` generates all candidates in one batched call per clip; a number splits them
    into batches of that size (1 = one by one; the same samples, for comparison). ``sampler`` samples the
    candidates (default: the engine's). Returns the decoded frames (K, C, 4, V, H, W, 3; None with
    ``decode=False``, which only samples the latents) and, per clip, the :class:`StepInputs` of all K candidates.
    """
    if engine.batch_size != 1:
        raise ValueError(f"branch from one rollout, the engine holds {engine.batch_size}")
    k = len(seeds)
    size = k if batch_size is None else max(1, int(batch_size))
    frames, inputs = [], []
    for lo in range(0, k, size):
        chunk = list(seeds[lo:lo + size])
        branch = engine.branch(len(chunk), chunk)
        branch.sampler = sampler or branch.sampler
        outs = [branch.step(np.repeat(p[None], len(chunk), axis=0), decode=decode) for p in poses]
        if decode:
            frames.append(np.stack([o.frames for o in outs], axis=1))
        inputs.append([o.inputs for o in outs])
    per_clip = [_cat_inputs([chunk[c] for chunk in inputs]) for c in range(len(poses))]
    return (np.concatenate(frames) if decode else None), per_clip


def _cat_inputs(parts: list[StepInputs]) -> StepInputs:
    if len(parts) == 1:
        return parts[0]
    instructions = None if parts[0].instructions is None else [s for p in parts for s in p.instructions]
    return StepInputs(*(torch.cat([getattr(p, f) for p in parts]) for f in ("history", "current", "poses")),
                      instructions=instructions, clip=torch.cat([p.clip for p in parts]))


def collect_group(engine: RolloutEngine, episode: ReplayEpisode, spec: GroupSpec, seeds: Sequence[int],
                  scorer: RewardScorer, batch_size: int | None = None,
                  candidate_sampler: SamplerConfig | None = None) -> GroupSamples:
    """S1-S3 for one group.

    Args:
        engine: a rollout engine of the model to sample with (the old policy); it is reset here.
        episode: ground truth starting at the group's start, at least ``spec.steps`` steps long.
        spec: prefix length and number of clips (``spec.episode`` / ``spec.start`` are informational).
        seeds: K + 1 sampling seeds: the prefix's, then one per candidate.
        scorer: the reward.
        batch_size: candidates per sampling call (None = all K at once).
        candidate_sampler: how the candidates are sampled (default: like the prefix, the engine's sampler).
    """
    if len(seeds) < 2:
        raise ValueError("need a prefix seed and at least one candidate seed")
    if episode.steps < spec.steps:
        raise ValueError(f"the group needs {spec.steps} steps of truth, the episode window has {episode.steps}")
    timings = {}
    t0 = time.perf_counter()
    rollout_prefix(engine, episode, spec.prefix_steps, int(seeds[0]))
    t1 = time.perf_counter()
    future = slice(spec.prefix_steps, spec.steps)
    frames, per_clip = generate_candidates(engine, episode.poses[future], seeds[1:], batch_size, candidate_sampler)
    t2 = time.perf_counter()
    before = episode.frames[spec.prefix_steps - 1, -1] if spec.prefix_steps > 0 else episode.first_frames
    scores = scorer(frames, episode.frames[future], before)
    t3 = time.perf_counter()
    timings.update(prefix=t1 - t0, candidates=t2 - t1, rewards=t3 - t2)

    def stacked(name: str) -> torch.Tensor:  # per clip (K, ...) -> candidate-major (K * C, ...)
        return torch.stack([getattr(s, name) for s in per_clip], dim=1).flatten(0, 1)

    k, c = frames.shape[:2]
    instructions = per_clip[0].instructions
    return GroupSamples(
        history=stacked("history"), current=stacked("current"), poses=stacked("poses"), x0=stacked("clip"),
        instructions=[s for s in instructions for _ in range(c)] if instructions is not None else None,
        candidate=np.repeat(np.arange(k), c), scores=scores, frames=frames, timings=timings)
