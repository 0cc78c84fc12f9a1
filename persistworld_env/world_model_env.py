"""``PersistWorld-DROID-v0``: the learned world model as a Gymnasium environment.

Spaces are those of ``MiniDROID-Sim-v0`` (:mod:`persistworld_env.spaces`), so a policy moves between the
simulator and the model without change. Each step samples one clip with the rollout engine: 4 new
frames per camera (0.8 s). With ``ground_truth="sim"`` the MiniDROID simulator is stepped with the same
actions and ``info["fidelity"]`` reports per-camera PSNR/SSIM of the model against it: live drift.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

from persistworld_env.constants import CAMERAS, FRAMES_PER_STEP, MODEL_FPS
from persistworld_env.initial_states import DatasetStarts, SimStarts, StartState, check_start, check_views
from persistworld_env.metrics import psnr, ssim
from persistworld_env.spaces import POSE_KEY, action_space, check_observed_frames, observation_space, validate_action
from persistworld_env.visualization import tile_views

RewardFn = Callable[[dict, dict], float]


def goal_reward(obs: dict, info: dict) -> float:
    """Minus the mean absolute difference (in [0, 1]) between each camera's latest frame and its goal image."""
    latest = np.stack([obs[c][-1] for c in CAMERAS]).astype(np.float32)
    return -float(np.abs(latest - info["goal"].astype(np.float32)).mean() / 255.0)


def check_reset_options(options: dict, starts: SimStarts | DatasetStarts, goal: bool = False) -> None:
    """Reject reset options this env does not use (saying which and why) before a reset changes anything.

    Valid: ``frames`` and ``pose`` (your own start, with an optional ``instruction``), else ``episode``
    (dataset starts) or ``task`` (simulator starts); ``goal`` with ``reward="goal"`` (``goal=True``)."""
    dataset, user = isinstance(starts, DatasetStarts), "frames" in options or "pose" in options
    source = "your own start" if user else "dataset starts" if dataset else "simulator starts"
    why = {}
    for key in options:
        if key == "goal" and not goal:
            why[key] = "only used with reward='goal' (single env)"
        elif key in ("episode", "task") and user:
            why[key] = "not used with your own start ('frames' and 'pose')"
        elif key == "episode" and not dataset:
            why[key] = "needs a dataset: make the env with initial_state=<dataset path>"
        elif key == "task" and dataset:
            why[key] = "only used with simulator starts (initial_state='sim'); a dataset episode has its own task"
        elif key == "instruction" and not user:
            why[key] = "only used with your own start ('frames' and 'pose')"
        elif key not in ("frames", "pose", "instruction", "episode", "task", "goal"):
            why[key] = "unknown option"
    if why:
        reasons = "; ".join(f"{key!r}: {reason}" for key, reason in why.items())
        raise ValueError(f"reset options not valid for {source}: {reasons}. Valid: "
                         f"{'episode' if dataset else 'task'!r}, or 'frames' and 'pose' (your own start) with an "
                         f"optional 'instruction'" + (", and 'goal'" if goal else ""))


def resolve_start(starts: SimStarts | DatasetStarts, options: dict, seed: int, task: str | None,
                  height: int, width: int) -> StartState:
    """The start an episode's reset options (checked by :func:`check_reset_options`) ask for; ``seed`` (the
    episode seed) picks the scene of simulator starts and, without ``options["episode"]``, the dataset episode."""
    if "frames" in options or "pose" in options:
        frames, pose = check_start(options.get("frames"), options.get("pose"), height, width)
        return StartState(frames, pose, str(options.get("instruction", "")), {"source": "user"})
    if isinstance(starts, DatasetStarts):
        return starts.get(int(options["episode"]) if "episode" in options else starts.draw(seed))
    return starts.get(seed, options.get("task", task))


def load_engine(model: Any, device: str, sampling_steps: int | None, guidance: float | None,
                dtype: Any = "auto"):
    """(WorldModel, RolloutEngine) from a model directory, ``"default"`` or a loaded model (used in its own
    precision unless ``dtype`` names another)."""
    from persistworld_env.models.world_model import WorldModel, is_auto_dtype, resolve_dtype
    from persistworld_env.rollout import RolloutEngine

    if isinstance(model, WorldModel):
        if not (dtype is None or is_auto_dtype(dtype)) and resolve_dtype(dtype) != model.denoiser.dtype:
            raise ValueError(f"dtype={dtype!r} applies when the env loads the model; this loaded model is "
                             f"{model.denoiser.dtype}: convert it with model.to(dtype) first, or pass its directory")
    else:
        model = WorldModel.from_pretrained(model, device=device, dtype=dtype)
    engine = RolloutEngine(model)
    changes = {k: v for k, v in (("steps", sampling_steps), ("guidance", guidance)) if v is not None}
    if changes:
        engine.with_sampler(**changes)
    return model, engine


