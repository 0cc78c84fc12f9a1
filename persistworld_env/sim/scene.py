"""Per-episode scene randomisation of MiniDROID: object colours, sizes and poses, distractors, lighting.

A :class:`SceneSpec` is plain data sampled from a seeded generator; :func:`apply_scene` writes it into
the compiled model and state. Objects not used in an episode are parked out of view behind the wall.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from persistworld_env.sim.assets import BOWL_RADIUS, NUM_CUBES, NUM_DISTRACTORS

#: Named colours used by instructions ("pick up the red cube").
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.12, 0.10),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.90),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.55, 0.20, 0.75),
}
DISTRACTOR_COLORS = [(0.9, 0.9, 0.9), (0.25, 0.25, 0.25), (0.55, 0.4, 0.25), (0.4, 0.7, 0.75)]

#: Region of the table where objects are placed (robot base at the origin, facing +x).
PLACE_LOW = np.array([0.36, -0.28])
PLACE_HIGH = np.array([0.68, 0.28])
PARKED_POSE = np.array([-1.5, 0.0, -0.70])


@dataclass
class ObjectSpec:
    """One object slot: its kind, colour, size and initial planar pose."""

    slot: str
    kind: str  # "cube" | "bowl" | "cup" | "distractor"
    color: str
    rgb: tuple[float, float, float]
    half_size: tuple[float, ...]  # cube: (h,); cup: (radius, half height); distractor: (radius, half length)
    xy: tuple[float, float] = (0.0, 0.0)
    yaw: float = 0.0
    active: bool = True

    @property
    def footprint(self) -> float:
        """Radius of the object's footprint on the table (for non-overlapping placement)."""
        if self.kind == "bowl":
            return BOWL_RADIUS + 0.01
        if self.kind == "cube":
            return self.half_size[0] * 1.42
        if self.kind == "distractor":
            return self.half_size[0] + self.half_size[1]
        return self.half_size[0]

    @property
    def rest_height(self) -> float:
        """Height of the body origin when resting on the table."""
        if self.kind == "cube":
            return self.half_size[0]
        if self.kind == "cup":
            return self.half_size[1]
        if self.kind == "distractor":
            return self.half_size[0]
        return 0.0


@dataclass
class SceneSpec:
    """Everything randomised in one episode's scene."""

    objects: dict[str, ObjectSpec]
    table_rgb: tuple[float, float, float]
    light_dir: tuple[float, float, float]
    light_diffuse: float
    ambient: float
    extra: dict = field(default_factory=dict)

    def cubes(self) -> list[ObjectSpec]:
        return [o for o in self.objects.values() if o.kind == "cube" and o.active]

    def describe(self) -> dict:
        """JSON-friendly summary (stored with each recorded episode)."""
        return {
            s: {"kind": o.kind, "color": o.color, "xy": [round(v, 4) for v in o.xy], "active": o.active}
            for s, o in self.objects.items()
        }


def _place(rng: np.random.Generator, objects: list[ObjectSpec], margin: float = 0.03) -> None:
    placed: list[ObjectSpec] = []
    for obj in sorted(objects, key=lambda o: -o.footprint):  # big ones first
        for _ in range(200):
            xy = rng.uniform(PLACE_LOW, PLACE_HIGH)
            if all(np.hypot(*(xy - np.array(p.xy))) > obj.footprint + p.footprint + margin for p in placed):
                break
        obj.xy = (float(xy[0]), float(xy[1]))
        obj.yaw = float(rng.uniform(-np.pi, np.pi))
        placed.append(obj)


