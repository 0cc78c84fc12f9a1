"""The policy zoo of policy evaluation, and the episode runner shared by the simulator and the world model.

A policy acts on the observations of ``MiniDROID-Sim-v0`` and ``PersistWorld-DROID-v0`` alike (same
spaces): per camera the latest clip (4, H, W, 3) uint8 and the normalised pose; it returns a (4, 7)
chunk of normalised absolute poses. Policies work in raw poses internally and convert with the
environment's normaliser given at :meth:`Policy.reset`, so one policy drives environments whose
normalisers differ. The zoo spans a spread of quality:

* :class:`ExpertPolicy`: MiniDROID's scripted closed-loop expert with fixed noise (per-tick jitter, a
  per-episode grasp offset, speed, giving up). It plans in a private simulator of the episode's scene
  (``info["episode_seed"]``, ``info["task"]``, which both environments report at reset) with the same
  closed-loop controller that makes the dataset, and plays the plan back as action chunks: the very
  same actions in the simulator and in the world model, whatever either one renders.
* :class:`BCPolicy`: behaviour cloning from images: a small CNN on the latest frame of every camera plus
  the pose -> the next action chunk, trained on MiniDROID by :func:`train_bc_policy` with a step
  budget (different budgets give different quality). Closed loop on the pixels it is shown, so in the
  world model it acts on generated frames.
* :class:`RandomPolicy`: a random walk of the end effector with random gripper commands.

:func:`run_policy` runs a policy for a list of reset seeds on any Gymnasium vector env (the simulator
in ``SyncVectorEnv``, the world model batched) and returns per-seed success: the step's
``info["success"]`` where the env reports it (the simulator's task predicate; the world model's
learned detector in its ``reward="success"`` mode), else ``terminated`` (:func:`step_success`).
"""
from __future__ import annotations

import functools
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from persistworld_env.constants import (
    ACTION_CARTESIAN, ACTION_GRIPPER, CAMERAS, FRAME_STRIDE, FRAMES_PER_STEP, POSE_DIM,
)
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.spaces import POSE_KEY
from persistworld_env.vector_env import slot_entries


class Policy(Protocol):
    """What the runner needs from a policy (one instance per episode)."""

    def reset(self, info: Mapping[str, Any], normalizer: PoseNormalizer) -> None:
        """Start an episode; ``info`` is the env's reset info, ``normalizer`` its pose normaliser."""

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        """The next action: float32 (4, 7) normalised absolute poses."""


def _to_action(raw: np.ndarray, normalizer: PoseNormalizer) -> np.ndarray:
    """Raw poses (4, 7) -> a valid env action (normalised, clipped to [-1, 1])."""
    return np.clip(np.asarray(normalizer.normalize(np.asarray(raw, np.float64)), np.float32), -1.0, 1.0)


def _raw_pose(obs: Mapping[str, np.ndarray], normalizer: PoseNormalizer) -> np.ndarray:
    return np.asarray(normalizer.denormalize(np.asarray(obs[POSE_KEY], np.float64)), np.float64)


# -- scripted experts ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def _planning_simulator():
    """One physics-only simulator per process for the experts' plans (never rendered)."""
    from persistworld_env.sim.simulator import MiniDROIDSimulator

    return MiniDROIDSimulator(16, 16)


@dataclass
class _Commands:
    """The one field :func:`persistworld_env.sim.recording.action_chunks` reads."""

    action_pose: np.ndarray


@functools.lru_cache(maxsize=4096)
def _expert_commands(noise: tuple[float, ...], episode_seed: int, task: str | None,
                     max_ticks: int | None) -> np.ndarray:
    """Raw 15 Hz commands (T, 7) of the scripted expert with ``noise`` on the scene of ``episode_seed``
    (deterministic, so cached: the simulator run and every world-model run reuse one plan)."""
    from persistworld_env.sim.experts import ExpertNoise
    from persistworld_env.sim.recording import run_expert

    limit = {} if max_ticks is None else {"max_ticks": max_ticks}
    run = run_expert(_planning_simulator(), episode_seed, task, noise=ExpertNoise(*noise), render=False, **limit)
    return run.actions