def build_reward(reward: Any, model: Any, device: str, success_detector: Any, success_threshold: float | None,
                 height: int, width: int, success_steps: int | None = None) -> RewardFn | None:
    """The ``(obs, info) -> float`` reward of an env's ``reward`` argument (see :class:`PersistWorldEnv`)."""
    if reward is not None and reward not in ("goal", "success") and not callable(reward):
        raise ValueError(f"reward must be None, 'goal', 'success' or a callable (obs, info) -> float, got {reward!r}")
    if reward != "success" and (success_detector is not None or success_threshold is not None
                                or success_steps is not None):
        raise ValueError("success_detector, success_threshold and success_steps are only used with reward='success'")
    if reward == "goal":
        return goal_reward
    if reward == "success":
        from persistworld_env.success import SuccessReward, load_success_detector

        return SuccessReward(load_success_detector(success_detector, model, device), success_threshold, height, width,
                             success_steps)
    return reward


def restart_reward(reward_fn: RewardFn | None, slots: Sequence[int] = (0,)) -> None:
    """Tell a stateful reward (one with ``reset(slots)``, like :class:`~persistworld_env.success.SuccessReward`)
    that ``slots`` start episodes."""
    if hasattr(reward_fn, "reset"):
        reward_fn.reset(slots)


def batch_rewards(reward_fn: RewardFn | None, obs: dict, infos: list[dict]) -> np.ndarray:
    """The rewards (N,) of N sub-envs from their batched observations: a reward with ``score(obs, infos, slots)``
    (like :class:`~persistworld_env.success.SuccessReward`, whose detector then runs once for all) scores the
    batch; any other ``reward_fn(obs, info)`` is called per sub-env (a stateful one, with ``reset(slots)``, also
    gets ``slot=i``); zeros without a reward."""
    n = len(infos)
    if reward_fn is None:
        return np.zeros(n, np.float64)
    if hasattr(reward_fn, "score"):
        return np.asarray(reward_fn.score(obs, infos, list(range(n))), np.float64)
    per_slot = hasattr(reward_fn, "reset")
    return np.array([float(reward_fn({k: v[i] for k, v in obs.items()}, infos[i], **({"slot": i} if per_slot else {})))
                     for i in range(n)], np.float64)


def step_info(instruction: str, start_info: dict, pose: np.ndarray) -> dict[str, Any]:
    """The facts every reset's and step's ``info`` carries: the instruction, the episode's start facts (source,
    task, seed, the target object's start position for simulator starts) and the raw 7-D pose reached (keys as
    in ``MiniDROID-Sim-v0``'s info, so one reward function serves both)."""
    raw_pose = np.asarray(pose, dtype=np.float32).copy()
    return {"instruction": instruction, **fresh_copy(start_info), "raw_pose": raw_pose}


def fresh_copy(info: dict) -> dict:
    """A copy whose arrays are new objects (Gymnasium: infos handed to users never share data)."""
    return {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in info.items()}


def make_starts(initial_state: str, height: int, width: int) -> SimStarts | DatasetStarts:
    """``"sim"`` -> MiniDROID starts; anything else is a LeRobot dataset path."""
    return SimStarts(height, width) if initial_state == "sim" else DatasetStarts(initial_state, height, width)


