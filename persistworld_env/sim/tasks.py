"""MiniDROID task families: a language instruction and a success predicate on the simulator state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from persistworld_env.sim.assets import BOWL_RADIUS
from persistworld_env.sim.scene import SceneSpec

TASK_FAMILIES: tuple[str, ...] = ("pick", "place", "push")


class ObjectState(Protocol):
    """What a success predicate may read from the simulator."""

    def object_position(self, slot: str) -> np.ndarray: ...

    def gripper_position(self) -> float: ...


@dataclass(frozen=True)
class Task:
    """A task instance: family, the object slot it is about, and its parameters."""

    family: str
    target: str
    color: str
    direction: str = ""  # push only: "left" (+y) or "right" (-y)

    @property
    def instruction(self) -> str:
        if self.family == "pick":
            return f"pick up the {self.color} cube"
        if self.family == "place":
            return f"put the {self.color} cube in the bowl"
        return f"push the {self.color} cup to the {self.direction}"

    def success(self, sim: ObjectState, start: dict[str, np.ndarray]) -> bool:
        """Whether the task is achieved; ``start`` holds object positions at reset."""
        pos = sim.object_position(self.target)
        if self.family == "pick":
            return bool(pos[2] - start[self.target][2] > 0.06 and sim.gripper_position() > 0.2)
        if self.family == "place":
            bowl = sim.object_position("bowl")
            inside = np.hypot(*(pos[:2] - bowl[:2])) < BOWL_RADIUS - 0.015
            return bool(inside and pos[2] < 0.06 and sim.gripper_position() < 0.5)
        sign = 1.0 if self.direction == "left" else -1.0
        moved = sign * (pos[1] - start[self.target][1])
        upright = abs(pos[2] - start[self.target][2]) < 0.01
        return bool(moved > 0.10 and upright)


def sample_task(rng: np.random.Generator, scene: SceneSpec, family: str | None = None) -> Task:
    """Draw a task compatible with ``scene`` (uniform over families unless ``family`` is given).

    The family is always drawn, then overridden, so naming the family a seed would have drawn anyway
    gives the very same episode as not naming it.
    """
    drawn = str(rng.choice(TASK_FAMILIES))
    family = drawn if family is None else family
    if family not in TASK_FAMILIES:
        raise ValueError(f"unknown task family {family!r}; choose from {TASK_FAMILIES}")
    if family in ("pick", "place"):
        cube = scene.cubes()[int(rng.integers(len(scene.cubes())))]
        return Task(family, cube.slot, cube.color)
    cup = scene.objects["cup"]
    # Push toward the side with more room on the table.
    direction = "left" if cup.xy[1] < 0 else "right"
    if rng.random() < 0.2:
        direction = "right" if direction == "left" else "left"
    return Task(family, "cup", cup.color, direction)
