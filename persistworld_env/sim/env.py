"""``MiniDROID-Sim-v0``: the ground-truth simulator behind the same spaces as the world-model env."""
from __future__ import annotations

import json
from importlib import resources
from typing import Any

import gymnasium as gym
import numpy as np

from persistworld_env.constants import CAMERAS, DEFAULT_HEIGHT, DEFAULT_WIDTH, FRAME_STRIDE, FRAMES_PER_STEP, MODEL_FPS
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.sim.simulator import MiniDROIDSimulator
from persistworld_env.visualization import tile_views
from persistworld_env.spaces import POSE_KEY, action_space, check_observed_frames, observation_space, validate_action


def default_pose_normalizer() -> PoseNormalizer:
    """Pose bounds of the MiniDROID data distribution (shipped with the package)."""
    text = resources.files("persistworld_env.sim").joinpath("minidroid_pose_bounds.json").read_text()
    return PoseNormalizer.from_dict(json.loads(text))


def tile_cameras(frames: dict[str, np.ndarray]) -> np.ndarray:
    """Tile one (H, W, 3) image per camera side by side, in ``CAMERAS`` order."""
    return tile_views(np.stack([frames[c] for c in CAMERAS]))


class MiniDROIDSimEnv(gym.Env):
    """MiniDROID as a Gymnasium environment (ground truth for the learned simulator).

    Observation: dict with, per camera, the latest clip of 4 frames at 5 Hz, uint8 (4, H, W, 3) (its last
    ``observed_frames`` frames when fewer are asked for), and
    ``"pose"``, the measured 7-D pose normalised to [-1, 1] with the dataset's percentile bounds.
    Action: float32 (4, 7), normalised absolute poses for the next 4 frames; each is reached by linear
    interpolation over 3 control ticks at 15 Hz (see :func:`persistworld_env.spaces.validate_action`
    for what is rejected and what is clipped). Reward 1 and termination when the task succeeds.
    Info: ``instruction``, ``task``, ``success``, the measured ``raw_pose`` and the target object's start
    ``target_position`` (``PersistWorld-DROID-v0`` reports the same keys).

    Args:
        height, width: camera resolution.
        task: task family (``"pick"``, ``"place"``, ``"push"``) or None for a random one per reset;
            ``reset(options={"task": ...})`` overrides it for one episode, and
            ``options={"episode_seed": s}`` picks the scene directly (as ``info["episode_seed"]`` reports it).
        pose_normalizer: bounds mapping poses to [-1, 1]; MiniDROID's shipped bounds by default.
        terminate_on_success: end the episode at the first success.
        render_mode: ``"rgb_array"`` (the three cameras' latest frames side by side) or None.
        observed_frames: frames per camera in an observation, the last of each step's 4 (default 4); fewer
            render fewer images (the spaces of ``PersistWorld-DROID-v0`` with the same argument).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": MODEL_FPS}

    def __init__(self, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, task: str | None = None,
                 pose_normalizer: PoseNormalizer | None = None, terminate_on_success: bool = True,
                 render_mode: str | None = None, low_poly: bool = True, observed_frames: int = FRAMES_PER_STEP) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.observed_frames = check_observed_frames(observed_frames)
        self.sim = MiniDROIDSimulator(height, width, low_poly=low_poly)
        self.task_family = task
        self.normalizer = pose_normalizer or default_pose_normalizer()
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self.observation_space = observation_space(height, width, self.observed_frames)
        self.action_space = action_space()
        self._clip: dict[str, np.ndarray] | None = None
        self._command: np.ndarray | None = None

    def _observation(self) -> dict[str, np.ndarray]:
        obs = {c: self._clip[c].copy() for c in CAMERAS}
        obs[POSE_KEY] = self.normalizer.normalize(self.sim.pose()).astype(np.float32)
        return obs

    def _info(self) -> dict[str, Any]:
        return {"instruction": self.sim.instruction, "task": self.sim.task.family, "success": self.sim.success(),
                "raw_pose": self.sim.pose(), "target_position": self._target_start.copy()}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        options = dict(options or {})
        family = options.pop("task", self.task_family)
        episode_seed = int(self.np_random.integers(2**31 - 1))
        episode_seed = int(options.pop("episode_seed", episode_seed))
        if options:
            raise ValueError(f"unknown reset options {sorted(options)}; MiniDROID-Sim-v0 accepts 'task' and "
                             f"'episode_seed'")
        self.sim.reset(episode_seed, family)
        first = self.sim.render()
        self._clip = {c: np.repeat(first[c][None], self.observed_frames, axis=0) for c in CAMERAS}
        self._command = self.sim.pose().astype(np.float64)
        self._target_start = self.sim.object_position(self.sim.task.target).astype(np.float32).copy()
        info = self._info() | {"source": "sim", "episode_seed": episode_seed}
        return self._observation(), info

    def step(self, action):
        if self._clip is None:
            raise RuntimeError("step() called before reset()")
        targets = self.normalizer.denormalize(validate_action(action).astype(np.float64))
        frames = {c: [] for c in CAMERAS}
        start = self._command
        for index, target in enumerate(targets):
            for k in range(1, FRAME_STRIDE + 1):
                self.sim.tick(start + (target - start) * k / FRAME_STRIDE)
            start = target
            if index >= FRAMES_PER_STEP - self.observed_frames:
                for cam, img in self.sim.render().items():
                    frames[cam].append(img)
        self._command = start
        self._clip = {c: np.stack(v) for c, v in frames.items()}
        success = self.sim.success()
        reward = 1.0 if success else 0.0
        terminated = bool(success and self.terminate_on_success)
        return self._observation(), reward, terminated, False, self._info()

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._clip is None:
            return None
        return tile_cameras({c: self._clip[c][-1] for c in CAMERAS})

    def close(self) -> None:
        self.sim.close()