class PersistWorldEnv(gym.Env):
    """A world model stepped like a simulator.

    Args:
        model: model directory, ``"default"`` (the embedded model) or a loaded ``WorldModel``.
        device: torch device of the model.
        dtype: precision of the model's weights when the env loads it: ``"auto"`` (default: bfloat16 on a
            CUDA GPU of compute capability 8 or newer and on a CPU with AMX tiles, where batched steps run
            1.3-1.9x faster at the same replay fidelity; float32 elsewhere; see
            ``persistworld_env.models.world_model.auto_dtype``), ``"float32"`` (or None), ``"float16"`` or
            ``"bfloat16"`` (frames within a few levels of float32). The choice is in
            ``env.unwrapped.model.denoiser.dtype``.
        sampling_steps, guidance: override the model's sampling defaults.
        reward: None (always 0), ``"goal"`` (minus the mean absolute pixel difference, in [0, 1], between
            the latest frame of every camera and a goal image per camera given at reset as
            ``options={"goal": (3, H, W, 3) uint8}``), ``"success"`` (sparse: 1.0 and ``terminated`` when a
            learned success detector judges the latest frames a success of the instruction, else 0.0;
            ``info["success_probability"]``, see :mod:`persistworld_env.success`), or a callable
            ``(obs, info) -> float``.
        success_detector: for ``reward="success"``: a detector directory or loaded ``SuccessDetector``;
            default: the ``success_detector/`` folder of the model directory.
        success_threshold: P(success) above which a frame counts as a success (None: the detector's own).
        success_steps: steps in a row whose frames must count before the episode succeeds (None: the
            detector's own; see :class:`~persistworld_env.success.SuccessReward`).
        initial_state: ``"sim"`` (MiniDROID at the reset seed) or a LeRobot dataset path
            (``reset(options={"episode": i})``; without it, e.g. at an autoreset, an episode drawn at random
            from the env's RNG).
        task: MiniDROID task family for simulator starts (None: random).
        ground_truth: None or ``"sim"`` (step MiniDROID alongside and report fidelity in ``info``, with the
            simulator's own task verdict as ``info["ground_truth_success"]``: the detector's check, live).
        render_mode: ``"rgb_array"`` or None.
        uncertainty_samples: K > 0 also samples K other clips for every step (without using them) and
            reports ``info["uncertainty"]``: per camera, the mean pixel standard deviation (0..1) over the
            K + 1 clips; costs K extra clips per step.
        timing_info: add the model's wall-clock ``step_seconds`` to ``info`` (off by default: it makes
            ``info`` differ between otherwise identical runs); always in ``env.last_step_seconds``.
        observed_frames: frames per camera in an observation, the last of each step's 4 (default 4, the whole
            clip). 1 gives the latest frame only, what an image policy usually sees (``LatestFrameObservation``),
            and the model decodes a quarter of the frames: on a CPU, where decoding is a third to a half of a step,
            steps run 1.3-1.7x faster (docs/benchmarks.md). The images are the last frames of a 4-frame
            observation, up to float rounding. ``MiniDROID-Sim-v0`` takes the same argument, so the spaces
            still match.

    Reset and step ``info``: the instruction, the episode's start facts (``source``, and for simulator starts
    ``task``, ``episode_seed`` and the target object's start ``target_position``), the raw 7-D ``raw_pose`` reached,
    plus (steps) what the options above add (``success``, ``fidelity``, ``uncertainty``, ``step_seconds``, a copy of
    the ``goal`` images).

    Reset options: ``{"episode": i}`` (dataset starts), ``{"task": name}`` (simulator starts), or
    ``{"frames": (3, H, W, 3) uint8, "pose": (7,) raw pose, "instruction": str}`` (your own start), plus ``"goal"``
    with ``reward="goal"``; others are rejected before anything changes.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": MODEL_FPS}

    def __init__(self, model: Any = "default", device: str = "cpu", sampling_steps: int | None = None,
                 guidance: float | None = None, reward: RewardFn | None = None, initial_state: str = "sim",
                 task: str | None = None, ground_truth: str | None = None, render_mode: str | None = None,
                 timing_info: bool = False, uncertainty_samples: int = 0, success_detector: Any = None,
                 success_threshold: float | None = None, success_steps: int | None = None, dtype: Any = "auto",
                 observed_frames: int = FRAMES_PER_STEP) -> None:
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if ground_truth not in (None, "sim"):
            raise ValueError(f"ground_truth must be None or 'sim', got {ground_truth!r}")
        self.observed_frames = check_observed_frames(observed_frames)
        self.model, self.engine = load_engine(model, device, sampling_steps, guidance, dtype)
        cfg = self.model.config
        self.height, self.width = cfg.height, cfg.width
        self.observation_space = observation_space(cfg.height, cfg.width, self.observed_frames)
        self.action_space = action_space()
        self.render_mode, self.task = render_mode, task
        self.reward_fn = build_reward(reward, model, device, success_detector, success_threshold, cfg.height, cfg.width,
                                      success_steps)
        self._terminate_on_success = reward == "success"
        self._goal: np.ndarray | None = None
        self.timing_info, self.last_step_seconds = timing_info, 0.0
        if uncertainty_samples < 0:
            raise ValueError(f"uncertainty_samples must be >= 0, got {uncertainty_samples}")
        self.uncertainty_samples = int(uncertainty_samples)
        self.starts = make_starts(initial_state, cfg.height, cfg.width)
        self.ground_truth = None
        if ground_truth == "sim":
            from persistworld_env.sim.env import MiniDROIDSimEnv
            self.ground_truth = MiniDROIDSimEnv(cfg.height, cfg.width, pose_normalizer=self.model.normalizer,
                                                terminate_on_success=False, observed_frames=self.observed_frames)
        self._clip: np.ndarray | None = None  # (observed_frames, V, H, W, 3)
        self.ground_truth_clip: np.ndarray | None = None  # the simulator's latest clip (ground_truth="sim")
        self._pose: np.ndarray | None = None  # raw (7,)
        self._instruction = ""
        self._start_info: dict[str, Any] = {}

    # -- helpers -----------------------------------------------------------------------------------
    def _observation(self) -> dict[str, np.ndarray]:
        obs = {cam: self._clip[:, v].copy() for v, cam in enumerate(CAMERAS)}
        obs[POSE_KEY] = np.asarray(self.model.normalizer.normalize(self._pose), dtype=np.float32)
        return obs

    def _start(self, seed: int, options: dict) -> StartState:
        return resolve_start(self.starts, options, seed, self.task, self.height, self.width)

    # -- gymnasium API -----------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        options = dict(options or {})
        check_reset_options(options, self.starts, goal=self.reward_fn is goal_reward)
        # gym.Env.reset's seeding, on a candidate RNG kept only if the reset is accepted
        rng, rng_seed = (gym.utils.seeding.np_random(seed) if seed is not None
                         else (copy.deepcopy(self.np_random), self.np_random_seed))
        episode_seed = int(rng.integers(2**31 - 1))
        goal = None
        if self.reward_fn is goal_reward:
            if "goal" not in options:
                raise ValueError("reward='goal' needs reset(options={'goal': (3, H, W, 3) uint8 images})")
            goal = check_views(options["goal"], self.height, self.width, "goal images").copy()
        start = self._start(episode_seed, options)
        if self.ground_truth is not None and start.info.get("source") != "sim":
            raise ValueError("ground_truth='sim' needs simulator starts (initial_state='sim')")
        # accepted: only now does the running episode end
        self._np_random, self._np_random_seed = rng, rng_seed
        self.engine.reset(start.frames[None], start.pose[None], [start.instruction] if start.instruction else None,
                          seeds=[episode_seed])
        self._goal = goal
        self._clip = np.repeat(start.frames[None], self.observed_frames, axis=0)
        self._pose, self._instruction, self._start_info = start.pose.astype(np.float32), start.instruction, start.info
        restart_reward(self.reward_fn)
        if self.ground_truth is not None:  # the very same scene as the model's start
            self.ground_truth.reset(options={"task": start.info["task"], "episode_seed": start.info["episode_seed"]})
        return self._observation(), step_info(start.instruction, start.info, start.pose)

    def step(self, action):
        if self._clip is None:
            raise RuntimeError("step() called before reset()")
        normalized = validate_action(action)
        poses = np.asarray(self.model.normalizer.denormalize(normalized.astype(np.float64)), dtype=np.float32)
        t0 = time.perf_counter()
        out = self.engine.step(poses[None], alternatives=self.uncertainty_samples, decoded_frames=self.observed_frames)
        self.last_step_seconds = time.perf_counter() - t0
        info = step_info(self._instruction, self._start_info, poses[-1])
        if self._goal is not None:
            info["goal"] = self._goal.copy()
        if out.alternatives is not None:  # (K + 1, F, V, H, W, 3) -> per camera std over samples
            spread = np.concatenate([out.frames[0][None], out.alternatives[0]]).astype(np.float32).std(axis=0) / 255.0
            info["uncertainty"] = dict(zip(CAMERAS, spread.mean(axis=(0, 2, 3, 4)).tolist()))
        if self.timing_info:
            info["step_seconds"] = self.last_step_seconds
        self._clip, self._pose = out.frames[0], poses[-1]
        obs = self._observation()
        if self.ground_truth is not None:
            truth, *_, truth_info = self.ground_truth.step(normalized)
            info["ground_truth_success"] = bool(truth_info["success"])  # the simulator's task predicate
            truth = np.stack([truth[c] for c in CAMERAS], axis=1)
            self.ground_truth_clip = truth
            info["fidelity"] = {"psnr": dict(zip(CAMERAS, psnr(self._clip, truth).mean(0).tolist())),
                                "ssim": dict(zip(CAMERAS, ssim(self._clip, truth).mean(0).tolist()))}
        reward = float(self.reward_fn(obs, info)) if self.reward_fn is not None else 0.0
        terminated = bool(self._terminate_on_success and info["success"])
        return obs, reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode != "rgb_array" or self._clip is None:
            return None
        return tile_views(self._clip[-1])

    def close(self) -> None:
        if getattr(self, "starts", None) is not None:
            self.starts.close()
        if getattr(self, "ground_truth", None) is not None:
            self.ground_truth.close()
