"""Ground truth for post-training: recorded futures, or the MiniDROID simulator on any action sequence.

Both sources return :class:`~persistworld_env.replay.ReplayEpisode` s (first frames and pose, the raw
poses the model is conditioned on, the true frames at the same 5 Hz instants), so the rest of the
procedure does not care where the truth came from.

* :class:`DatasetTruth`: the dataset's recorded frames under its recorded (measured) poses: replay.
* :class:`SimTruth`: the episode's MiniDROID scene (its recorded seed and task family) re-simulated
  under the recorded commanded actions plus Gaussian noise of ``action_noise`` (in normalised action
  units; actions clipped to the action space [-1, 1]): post-training on actions that are not in the
  data, with exact truth. The arm is rendered with its low-poly meshes, as ``persistworld generate``
  records by default.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import numpy as np

from persistworld_env.constants import CAMERAS
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.replay import ReplayEpisode, load_replay_episode, max_replay_steps

TRUTH_SOURCES = ("dataset", "sim")


class DatasetTruth:
    """Recorded futures of the given episodes of a LeRobot dataset (decoded episodes kept in a small LRU)."""

    name = "dataset"

    def __init__(self, reader: LeRobotEpisodes, episodes: Sequence[int], cache_size: int = 16) -> None:
        self.reader = reader
        self.available = {int(e): max_replay_steps(reader.length(e)) for e in episodes}
        self.available = {e: n for e, n in self.available.items() if n >= 1}
        if not self.available:
            raise ValueError(f"no episode of {reader.root} is long enough for one replay step")
        self._cache: OrderedDict[int, ReplayEpisode] = OrderedDict()
        self._cache_size = int(cache_size)

    def episode(self, episode: int, steps: int, rng: np.random.Generator | None = None) -> ReplayEpisode:
        """The first ``steps`` replay steps of ``episode`` (``rng`` is unused: the recording is fixed)."""
        if episode not in self._cache:
            self._cache[episode] = load_replay_episode(self.reader, episode)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        self._cache.move_to_end(episode)
        return self._cache[episode].window(0, steps)

    def close(self) -> None:
        self._cache.clear()


class SimTruth:
    """The simulator re-running each dataset episode's scene under (perturbed) recorded actions.

    Args:
        reader: a MiniDROID dataset (``episodes.jsonl`` holds each episode's ``seed`` and ``task_family``).
        episodes: the episodes to draw scenes and actions from.
        normalizer: the model's pose normaliser (actions are normalised with it, as the env's are).
        action_noise: std of the Gaussian added to every normalised action (0 = the recorded actions).
    """

    name = "sim"

    def __init__(self, reader: LeRobotEpisodes, episodes: Sequence[int], normalizer: PoseNormalizer,
                 action_noise: float = 0.0) -> None:
        from persistworld_env.sim.env import MiniDROIDSimEnv

        if action_noise < 0:
            raise ValueError(f"action_noise must be >= 0, got {action_noise}")
        for e in episodes:
            if int(reader.episode_meta(e).get("seed", -1)) < 0:
                raise ValueError(f"episode {e} of {reader.root} has no simulator seed: --truth sim needs a "
                                 f"MiniDROID dataset (persistworld generate)")
        self.reader, self.normalizer, self.action_noise = reader, normalizer, float(action_noise)
        self.available = {int(e): max_replay_steps(reader.length(e)) for e in episodes}
        self.available = {e: n for e, n in self.available.items() if n >= 1}
        if not self.available:
            raise ValueError(f"no episode of {reader.root} is long enough for one step")
        height, width = reader.image_shape(CAMERAS[0])
        self.env = MiniDROIDSimEnv(height, width, pose_normalizer=normalizer, terminate_on_success=False)
        self._actions: OrderedDict[int, np.ndarray] = OrderedDict()

    def recorded_actions(self, episode: int) -> np.ndarray:
        """(steps, 4, 7) normalised environment actions cut from the episode's commanded poses."""
        from persistworld_env.sim.recording import action_chunks

        if episode not in self._actions:
            self._actions[episode] = np.stack(action_chunks(self.reader.load_record(episode), self.normalizer))
            if len(self._actions) > 64:
                self._actions.popitem(last=False)
        return self._actions[episode]

    def episode(self, episode: int, steps: int, rng: np.random.Generator | None = None) -> ReplayEpisode:
        """Simulate the first ``steps`` steps of ``episode``'s scene under its (perturbed) recorded actions."""
        actions = self.recorded_actions(episode)[:steps]
        if len(actions) < steps:
            raise ValueError(f"episode {episode} has {len(actions)} action steps, asked {steps}")
        if self.action_noise > 0:
            rng = rng if rng is not None else np.random.default_rng()
            actions = actions + rng.normal(0.0, self.action_noise, actions.shape)
        actions = np.clip(actions, -1.0, 1.0)  # the action space (recorded poses may pass the 1st/99th bounds)
        return simulate(self.env, self.reader.episode_meta(episode), episode, actions, self.normalizer)

    def close(self) -> None:
        self.env.close()


def simulate(env, meta: dict, episode: int, actions: np.ndarray, normalizer: PoseNormalizer) -> ReplayEpisode:
    """Reset ``env`` (a ``MiniDROIDSimEnv``) to the scene of ``meta`` and step ``actions`` (steps, 4, 7) through it."""
    obs, info = env.reset(options={"task": meta.get("task_family"), "episode_seed": int(meta["seed"])})
    first_frames = np.stack([obs[c][0] for c in CAMERAS])
    frames = []
    for action in actions:
        obs, *_ = env.step(action.astype(np.float32))
        frames.append(np.stack([obs[c] for c in CAMERAS], axis=1))  # (4, V, H, W, 3)
    poses = np.asarray(normalizer.denormalize(np.asarray(actions, np.float64)), dtype=np.float32)
    return ReplayEpisode(episode_index=int(episode), instruction=info["instruction"], first_frames=first_frames,
                         first_pose=np.asarray(info["raw_pose"], np.float32), poses=poses, frames=np.stack(frames))
