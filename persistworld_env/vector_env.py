"""Batched ``PersistWorld-DROID-v0``: N sub-environments stepped by one batched model forward.

``gym.make_vec("PersistWorld-DROID-v0", num_envs=N)`` gives this class. All rollouts live in one
:class:`RolloutEngine`, so each step is a single batched sampling call (classifier-free guidance
branches, decoding and Python overhead shared). Autoreset (finished slots restart in place):

* ``"next_step"`` (Gymnasium's default): the step after a sub-env finished resets it and returns its
  first observation with reward 0;
* ``"same_step"``: a finished sub-env is reset within the same step; its last observation and info
  are in ``info["final_obs"]`` / ``info["final_info"]`` (what stable-baselines3 expects).

An autoreset starts as ``reset()`` without options would (as Gymnasium's own vector envs do): the simulator
scene, or for dataset starts a random episode, drawn from the sub-env's RNG. Infos have Gymnasium's vector
layout (``VectorEnv._add_info``), as ``gym.make_vec(..., vectorization_mode="sync")`` gives them.
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP, MODEL_FPS
from persistworld_env.initial_states import StartState
from persistworld_env.registration import MAX_EPISODE_STEPS
from persistworld_env.spaces import POSE_KEY, action_space, check_observed_frames, observation_space, validate_action
from persistworld_env.world_model_env import (RewardFn, batch_rewards, build_reward, check_reset_options, load_engine,
                                              make_starts, resolve_start, restart_reward, step_info)


def slot_entries(tree: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s entries of a vector observation or info dict in Gymnasium's layout (arrays, with
    ``"_key"`` masks where only some sub-envs report a key, nested dicts for dict values); scalars come back as
    Python numbers, as the sub-env reported them."""
    out = {}
    for key, value in tree.items():
        mask = tree.get("_" + key)
        if key.startswith("_") or (mask is not None and not mask[i]):
            continue
        entry = slot_entries(value, i) if isinstance(value, dict) else value[i] if isinstance(
            value, np.ndarray) else value
        out[key] = entry.item() if isinstance(entry, np.generic) else entry
    return out


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

    def _resolve(self, rngs: Sequence[np.random.Generator], options: Sequence[dict]) -> list[tuple[StartState, int]]:
        """The start and episode seed of each slot to reset, given its RNG and reset options; changes no env state,
        so a bad option raises before anything does."""
        for opts in options:
            check_reset_options(opts, self.starts)
        out = []
        for rng, opts in zip(rngs, options):
            episode_seed = int(rng.integers(2**31 - 1))
            out.append((resolve_start(self.starts, opts, episode_seed, self.task, self.height, self.width),
                        episode_seed))
        return out

    def _restart(self, slots: Sequence[int], starts: list[tuple[StartState, int]]) -> list[dict]:
        """Start the slots' episodes from resolved starts; returns their reset infos."""
        frames = np.stack([start.frames for start, _ in starts])
        instructions = [start.instruction for start, _ in starts]
        self.engine.reset_slots(slots, frames, np.stack([start.pose for start, _ in starts]),
                                [s or None for s in instructions] if any(instructions) else None,
                                [seed for _, seed in starts])
        for i, (start, _) in zip(slots, starts):
            self._clips[i] = np.repeat(start.frames[None], self.observed_frames, axis=0)
            self._poses[i], self._instructions[i], self._start_infos[i] = start.pose, start.instruction, start.info
            self._elapsed[i], self._needs_reset[i] = 0, False
        restart_reward(self.reward_fn, slots)
        return [step_info(start.instruction, start.info, start.pose) for start, _ in starts]

    def _autoreset(self, slots: Sequence[int]) -> list[tuple[StartState, int]]:
        """Starts of the slots' next episodes: the default start (no options, as Gymnasium's autoreset), drawn from
        each slot's RNG (for dataset starts a random episode)."""
        return self._resolve([self._rngs[i] for i in slots], [{} for _ in slots])

    def _merge(self, infos: Sequence[dict], slots: Sequence[int]) -> dict:
        """Gymnasium's vector info layout (``VectorEnv._add_info``, as ``SyncVectorEnv``)."""
        merged: dict[str, Any] = {}
        for info, i in zip(infos, slots):
            merged = self._add_info(merged, info, i)
        return merged

    # -- VectorEnv API -------------------------------------------------------------------------
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        """Reset every sub-env: ``seed`` None keeps each one's RNG going, an int seeds sub-env i with ``seed + i``, a
        list gives one seed (or None) per sub-env; ``options`` (as the single env's) apply to all."""
        if seed is None:
            seeds = [None] * self.num_envs
        elif isinstance(seed, (int, np.integer)):
            seeds = [int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
        return self.reset_each(seeds, [options or {}] * self.num_envs)

    def reset_each(self, seeds: Sequence[int | None], options: Sequence[dict]):
        """Reset every sub-env with its own seed (None: keep its RNG) and options (what stable-baselines3's
        ``set_options`` gives); a rejected reset changes nothing."""
        if len(seeds) != self.num_envs or len(options) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds and options, got {len(seeds)} and {len(options)}")
        rngs = [np.random.default_rng(s) if s is not None else copy.deepcopy(rng) for s, rng in zip(seeds, self._rngs)]
        slots = list(range(self.num_envs))
        starts = self._resolve(rngs, [dict(o or {}) for o in options])
        self._rngs = rngs
        if self._clips is None:
            self._clips = np.zeros((self.num_envs, self.observed_frames, len(CAMERAS), self.height, self.width, 3),
                                   np.uint8)
            self.engine.allocate(self.num_envs)
        infos = self._restart(slots, starts)
        return self._observations(), self._merge(infos, slots)

    def step(self, actions):
        if self._clips is None:
            raise RuntimeError("step() called before reset()")
        actions = np.asarray(actions)
        if actions.shape[:1] != (self.num_envs,):
            raise ValueError(f"actions must have a leading dimension of num_envs={self.num_envs}, got {actions.shape}")
        finished = np.flatnonzero(self._needs_reset)
        stepping = np.flatnonzero(~self._needs_reset)
        # NEXT_STEP autoreset: finished slots start over instead of stepping, so their actions are ignored (as
        # Gymnasium does) and they hold still in the batched forward
        poses = np.repeat(self._poses[:, None], FRAMES_PER_STEP, axis=1)
        if len(stepping):
            normalized = np.stack([validate_action(actions[i]) for i in stepping])
            poses[stepping] = self.model.normalizer.denormalize(normalized.astype(np.float64))
        restarts = self._autoreset(finished)
        out = self.engine.step(poses, decoded_frames=self.observed_frames)  # one batched forward for every sub-env
        self._clips, self._poses = out.frames.copy(), poses[:, -1].copy()
        self._elapsed += 1
        infos = [step_info(self._instructions[i], self._start_infos[i], poses[i, -1]) for i in range(self.num_envs)]
        obs = self._observations()
        rewards = batch_rewards(self.reward_fn, obs, infos)  # a success detector runs once for all sub-envs
        terminated = np.array([self._terminate_on_success and bool(info.get("success")) for info in infos])
        truncated = self._elapsed >= self.max_episode_steps
        if len(finished):
            for i, info in zip(finished, self._restart(finished, restarts)):
                infos[i] = info
            rewards[finished], terminated[finished], truncated[finished] = 0.0, False, False
            obs = self._observations()
        done = np.flatnonzero(terminated | truncated)
        if self.metadata["autoreset_mode"] == AutoresetMode.SAME_STEP and len(done):
            final = {i: ({k: v[i] for k, v in obs.items()}, infos[i]) for i in done}
            for i, info in zip(done, self._restart(done, self._autoreset(done))):
                infos[i] = info
            obs, merged = self._observations(), {}
            for i in range(self.num_envs):  # SyncVectorEnv's order: a finished sub-env's final obs and info first
                if i in final:
                    merged = self._add_info(merged, {"final_obs": final[i][0], "final_info": final[i][1]}, i)
                merged = self._add_info(merged, infos[i], i)
            return obs, rewards, terminated, truncated, merged
        self._needs_reset = terminated | truncated
        return obs, rewards, terminated, truncated, self._merge(infos, range(self.num_envs))

    def close_extras(self, **kwargs) -> None:
        self.starts.close()


def make_vector_env(num_envs: int = 1, **kwargs) -> PersistWorldVectorEnv:
    """``vector_entry_point`` of ``PersistWorld-DROID-v0`` (accepts and ignores gym.make_vec's extras)."""
    kwargs.pop("render_mode", None)
    return PersistWorldVectorEnv(num_envs=num_envs, **kwargs)

