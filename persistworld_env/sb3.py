"""Present the batched world-model env to stable-baselines3 as a ``VecEnv``.

stable-baselines3 cannot consume a Gymnasium ``VectorEnv``; this adapter drives
:class:`PersistWorldVectorEnv` in ``same_step`` autoreset mode, gives the latest frame of each camera as
a channel-first image (what SB3 treats as images) and the pose, and gives each sub-env's info as
``DummyVecEnv`` does (a finished one's last info with ``terminal_observation`` and ``TimeLimit.truncated``; its
reset info in ``reset_infos``). ``seed()`` and ``set_options()`` (one dict, or one per sub-env) apply to the next
``reset()``.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.vec_env import VecEnv

from persistworld_env.vector_env import PersistWorldVectorEnv, slot_entries
from persistworld_env.wrappers import latest_frame_space, latest_frames


class SB3VecEnv(VecEnv):
    """stable-baselines3 view of a :class:`PersistWorldVectorEnv` (built here with ``autoreset="same_step"``).

    The policy sees each step's latest frame only, so the vector env is built with ``observed_frames=1`` unless
    ``env_kwargs`` says otherwise: the model then decodes a quarter of the frames (a reward callable gets
    (1, H, W, 3) clips per camera).
    """

    def __init__(self, num_envs: int = 4, **env_kwargs: Any) -> None:
        env_kwargs.setdefault("observed_frames", 1)
        self.venv = PersistWorldVectorEnv(num_envs=num_envs, autoreset="same_step", **env_kwargs)
        super().__init__(num_envs, latest_frame_space(self.venv.single_observation_space),
                         self.venv.single_action_space)
        self._actions: np.ndarray | None = None

    def reset(self):
        obs, info = self.venv.reset_each(self._seeds, self._options)
        self.reset_infos = [slot_entries(info, i) for i in range(self.num_envs)]
        self._reset_seeds()  # like DummyVecEnv: seeds and options (seed(), set_options()) are used once
        self._reset_options()
        return latest_frames(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, *self.action_space.shape)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        dones = terminated | truncated
        infos = []
        for i in range(self.num_envs):  # DummyVecEnv's infos: a finished sub-env's are those of its last step
            sub = slot_entries(info, i)
            final_obs, final_info = sub.pop("final_obs", None), sub.pop("final_info", None)
            if dones[i]:
                self.reset_infos[i], sub = sub, final_info
                sub["terminal_observation"] = latest_frames(final_obs)
            sub["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos.append(sub)
        return latest_frames(obs), rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def get_attr(self, attr_name: str, indices=None) -> list:
        return [getattr(self.venv, attr_name) for _ in self._indices(indices)]

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *args, indices=None, **kwargs) -> list:
        return [getattr(self.venv, method_name)(*args, **kwargs) for _ in self._indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False for _ in self._indices(indices)]

    def _indices(self, indices) -> list[int]:
        if indices is None:
            return list(range(self.num_envs))
        return [indices] if isinstance(indices, int) else list(indices)
