"""Scripted closed-loop experts for the MiniDROID tasks, with noise knobs.

An expert is a list of phases. Each phase names a target (position, yaw, gripper) computed from the
simulator's current object state (closed loop) or frozen when the phase starts; the expert's command
moves toward it at a capped speed. Noise (a per-episode grasp offset, per-tick jitter, speed) gives a
spread of successes, failures and episode lengths, as in real teleoperated data.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from persistworld_env.constants import DATA_FPS
from persistworld_env.sim.simulator import MiniDROIDSimulator

Target = tuple[np.ndarray, float, float]  # xyz, yaw, gripper

#: Height of the end-effector frame above the fingertips (m).
FINGERTIP_OFFSET = 0.043
TABLE_CLEARANCE = 0.045  # lowest end-effector height used by the experts


@dataclass
class ExpertNoise:
    """Noise knobs of a scripted expert."""

    action_std: float = 0.002  # per-tick jitter on the commanded xyz (m)
    grasp_offset_std: float = 0.004  # std of a per-episode xy error of the grasp / push point (m)
    speed: float = 0.25  # maximum end-effector speed (m/s)
    give_up_prob: float = 0.0  # chance to stop before the task is finished

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "ExpertNoise":
        """The data-generation mixture: mostly careful operators, some sloppy ones."""
        if rng.random() < 0.65:
            return cls(float(rng.uniform(0.0005, 0.003)), float(rng.uniform(0.0, 0.006)),
                       float(rng.uniform(0.18, 0.3)), 0.03)
        return cls(float(rng.uniform(0.003, 0.008)), float(rng.uniform(0.01, 0.03)),
                   float(rng.uniform(0.12, 0.3)), 0.1)


@dataclass
class Phase:
    name: str
    target: Callable[[MiniDROIDSimulator, dict], Target]
    dwell: int = 0  # ticks to hold once reached
    track: bool = True  # recompute the target every tick (else frozen at phase start)
    speed_scale: float = 1.0
    tolerance: float = 0.012  # measured distance that counts as reached (m)


def _aligned_yaw(yaw: float) -> float:
    """A cube's yaw folded into [-pi/4, pi/4] (its 4-fold symmetry)."""
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Closed-loop waypoint expert for the simulator's current task."""

    def __init__(self, sim: MiniDROIDSimulator, noise: ExpertNoise, rng: np.random.Generator,
                 return_home: bool = False) -> None:
        """``return_home``: after the task, bring the arm back to its start position (gripper unchanged)."""
        self.sim, self.noise, self.rng = sim, noise, rng
        self.offset = np.append(rng.normal(0.0, noise.grasp_offset_std, 2), 0.0)
        self.phases = self._phases()
        self.give_up_at = int(rng.integers(1, len(self.phases))) if rng.random() < noise.give_up_prob else None
        pose = sim.pose()
        if return_home:  # appended after give_up_at is drawn: the task part of the episode is unchanged
            home = pose[:3].astype(np.float64)
            self.phases.append(Phase("home", lambda sim, fr: (home, fr["yaw"], self.gripper), dwell=4, track=False))
        self.command = pose[:3].astype(np.float64)
        self.yaw, self.gripper = float(pose[5]), 0.0
        self.index, self.ticks_in_phase, self.dwell_left = 0, 0, None
        self.frozen: dict = {}

    @property
    def done(self) -> bool:
        return self.index >= len(self.phases) or (self.give_up_at is not None and self.index >= self.give_up_at)

    # -- task scripts ------------------------------------------------------------------------------
    def _phases(self) -> list[Phase]:
        task = self.sim.task
        obj = task.target
        s = self.sim

        def grasp_point(sim, fr):
            return sim.object_position(obj) + self.offset

        def cube_yaw(sim):
            return _aligned_yaw(sim.object_yaw(obj))

        def above(sim, fr):
            p = grasp_point(sim, fr)
            return np.array([p[0], p[1], 0.16]), cube_yaw(sim), 0.0

        def down(sim, fr):
            p = grasp_point(sim, fr)
            return np.array([p[0], p[1], max(p[2] + 0.02, TABLE_CLEARANCE)]), cube_yaw(sim), 0.0

        def close(sim, fr):
            return fr["cmd"], fr["yaw"], 1.0

        def lift(sim, fr):
            return fr["cmd"] + np.array([0.0, 0.0, 0.15]), fr["yaw"], 1.0

        pick = [Phase("above", above), Phase("down", down, speed_scale=0.6, tolerance=0.01),
                Phase("close", close, dwell=8, track=False), Phase("lift", lift, dwell=6, track=False)]
        if task.family == "pick":
            return pick
        if task.family == "place":
            def over_bowl(sim, fr):
                b = sim.object_position("bowl") + self.offset
                return np.array([b[0], b[1], 0.2]), fr["yaw"], 1.0

            def lower(sim, fr):
                b = sim.object_position("bowl") + self.offset
                return np.array([b[0], b[1], 0.11]), fr["yaw"], 1.0

            def release(sim, fr):
                return fr["cmd"], fr["yaw"], 0.0

            def retreat(sim, fr):
                return fr["cmd"] + np.array([0.0, 0.0, 0.12]), fr["yaw"], 0.0

            return pick + [Phase("over_bowl", over_bowl), Phase("lower", lower, speed_scale=0.6),
                           Phase("release", release, dwell=8, track=False),
                           Phase("retreat", retreat, dwell=4, track=False)]
        sign = 1.0 if task.direction == "left" else -1.0
        radius = s.scene.objects[obj].half_size[0]

        def behind(sim, fr, z):
            c = sim.object_position(obj) + self.offset
            return np.array([c[0], c[1] - sign * (radius + 0.045), z]), 0.0, 1.0

        def push(sim, fr):
            return fr["cmd"] + np.array([0.0, sign * 0.19, 0.0]), 0.0, 1.0

        def up(sim, fr):
            return fr["cmd"] + np.array([0.0, 0.0, 0.12]), 0.0, 1.0

        return [Phase("behind_high", lambda sim, fr: behind(sim, fr, 0.16)),
                Phase("behind_low", lambda sim, fr: behind(sim, fr, TABLE_CLEARANCE + 0.015), speed_scale=0.6),
                Phase("push", push, track=False, speed_scale=0.5, tolerance=0.03),
                Phase("up", up, dwell=4, track=False)]

    # -- control -----------------------------------------------------------------------------------
    def act(self) -> np.ndarray:
        """The next 7-D absolute pose command (xyz, euler xyz, gripper) for one 15 Hz tick."""
        if not self.done:
            phase = self.phases[self.index]
            if self.ticks_in_phase == 0:
                self.frozen = {"cmd": self.command.copy(), "yaw": self.yaw}
                self.frozen_target = phase.target(self.sim, self.frozen)
            target = phase.target(self.sim, self.frozen) if phase.track else self.frozen_target
            self._move_toward(target, phase.speed_scale)
            self._advance(phase, target)
        jitter = self.rng.normal(0.0, self.noise.action_std, 3)
        return np.concatenate([self.command + jitter, [0.0, 0.0, self.yaw, self.gripper]]).astype(np.float32)

    def _move_toward(self, target: Target, speed_scale: float) -> None:
        xyz, yaw, gripper = target
        step = self.noise.speed * speed_scale / DATA_FPS
        delta = np.asarray(xyz) - self.command
        dist = np.linalg.norm(delta)
        self.command = self.command + (delta if dist <= step else delta * step / dist)
        self.yaw += float(np.clip(yaw - self.yaw, -1.5 / DATA_FPS, 1.5 / DATA_FPS))
        self.gripper = float(gripper)

    def _advance(self, phase: Phase, target: Target) -> None:
        self.ticks_in_phase += 1
        reached = (np.linalg.norm(self.command - target[0]) < 1e-3
                   and np.linalg.norm(self.sim.pose()[:3] - target[0]) < phase.tolerance)
        if reached and self.dwell_left is None:
            self.dwell_left = phase.dwell
        if self.dwell_left is not None:
            self.dwell_left -= 1
        if (self.dwell_left is not None and self.dwell_left < 0) or self.ticks_in_phase > 6 * DATA_FPS:
            self.index, self.ticks_in_phase, self.dwell_left = self.index + 1, 0, None