class ExpertPolicy:
    """The scripted expert with fixed noise, planned in a private simulator of the episode's scene.

    ``max_steps`` bounds the plan to the env steps that will be played (the expert is deterministic, so a
    shorter plan is the start of the full one); None plans the whole episode.
    """

    def __init__(self, noise, max_steps: int | None = None) -> None:
        self.noise = noise
        self.max_ticks = None if max_steps is None else (int(max_steps) + 1) * FRAMES_PER_STEP * FRAME_STRIDE
        self._plan: list[np.ndarray] = []
        self._step = 0

    def reset(self, info: Mapping[str, Any], normalizer: PoseNormalizer) -> None:
        from persistworld_env.sim.recording import action_chunks

        if "episode_seed" not in info:
            raise ValueError("an expert policy needs simulator starts (reset info with 'episode_seed' and 'task'); "
                             "dataset or user starts have no scene to plan in")
        task = info.get("task")
        commands = _expert_commands(tuple(asdict(self.noise).values()), int(info["episode_seed"]),
                                    None if task is None else str(task), self.max_ticks)
        self._plan = action_chunks(_Commands(commands), normalizer)
        self._step = 0

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        chunk = self._plan[min(self._step, len(self._plan) - 1)]  # the expert holds its last command at the end
        self._step += 1
        return np.clip(chunk, -1.0, 1.0).astype(np.float32)


# -- random ---------------------------------------------------------------------------------------------
class RandomPolicy:
    """A random walk of the end effector (``step`` m per frame in xyz, ``yaw_step`` rad) with the gripper
    closed at random (probability ``p_close`` per chunk); seeded by the episode seed."""

    def __init__(self, step: float = 0.02, yaw_step: float = 0.05, p_close: float = 0.3) -> None:
        self.step, self.yaw_step, self.p_close = step, yaw_step, p_close
        self.rng = np.random.default_rng(0)
        self.normalizer: PoseNormalizer | None = None

    def reset(self, info: Mapping[str, Any], normalizer: PoseNormalizer) -> None:
        self.rng = np.random.default_rng([int(info.get("episode_seed", 0)), 7])
        self.normalizer = normalizer

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        pose = _raw_pose(obs, self.normalizer)
        gripper = float(self.rng.random() < self.p_close)
        chunk = []
        for _ in range(FRAMES_PER_STEP):
            pose = pose.copy()
            pose[:3] += self.rng.normal(0.0, self.step, 3)
            pose[5] += self.rng.normal(0.0, self.yaw_step)
            pose[6] = gripper
            chunk.append(pose)
        return _to_action(np.stack(chunk), self.normalizer)