def sample_scene(rng: np.random.Generator) -> SceneSpec:
    """Draw a random scene: 2-3 cubes of distinct colours, a bowl, a cup, 1-2 distractors."""
    names = list(COLORS)
    objects: dict[str, ObjectSpec] = {}
    n_cubes = int(rng.integers(2, NUM_CUBES + 1))
    cube_colors = rng.choice(names, size=NUM_CUBES, replace=False)
    for i in range(NUM_CUBES):
        c = str(cube_colors[i])
        objects[f"cube{i}"] = ObjectSpec(f"cube{i}", "cube", c, COLORS[c], (float(rng.uniform(0.018, 0.025)),),
                                         active=i < n_cubes)
    bowl_color = str(rng.choice(names))
    objects["bowl"] = ObjectSpec("bowl", "bowl", bowl_color, COLORS[bowl_color], (BOWL_RADIUS,))
    cup_color = str(rng.choice(names))
    objects["cup"] = ObjectSpec("cup", "cup", cup_color, COLORS[cup_color],
                                (float(rng.uniform(0.028, 0.036)), float(rng.uniform(0.028, 0.038))))
    n_distractors = int(rng.integers(1, NUM_DISTRACTORS + 1))
    for i in range(NUM_DISTRACTORS):
        rgb = DISTRACTOR_COLORS[int(rng.integers(len(DISTRACTOR_COLORS)))]
        objects[f"distractor{i}"] = ObjectSpec(
            f"distractor{i}", "distractor", "other", rgb,
            (float(rng.uniform(0.014, 0.02)), float(rng.uniform(0.02, 0.035))), active=i < n_distractors)
    _place(rng, [o for o in objects.values() if o.active])
    base = np.array([0.62, 0.5, 0.38])
    table = np.clip(base + rng.normal(0, 0.05, 3), 0, 1)
    light = np.array([rng.uniform(-0.4, 0.4), rng.uniform(-0.4, 0.4), -1.0])
    return SceneSpec(
        objects=objects,
        table_rgb=tuple(float(v) for v in table),
        light_dir=tuple(float(v) for v in light / np.linalg.norm(light)),
        light_diffuse=float(rng.uniform(0.35, 0.65)),
        ambient=float(rng.uniform(0.28, 0.42)),
    )


def _geoms_of(model: mujoco.MjModel, body: str) -> np.ndarray:
    return np.flatnonzero(model.geom_bodyid == model.body(body).id)


def apply_scene(model: mujoco.MjModel, data: mujoco.MjData, spec: SceneSpec) -> None:
    """Write colours, sizes, lighting and initial object poses of ``spec`` into the model and state."""
    for slot, obj in spec.objects.items():
        geoms = _geoms_of(model, slot)
        model.geom_rgba[geoms, :3] = obj.rgb
        if obj.kind == "cube":
            h = obj.half_size[0]
            model.geom_size[geoms] = (h, h, h)
            model.geom_rbound[geoms] = h * np.sqrt(3)
            model.geom_aabb[geoms, 3:] = h
        elif obj.kind in ("cup", "distractor"):
            r, hl = obj.half_size
            model.geom_size[geoms, :2] = (r, hl)
            model.geom_rbound[geoms] = np.hypot(r, hl) + (r if obj.kind == "distractor" else 0.0)
            model.geom_aabb[geoms, 3:] = (r, r, hl + (r if obj.kind == "distractor" else 0.0))
        jnt = model.joint(slot)
        qa, da = jnt.qposadr[0], jnt.dofadr[0]
        if obj.active:
            pos = np.array([obj.xy[0], obj.xy[1], obj.rest_height + 0.001])
        else:
            pos = PARKED_POSE + np.array([0.0, 0.3 * list(spec.objects).index(slot), 0.0])
        quat = np.array([np.cos(obj.yaw / 2), 0.0, 0.0, np.sin(obj.yaw / 2)])
        data.qpos[qa:qa + 3] = pos
        data.qpos[qa + 3:qa + 7] = quat
        data.qvel[da:da + 6] = 0.0
    table = model.geom("table").id
    model.geom_rgba[table, :3] = spec.table_rgb
    model.light_dir[0] = spec.light_dir
    model.light_diffuse[0] = spec.light_diffuse
    model.vis.headlight.ambient[:] = spec.ambient
