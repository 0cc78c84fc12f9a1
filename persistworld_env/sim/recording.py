"""Record scripted-expert episodes of the MiniDROID simulator as :class:`EpisodeRecord` s."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from persistworld_env.constants import CAMERAS, DATA_FPS
from persistworld_env.data.episode import EpisodeRecord
from persistworld_env.sim.experts import ExpertNoise, ScriptedExpert
from persistworld_env.sim.simulator import MiniDROIDSimulator

MAX_SECONDS = 15.0
HOLD_TICKS = 8  # ticks recorded after the expert finishes


@dataclass
class ExpertRun:
    """What one scripted-expert episode produced, tick by tick (T ticks at 15 Hz).

    Row ``t`` describes the state frame ``t`` shows (before command ``t`` is applied): ``state`` (T, 7)
    measured pose, ``joints`` (T, 7), ``frame_success`` (T,) the task predicate on that state; ``actions``
    (T, 7) the command of tick ``t`` and ``targets`` (T, 7) the joint targets it produced. ``success``
    is the predicate after the last tick (the episode's label). ``frames`` is None when not rendered.
    """

    frames: dict[str, np.ndarray] | None
    state: np.ndarray
    joints: np.ndarray
    actions: np.ndarray
    targets: np.ndarray
    frame_success: np.ndarray
    success: bool
    noise: ExpertNoise


def run_expert(sim: MiniDROIDSimulator, seed: int, task_family: str | None = None, noise: ExpertNoise | None = None,
               max_ticks: int = int(MAX_SECONDS * DATA_FPS), render: bool = True, min_ticks: int = 0) -> ExpertRun:
    """Reset ``sim`` at ``seed`` and run a scripted expert to its end; deterministic by seed.

    The expert's noise is drawn from :meth:`ExpertNoise.sample` unless given. ``render=False`` skips
    the cameras (physics only, several times faster): rendering never changes the physics, so the
    states are the very same as in a rendered run. ``min_ticks`` > 0 makes the episode at least that
    long: after its task the expert returns the arm to its start position and holds it there (the task
    part is the same as without it; used for long-horizon evaluation sets).
    """
    if not 0 <= min_ticks <= max_ticks:
        raise ValueError(f"min_ticks must lie in [0, max_ticks={max_ticks}], got {min_ticks}")
    sim.reset(seed, task_family)
    rng = np.random.default_rng([seed, 1])
    noise = noise if noise is not None else ExpertNoise.sample(rng)
    expert = ScriptedExpert(sim, noise, rng, return_home=min_ticks > 0)
    frames = {c: [] for c in CAMERAS} if render else None
    state, joints, actions, targets, frame_success = [], [], [], [], []
    hold = HOLD_TICKS
    for _ in range(max_ticks):
        if frames is not None:
            for cam, img in sim.render().items():
                frames[cam].append(img)
        state.append(sim.pose())
        joints.append(sim.joint_position())
        frame_success.append(sim.success())
        command = expert.act()
        sim.tick(command)
        actions.append(command)
        targets.append(sim.joint_targets())
        if expert.done:
            hold -= 1
            if hold < 0 and len(state) >= min_ticks:
                break
    return ExpertRun(frames={c: np.stack(v) for c, v in frames.items()} if frames is not None else None,
                     state=np.stack(state), joints=np.stack(joints), actions=np.stack(actions),
                     targets=np.stack(targets), frame_success=np.array(frame_success, dtype=bool),
                     success=sim.success(), noise=noise)


def record_episode(sim: MiniDROIDSimulator, seed: int, task_family: str | None = None,
                   noise: ExpertNoise | None = None, max_ticks: int = int(MAX_SECONDS * DATA_FPS),
                   min_ticks: int = 0) -> EpisodeRecord:
    """Reset ``sim`` at ``seed``, run a scripted expert and return the 15 Hz recording (with per-frame
    success labels; ``min_ticks``: see :func:`run_expert`). Deterministic by seed."""
    run = run_expert(sim, seed, task_family, noise, max_ticks, render=True, min_ticks=min_ticks)
    state, actions = run.state, run.actions
    return EpisodeRecord(
        frames=run.frames,
        cartesian_position=state[:, :6], gripper_position=state[:, 6:7], joint_position=run.joints,
        action_cartesian_position=actions[:, :6], action_gripper_position=actions[:, 6:7],
        action_joint_position=run.targets,
        instruction=sim.instruction, task=sim.task.family, success=run.success, seed=int(seed),
        extra={"noise": vars(run.noise), "scene": sim.scene.describe(), "target": sim.task.target},
        frame_success=run.frame_success,
    )


def action_chunks(record: EpisodeRecord, normalizer, frames_per_step: int = 4, stride: int = 3) -> list[np.ndarray]:
    """Cut an episode's commanded poses into environment actions: (4, 7) normalised chunks at 5 Hz.

    Frame ``T`` of a recording shows the state after the commands of ticks ``0..T-1``; the env renders
    its frame after tracking a target, so chunk ``k`` holds the commands of ticks ``T - 1`` with
    ``T = 3(4k + j + 1)``, j = 0..3. Only whole chunks are cut.
    """
    commands = record.action_pose
    n_chunks = max(1, (len(commands) - 1) // (stride * frames_per_step))
    ticks = np.arange(1, n_chunks * frames_per_step + 1) * stride - 1
    poses = commands[np.minimum(ticks, len(commands) - 1)].reshape(n_chunks, frames_per_step, -1)
    return [normalizer.normalize(c).astype(np.float32) for c in poses]


def expert_action_chunks(episode_seed: int, task: str | None, normalizer, height: int, width: int,
                         steps: int | None = None) -> list[np.ndarray]:
    """Environment actions of the scripted expert for the scene of ``episode_seed`` (as reported by
    ``reset``'s ``info["episode_seed"]``), recorded in a private simulator; padded to ``steps`` chunks
    by repeating the last one."""
    sim = MiniDROIDSimulator(height, width)
    try:
        record = record_episode(sim, episode_seed, task_family=task)
    finally:
        sim.close()
    chunks = action_chunks(record, normalizer)
    return chunks + [chunks[-1]] * max(0, (steps or 0) - len(chunks))
