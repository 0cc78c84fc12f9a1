"""Gymnasium registration of the PersistWorld environments (runs at ``import persistworld_env``)."""
from __future__ import annotations

import gymnasium as gym

#: Episode length limit in environment steps (0.8 s each).
MAX_EPISODE_STEPS = 25


def register_envs() -> None:
    """Register ``PersistWorld-DROID-v0`` and ``MiniDROID-Sim-v0`` (idempotent)."""
    if "PersistWorld-DROID-v0" not in gym.registry:
        gym.register(
            id="PersistWorld-DROID-v0",
            entry_point="persistworld_env.world_model_env:PersistWorldEnv",
            vector_entry_point="persistworld_env.vector_env:make_vector_env",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
    if "MiniDROID-Sim-v0" not in gym.registry:
        gym.register(
            id="MiniDROID-Sim-v0",
            entry_point="persistworld_env.sim.env:MiniDROIDSimEnv",
            max_episode_steps=MAX_EPISODE_STEPS,
        )