# -- behaviour cloning ----------------------------------------------------------------------------------
@dataclass
class BCConfig:
    """Architecture of the behaviour-cloning policy."""

    height: int = 24  # frames are resized to this before the CNN
    width: int = 40
    cameras: tuple[str, ...] = CAMERAS
    channels: tuple[int, ...] = (16, 32, 64)
    hidden: int = 128

    def to_dict(self) -> dict:
        d = asdict(self)
        d["cameras"], d["channels"] = list(self.cameras), list(self.channels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "BCConfig":
        d = dict(d)
        d["cameras"], d["channels"] = tuple(d["cameras"]), tuple(d["channels"])
        return cls(**d)


def resize_frames(frames: np.ndarray, height: int, width: int) -> torch.Tensor:
    """uint8 (..., H, W, 3) -> float (..., 3, height, width) in [0, 1] (area interpolation)."""
    x = torch.as_tensor(np.ascontiguousarray(frames))
    lead = x.shape[:-3]
    x = x.reshape(-1, *x.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0
    if tuple(x.shape[-2:]) != (height, width):
        x = nn.functional.interpolate(x, size=(height, width), mode="area")
    return x.reshape(*lead, 3, height, width)


class BCNetwork(nn.Module):
    """Cameras stacked on channels -> strided CNN -> features + normalised pose -> MLP -> (4, 7) residual."""

    def __init__(self, config: BCConfig) -> None:
        super().__init__()
        layers, c_in = [], 3 * len(config.cameras)
        for c in config.channels:
            layers += [nn.Conv2d(c_in, c, 3, stride=2, padding=1), nn.GroupNorm(4, c), nn.SiLU()]
            c_in = c
        self.cnn = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((3, 5)), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(c_in * 15 + POSE_DIM, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, config.hidden), nn.SiLU(),
                                  nn.Linear(config.hidden, FRAMES_PER_STEP * POSE_DIM))
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    def forward(self, images: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        """images (B, V, 3, h, w) in [0, 1], pose (B, 7) normalised -> (B, 4, 7) normalised residuals."""
        feats = self.cnn(images.flatten(1, 2) * 2 - 1)
        return self.head(torch.cat([feats, pose], dim=1)).reshape(-1, FRAMES_PER_STEP, POSE_DIM)


class BCModel(nn.Module):
    """A trained behaviour-cloning policy: network, its pose normaliser and a training record; saved as a
    directory (``config.json``, ``normalization.json``, ``model.safetensors``)."""

    def __init__(self, config: BCConfig, normalizer: PoseNormalizer, training: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.config, self.normalizer = config, normalizer
        self.network = BCNetwork(config)
        self.training_info: dict[str, Any] = dict(training or {})

    @torch.no_grad()
    def predict(self, frames: np.ndarray, raw_pose: np.ndarray) -> np.ndarray:
        """uint8 frames (B, V, H, W, 3) and raw poses (B, 7) -> raw pose targets (B, 4, 7)."""
        images = resize_frames(frames, self.config.height, self.config.width)
        pose = torch.as_tensor(np.asarray(self.normalizer.normalize(np.asarray(raw_pose, np.float64)), np.float32))
        target = pose[:, None] + self.network(images, pose)
        return np.asarray(self.normalizer.denormalize(target.numpy().astype(np.float64)))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "config.json").write_text(json.dumps({"config": self.config.to_dict(),
                                                           "training": self.training_info}, indent=2))
        (directory / "normalization.json").write_text(json.dumps(self.normalizer.to_dict(), indent=2))
        weights = {k: v.contiguous() for k, v in self.network.state_dict().items()}
        save_file(weights, str(directory / "model.safetensors"))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "BCModel":
        from safetensors.torch import load_file

        directory = Path(directory)
        for name in ("config.json", "normalization.json", "model.safetensors"):
            if not (directory / name).is_file():
                raise FileNotFoundError(f"not a behaviour-cloning policy directory: missing {directory / name}")
        meta = json.loads((directory / "config.json").read_text())
        model = cls(BCConfig.from_dict(meta["config"]),
                    PoseNormalizer.from_dict(json.loads((directory / "normalization.json").read_text())),
                    meta.get("training"))
        model.network.load_state_dict(load_file(str(directory / "model.safetensors")))
        return model.eval()


class BCPolicy:
    """Acts with a :class:`BCModel` on the latest frame of every camera and the pose."""

    def __init__(self, model: BCModel) -> None:
        self.model = model
        self.normalizer: PoseNormalizer | None = None

    def reset(self, info: Mapping[str, Any], normalizer: PoseNormalizer) -> None:
        self.normalizer = normalizer

    def act(self, obs: Mapping[str, np.ndarray]) -> np.ndarray:
        frames = np.stack([obs[c][-1] for c in self.model.config.cameras])[None]
        raw = self.model.predict(frames, _raw_pose(obs, self.normalizer)[None])[0]
        return _to_action(raw, self.normalizer)


@dataclass
class BCSamples:
    """Training pairs at 5 Hz: the frames and pose at tick ``c`` -> the commands of the next env step."""

    frames: np.ndarray  # uint8 (N, V, h, w, 3), already resized
    pose: np.ndarray  # (N, 7) raw measured pose
    target: np.ndarray  # (N, 4, 7) raw commanded poses at ticks c + 3(j + 1) - 1, j = 0..3
    episodes: int = 0  # how many episodes they come from


def load_bc_samples(reader, episodes: Sequence[int], config: BCConfig, progress: bool = True) -> BCSamples:
    """Every 5 Hz frame of ``episodes`` with the env action that followed it in the recording.

    The target ticks are those :func:`persistworld_env.sim.recording.action_chunks` cuts for an env step
    starting at tick ``c`` (chunk k starts at c = 12 k); every 5 Hz tick is used as a start.
    """
    from tqdm.auto import tqdm

    frames, poses, targets = [], [], []
    for e in tqdm(list(episodes), desc="BC data", unit="ep", disable=not progress):
        cols = reader.load_columns(e, [ACTION_CARTESIAN, ACTION_GRIPPER])
        commands = np.concatenate([cols[ACTION_CARTESIAN], cols[ACTION_GRIPPER]], axis=1).astype(np.float32)
        pose = reader.load_pose(e)
        ticks = np.arange(0, len(pose), FRAME_STRIDE)
        views = np.stack([reader.load_frames(e, cam, step=FRAME_STRIDE) for cam in config.cameras], axis=1)
        resized = (resize_frames(views, config.height, config.width) * 255).round().to(torch.uint8)
        frames.append(resized.permute(0, 1, 3, 4, 2).numpy())
        poses.append(pose[ticks])
        later = ticks[:, None] + FRAME_STRIDE * np.arange(1, FRAMES_PER_STEP + 1)[None] - 1
        targets.append(commands[np.minimum(later, len(commands) - 1)])
    return BCSamples(np.concatenate(frames), np.concatenate(poses), np.concatenate(targets), len(frames))


def bc_training_samples(data: str | os.PathLike, max_episodes: int | None = 100, config: BCConfig | None = None,
                        val_mod: int = 100, val_rem: int = 99, progress: bool = True) -> BCSamples:
    """:func:`load_bc_samples` of the first ``max_episodes`` training episodes of ``data`` (an episode is
    held out when ``index % val_mod == val_rem``, the DROID convention)."""
    from persistworld_env.data.lerobot_reader import LeRobotEpisodes

    config = config or BCConfig()
    reader = LeRobotEpisodes(data, cameras=config.cameras)
    episodes = [e for e in reader.episode_indices if e % val_mod != val_rem][:max_episodes]
    if not episodes:
        raise ValueError(f"{data} has no training episodes")
    return load_bc_samples(reader, episodes, config, progress)


def train_bc_policy(data: str | os.PathLike, steps: int, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                    max_episodes: int | None = 100, config: BCConfig | None = None,
                    samples: BCSamples | None = None, progress: bool = True) -> BCModel:
    """Train a :class:`BCModel` for ``steps`` Adam steps (the budget) on the training episodes of ``data``.

    Loss: mean squared error of the normalised action chunk (predicted as a residual to the current
    pose), with ``data``'s pose normaliser. Deterministic by ``seed``. ``samples`` (from
    :func:`bc_training_samples`) skips the data loading, so several budgets can share it.
    """
    from tqdm.auto import tqdm

    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    config = config or BCConfig()
    normalizer = PoseNormalizer.from_dataset(data)
    samples = samples if samples is not None else bc_training_samples(data, max_episodes, config, progress=progress)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BCModel(config, normalizer)
    norm = lambda a: torch.as_tensor(np.asarray(normalizer.normalize(a.astype(np.float64)), np.float32))  # noqa: E731
    pose, target = norm(samples.pose), norm(samples.target)
    residual = target - pose[:, None]
    optimizer = torch.optim.Adam(model.network.parameters(), lr=lr)
    rng = np.random.default_rng(seed)
    start, running = time.perf_counter(), None
    model.network.train()
    for _ in tqdm(range(steps), desc=f"BC {steps} steps", disable=not progress):
        idx = rng.integers(0, len(pose), batch_size)
        images = torch.from_numpy(samples.frames[idx]).permute(0, 1, 4, 2, 3).float() / 255.0
        loss = nn.functional.mse_loss(model.network(images, pose[idx]), residual[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
    model.network.eval()
    model.training_info = {"data": str(data), "steps": int(steps), "batch_size": batch_size, "lr": lr, "seed": seed,
                           "episodes": samples.episodes, "samples": int(len(pose)),
                           "final_loss": None if running is None else round(float(running), 6),
                           "seconds": round(time.perf_counter() - start, 1)}
    return model


# -- the zoo --------------------------------------------------------------------------------------------
@dataclass
class PolicySpec:
    """A named policy of the zoo: ``build()`` makes a fresh instance for one episode."""

    name: str
    kind: str  # "expert" | "bc" | "random"
    config: dict[str, Any]
    factory: Callable[[], Policy] = field(repr=False)

    def build(self) -> Policy:
        return self.factory()

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "config": self.config}


#: Scripted experts of decreasing care: (per-tick jitter m, grasp offset std m, speed m/s, give-up probability).
EXPERT_LEVELS: dict[str, tuple[float, float, float, float]] = {
    "careful": (0.0005, 0.0, 0.25, 0.0),
    "noisy": (0.004, 0.018, 0.25, 0.1),
    "sloppy": (0.008, 0.03, 0.2, 0.3),
}


def expert_spec(level: str, max_steps: int | None = None) -> PolicySpec:
    """The scripted expert at one of :data:`EXPERT_LEVELS` (plans bounded to ``max_steps`` env steps)."""
    from persistworld_env.sim.experts import ExpertNoise

    if level not in EXPERT_LEVELS:
        raise ValueError(f"unknown expert level {level!r}; choose from {sorted(EXPERT_LEVELS)}")
    noise = ExpertNoise(*EXPERT_LEVELS[level])
    return PolicySpec(f"expert-{level}", "expert", asdict(noise), lambda: ExpertPolicy(noise, max_steps))


def bc_spec(model: BCModel, name: str | None = None, path: str | None = None) -> PolicySpec:
    """A behaviour-cloning policy of the zoo (named ``bc-<steps>`` by default)."""
    from persistworld_env.evaluation.fidelity import weights_sha256

    steps = model.training_info.get("steps", "?")
    config = {**model.training_info, "weights_sha256": weights_sha256(model),
              **({"path": str(path)} if path else {})}
    return PolicySpec(name or f"bc-{steps}", "bc", config, lambda: BCPolicy(model))


def random_spec() -> PolicySpec:
    policy = RandomPolicy()
    return PolicySpec("random", "random", {"step": policy.step, "yaw_step": policy.yaw_step,
                                           "p_close": policy.p_close}, RandomPolicy)


# -- running episodes -----------------------------------------------------------------------------------
def step_success(info: Mapping[str, Any], terminated: np.ndarray) -> np.ndarray:
    """Per sub-env success of a vector step: ``info["success"]`` where reported (``info["_success"]``), else
    ``terminated``. The simulator reports its task predicate; the world model in ``reward="success"`` mode
    its learned detector's verdict. This is the only place policy evaluation reads success from."""
    terminated = np.asarray(terminated, dtype=bool)
    if "success" not in info:
        return terminated
    reported = np.asarray(info.get("_success", np.ones(len(terminated), bool)), dtype=bool)
    values = np.array([bool(v) if v is not None else False for v in np.asarray(info["success"], dtype=object)])
    return np.where(reported, values, terminated)


def run_policy(venv, spec: PolicySpec, seeds: Sequence[int], max_steps: int, normalizer: PoseNormalizer,
               success_of: Callable[[Mapping[str, Any], np.ndarray], np.ndarray] = step_success,
               progress: bool = True, desc: str = "") -> list[bool]:
    """Run ``spec`` once per reset seed on a vector env, ``venv.num_envs`` episodes at a time.

    An episode succeeds when ``success_of(info, terminated)`` is true at any of its first ``max_steps``
    steps (the episode stops counting there). Returns one bool per seed, in order.
    """
    from tqdm.auto import tqdm

    n = venv.num_envs
    results: list[bool] = []
    bar = tqdm(total=len(seeds), desc=desc or spec.name, unit="ep", disable=not progress)
    for start in range(0, len(seeds), n):
        chunk = [int(s) for s in seeds[start:start + n]]
        obs, info = venv.reset(seed=chunk + [chunk[-1]] * (n - len(chunk)))  # padding slots are ignored
        policies = [spec.build() for _ in range(n)]
        for i, policy in enumerate(policies):
            policy.reset(slot_entries(info, i), normalizer)
        done, success = np.zeros(n, bool), np.zeros(n, bool)
        for _ in range(max_steps):
            actions = np.stack([policies[i].act(slot_entries(obs, i)) if not done[i]
                                else np.tile(np.asarray(obs[POSE_KEY][i], np.float32), (FRAMES_PER_STEP, 1))
                                for i in range(n)])
            obs, _, terminated, truncated, info = venv.step(actions)
            now = np.asarray(success_of(info, terminated), dtype=bool)
            success |= now & ~done
            done |= now | np.asarray(terminated, bool) | np.asarray(truncated, bool)
            if done[:len(chunk)].all():
                break
        results += success[:len(chunk)].tolist()
        bar.update(len(chunk))
        bar.set_postfix(success=f"{np.mean(results):.2f}")
    bar.close()
    return results
