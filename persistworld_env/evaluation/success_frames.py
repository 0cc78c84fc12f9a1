"""World-model frames labelled by the simulator: training data for a success detector that judges generated frames.

The success detector learns from the simulator's frames, but in ``PersistWorld-DROID-v0`` it judges the world
model's. Where the two differ (a blurred arm near the target, an object the model moved), it can fire when
nothing was solved, and policy evaluation in the model then credits policies that never succeed.
:func:`collect_success_frames` runs policies in the world model (batched) and, in lockstep, MiniDROID on the
*same* actions from the *same* scene (as ``ground_truth="sim"`` does for one env); every step keeps the
model's latest frame of each camera with the simulator's task predicate after that step as its label.
:class:`SuccessFrames` holds the result and saves it as one ``.npz`` file (``persistworld train-success
--rollout-frames``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Sequence

import numpy as np

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP
from persistworld_env.spaces import POSE_KEY


@dataclass
class SuccessFrames:
    """Labelled world-model frames: one row per (episode, step)."""

    frames: np.ndarray        # uint8 (N, V, H, W, 3): the model's latest frame of each camera after the step
    labels: np.ndarray        # bool (N,): the simulator's success predicate after the same actions
    instructions: np.ndarray  # str (N,)
    policies: np.ndarray      # str (N,): which policy acted
    seeds: np.ndarray         # int (N,): the episode's reset seed
    steps: np.ndarray         # int (N,): env step (1 = after the first action)

    def __post_init__(self) -> None:
        n = len(self.labels)
        if self.frames.dtype != np.uint8 or self.frames.ndim != 5 or self.frames.shape[1] != len(CAMERAS):
            raise ValueError(f"frames must be uint8 (N, {len(CAMERAS)}, H, W, 3), got {self.frames.dtype} "
                             f"{self.frames.shape}")
        if any(len(getattr(self, f.name)) != n for f in fields(self)):
            raise ValueError("every field of SuccessFrames needs one entry per row")

    def __len__(self) -> int:
        return len(self.labels)

    def select(self, rows: np.ndarray) -> "SuccessFrames":
        return SuccessFrames(**{f.name: getattr(self, f.name)[rows] for f in fields(self)})

    @classmethod
    def concatenate(cls, parts: Sequence["SuccessFrames"]) -> "SuccessFrames":
        if not parts:
            raise ValueError("nothing to concatenate")
        return cls(**{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)})

    def save(self, path: str | os.PathLike) -> Path:
        """Write one ``.npz`` file atomically."""
        from persistworld_env.data.io_utils import atomic_path

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{k.name: getattr(self, k.name) for k in fields(self)})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SuccessFrames":
        """Read a file written by :meth:`save`; a missing, truncated or foreign file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no success-frames file at {path} (make one with `persistworld "
                                    "collect-success-frames`)")
        try:
            with np.load(path, allow_pickle=False) as data:
                missing = {f.name for f in fields(cls)} - set(data.files)
                if missing:
                    raise ValueError(f"missing arrays {sorted(missing)}")
                return cls(**{f.name: data[f.name] for f in fields(cls)})
        except Exception as e:  # zipfile / value errors of a truncated or foreign file
            raise ValueError(f"cannot read success frames from {path} (truncated, corrupt or not made by "
                             f"collect-success-frames?): {e}") from e


def collect_success_frames(venv, spec, seeds: Sequence[int], max_steps: int, progress: bool = True) -> SuccessFrames:
    """Run policy ``spec`` (:class:`~persistworld_env.evaluation.policies.PolicySpec`) from every reset seed for
    ``max_steps`` steps in the world model ``venv`` (a :class:`~persistworld_env.vector_env.PersistWorldVectorEnv`
    with no termination, ``venv.num_envs`` episodes at a time) and in MiniDROID on the same actions."""
    from tqdm.auto import tqdm

    from persistworld_env.vector_env import slot_entries
    from persistworld_env.sim.env import MiniDROIDSimEnv

    n = venv.num_envs
    sims = [MiniDROIDSimEnv(venv.height, venv.width, pose_normalizer=venv.model.normalizer,
                            terminate_on_success=False, observed_frames=1) for _ in range(n)]  # only labels are used
    rows: dict[str, list] = {f.name: [] for f in fields(SuccessFrames)}
    bar = tqdm(total=len(seeds), desc=spec.name, unit="ep", disable=not progress)
    try:
        for start in range(0, len(seeds), n):
            chunk = [int(s) for s in seeds[start:start + n]]
            obs, info = venv.reset(seed=chunk + [chunk[-1]] * (n - len(chunk)))  # padding slots are ignored
            policies, instructions = [spec.build() for _ in range(n)], []
            for i in range(len(chunk)):
                slot_info = slot_entries(info, i)
                policies[i].reset(slot_info, venv.model.normalizer)
                sims[i].reset(options={"task": slot_info["task"], "episode_seed": slot_info["episode_seed"]})
                instructions.append(slot_info["instruction"])
            for step in range(1, max_steps + 1):
                actions = np.stack([policies[i].act(slot_entries(obs, i)) if i < len(chunk)
                                    else np.tile(np.asarray(obs[POSE_KEY][i], np.float32), (FRAMES_PER_STEP, 1))
                                    for i in range(n)])
                obs, _, terminated, truncated, _ = venv.step(actions)
                if np.asarray(terminated).any() or np.asarray(truncated).any():
                    raise ValueError("the world-model env must not end episodes while frames are collected "
                                     f"(no reward, max_episode_steps > {max_steps})")
                for i, seed in enumerate(chunk):
                    *_, sim_info = sims[i].step(actions[i])
                    rows["frames"].append(np.stack([obs[cam][i, -1] for cam in CAMERAS]))
                    rows["labels"].append(bool(sim_info["success"]))
                    rows["instructions"].append(instructions[i])
                    rows["policies"].append(spec.name)
                    rows["seeds"].append(seed)
                    rows["steps"].append(step)
            bar.update(len(chunk))
    finally:
        bar.close()
        for sim in sims:
            sim.close()
    return SuccessFrames(frames=np.stack(rows["frames"]), labels=np.array(rows["labels"], bool),
                         instructions=np.array(rows["instructions"], dtype=str),
                         policies=np.array(rows["policies"], dtype=str),
                         seeds=np.array(rows["seeds"], np.int64), steps=np.array(rows["steps"], np.int64))
