"""Batched ``PersistWorld-DROID-v0``: N sub-environments stepped by one batched model forward.

``gym.make_vec("PersistWorld-DROID-v0", num_envs=N)`` gives this class. All rollouts live in one
:class:`RolloutEngine`, so each step is a single batched sampling call (classifier-free guidance
branches, decoding and Python overhead shared). Autoreset (finished slots restart in place):

* ``"next_step"`` (Gymnasium's default): the step after a sub-env finished resets it and returns its
  first observation with reward 0;
* ``"same_step"``: a finished sub-env is reset within the same step; its last observation and info
  are in ``info["final_obs"]`` / ``info["final_info"]`` (what stable-baselines3 expects).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP, MODEL_FPS
from persistworld_env.registration import MAX_EPISODE_STEPS
from persistworld_env.spaces import POSE_KEY, action_space, check_observed_frames, observation_space, validate_action
from persistworld_env.world_model_env import (RewardFn, batch_rewards, build_reward, fresh_copy, load_engine,
                                              make_starts, resolve_start, restart_reward, step_info)


class PersistWorldVectorEnv(VectorEnv):
    """N world-model environments in one batch (see module docstring).

    Args:
        num_envs: number of sub-environments.
        max_episode_steps: truncation horizon per sub-env (steps of 0.8 s).
        autoreset: ``"next_step"`` or ``"same_step"`` (see module docstring).
        Other arguments as :class:`persistworld_env.world_model_env.PersistWorldEnv` (``reward="goal"``,
        which needs goal images per episode, is single-env only; ``observed_frames=1`` decodes only each
        step's latest frame).
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": [], "render_fps": MODEL_FPS}
    _MODES = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}

    def __init__(self, num_envs: int = 1, model: Any = "default", device: str = "cpu",
                 sampling_steps: int | None = None, guidance: float | None = None, reward: RewardFn | None = None,
                 initial_state: str = "sim", task: str | None = None,
                 max_episode_steps: int = MAX_EPISODE_STEPS, autoreset: str = "next_step",
                 success_detector: Any = None, success_threshold: float | None = None,
                 success_steps: int | None = None, dtype: Any = "auto", observed_frames: int = FRAMES_PER_STEP) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if autoreset not in self._MODES:
            raise ValueError(f"autoreset must be one of {sorted(self._MODES)}, got {autoreset!r}")
        self.metadata = {**self.metadata, "autoreset_mode": self._MODES[autoreset]}
        self.observed_frames = check_observed_frames(observed_frames)
        self.model, self.engine = load_engine(model, device, sampling_steps, guidance, dtype)
        cfg = self.model.config
        self.num_envs, self.height, self.width = num_envs, cfg.height, cfg.width
        self.single_observation_space = observation_space(cfg.height, cfg.width, self.observed_frames)
        self.single_action_space = action_space()
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        if reward == "goal":
            raise ValueError("reward='goal' needs goal images per episode: use the single env (PersistWorldEnv)")
        self.reward_fn = build_reward(reward, model, device, success_detector, success_threshold, cfg.height, cfg.width,
                                      success_steps)
        self._terminate_on_success = reward == "success"
        self.task, self.max_episode_steps = task, max_episode_steps
        self.starts = make_starts(initial_state, cfg.height, cfg.width)
        self._clips: np.ndarray | None = None  # (N, observed_frames, V, H, W, 3)
        self._poses = np.zeros((num_envs, 7), np.float32)
        self._instructions = [""] * num_envs
        self._start_infos: list[dict] = [{} for _ in range(num_envs)]
        self._elapsed = np.zeros(num_envs, np.int64)
        self._needs_reset = np.zeros(num_envs, bool)
        self._rngs: list[np.random.Generator] = [np.random.default_rng() for _ in range(num_envs)]

    # -- internals -----------------------------------------------------------------------------
    def _observations(self) -> dict[str, np.ndarray]:
        obs = {cam: self._clips[:, :, v].copy() for v, cam in enumerate(CAMERAS)}
        obs[POSE_KEY] = np.asarray(self.model.normalizer.normalize(self._poses), dtype=np.float32)
        return obs

    def _reset_slots(self, slots: Sequence[int], options: dict | None = None) -> list[dict]:
        infos, frames, poses, instructions, seeds = [], [], [], [], []
        for i in slots:
            opts = dict(options or {})
            episode_seed = int(self._rngs[i].integers(2**31 - 1))
            start = resolve_start(self.starts, opts, episode_seed, self.task, self.height, self.width)
            if opts:
                raise ValueError(f"unknown reset options {sorted(opts)}; accepted: episode, task, frames, pose, "
                                 f"instruction")
            frames.append(start.frames)
            poses.append(start.pose)
            instructions.append(start.instruction)
            self._start_infos[i] = start.info
            seeds.append(episode_seed)
            infos.append({"instruction": start.instruction, **fresh_copy(start.info)})
        self.engine.reset_slots(slots, np.stack(frames), np.stack(poses),
                                [s or None for s in instructions] if any(instructions) else None, seeds)
        for k, i in enumerate(slots):
            self._clips[i] = np.repeat(frames[k][None], self.observed_frames, axis=0)
            self._poses[i], self._instructions[i] = poses[k], instructions[k]
            self._elapsed[i], self._needs_reset[i] = 0, False
        restart_reward(self.reward_fn, slots)
        return infos

    @staticmethod
    def _merge(infos: list[dict], slots: Sequence[int], n: int) -> dict:
        """Gymnasium's vector info layout: ``info[key]`` arrays (typed for bool/int/float values, object
        otherwise) plus ``info["_key"]`` masks."""
        merged: dict[str, Any] = {}
        for info, i in zip(infos, slots):
            for key, value in info.items():
                if key not in merged:
                    dtype = {bool: bool, int: np.int64, float: np.float64}.get(type(value), object)
                    merged[key] = np.zeros(n, dtype) if dtype is not object else np.full(n, None, dtype=object)
                    merged["_" + key] = np.zeros(n, bool)
                merged[key][i], merged["_" + key][i] = value, True
        return merged

    # -- VectorEnv API -------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict | None = None):
        seeds = [None] * self.num_envs if seed is None else (
            [seed + i for i in range(self.num_envs)] if isinstance(seed, int) else list(seed))
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        self._rngs = [np.random.default_rng(s) for s in seeds]
        if self._clips is None:
            self._clips = np.zeros((self.num_envs, self.observed_frames, len(CAMERAS), self.height, self.width, 3),
                                   np.uint8)
            self.engine.allocate(self.num_envs)
        slots = list(range(self.num_envs))
        infos = self._reset_slots(slots, options)
        return self._observations(), self._merge(infos, slots, self.num_envs)

    def step(self, actions):
        if self._clips is None:
            raise RuntimeError("step() called before reset()")
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got {actions.shape}")
        normalized = np.stack([validate_action(a) for a in actions])
        poses = np.asarray(self.model.normalizer.denormalize(normalized.astype(np.float64)), dtype=np.float32)
        finished = np.flatnonzero(self._needs_reset)
        out = self.engine.step(poses, decoded_frames=self.observed_frames)  # one batched forward for every sub-env
        self._clips, self._poses = out.frames.copy(), poses[:, -1].copy()
        self._elapsed += 1
        infos = [step_info(self._instructions[i], self._start_infos[i], poses[i, -1]) for i in range(self.num_envs)]
        obs = self._observations()
        rewards = batch_rewards(self.reward_fn, obs, infos)  # a success detector runs once for all sub-envs
        terminated = np.array([self._terminate_on_success and bool(info.get("success")) for info in infos])
        truncated = self._elapsed >= self.max_episode_steps
        if len(finished):  # NEXT_STEP autoreset: these slots start over instead of stepping
            for i, info in zip(finished, self._reset_slots(finished)):
                infos[i] = info
            rewards[finished], terminated[finished], truncated[finished] = 0.0, False, False
            obs = self._observations()
        done = np.flatnonzero(terminated | truncated)
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and len(done):
            final_obs = {k: v.copy() for k, v in obs.items()}
            final_info = self._merge([infos[i] for i in done], done, self.num_envs)
            for i, info in zip(done, self._reset_slots(done)):
                infos[i] = {**info, "final_obs": {k: v[i] for k, v in final_obs.items()}}
            obs = self._observations()
            merged = self._merge(infos, range(self.num_envs), self.num_envs)
            merged["final_info"], merged["_final_info"] = final_info, np.isin(np.arange(self.num_envs), done)
            return obs, rewards, terminated, truncated, merged
        else:
            self._needs_reset = terminated | truncated
        return obs, rewards, terminated, truncated, self._merge(infos, range(self.num_envs), self.num_envs)

    def close_extras(self, **kwargs) -> None:
        self.starts.close()


def make_vector_env(num_envs: int = 1, **kwargs) -> PersistWorldVectorEnv:
    """``vector_entry_point`` of ``PersistWorld-DROID-v0`` (accepts and ignores gym.make_vec's extras)."""
    kwargs.pop("render_mode", None)
    return PersistWorldVectorEnv(num_envs=num_envs, **kwargs)

