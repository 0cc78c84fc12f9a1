"""The MiniDROID simulator: a seeded scene, a task, pose control at 15 Hz and three-camera rendering."""
from __future__ import annotations

import mujoco
import numpy as np

from persistworld_env.constants import CAMERAS, DATA_FPS, DEFAULT_HEIGHT, DEFAULT_WIDTH
from persistworld_env.sim.assets import build_model
from persistworld_env.sim.controller import HOME_QPOS, PoseController
from persistworld_env.sim.scene import SceneSpec, apply_scene, sample_scene
from persistworld_env.sim.tasks import Task, sample_task

#: Nominal start pose of the end effector (xyz, euler xyz); jittered per episode.
START_POSE = np.array([0.45, 0.0, 0.33, 0.0, 0.0, 0.0])
SETTLE_SECONDS = 0.3


class MiniDROIDSimulator:
    """A Franka on a table with randomised objects, driven by absolute end-effector pose commands.

    Args:
        height, width: image size of every camera (DROID's 3:5 aspect recommended).
        low_poly: render the arm with its coarse collision meshes (~7x faster on a software renderer).
    """

    def __init__(self, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH, low_poly: bool = True) -> None:
        if height < 8 or width < 8:
            raise ValueError(f"image size must be at least 8x8, got {height}x{width}")
        self.height, self.width = int(height), int(width)
        self.model = build_model(low_poly=low_poly)
        self.model.vis.global_.offwidth = max(self.model.vis.global_.offwidth, self.width)
        self.model.vis.global_.offheight = max(self.model.vis.global_.offheight, self.height)
        self.data = mujoco.MjData(self.model)
        self.controller = PoseController(self.model)
        self.substeps = max(1, round(1.0 / DATA_FPS / self.model.opt.timestep))
        self._renderer: mujoco.Renderer | None = None
        self.scene: SceneSpec | None = None
        self.task: Task | None = None
        self._start_positions: dict[str, np.ndarray] = {}

    # -- episode -----------------------------------------------------------------------------
    def reset(self, seed: int, task_family: str | None = None) -> None:
        """Sample a scene and a task from ``seed`` and settle the physics. Deterministic by seed."""
        rng = np.random.default_rng(seed)
        self.scene = sample_scene(rng)
        self.task = sample_task(rng, self.scene, task_family)
        start = START_POSE + np.concatenate([rng.uniform(-0.04, 0.04, 3), [0.0, 0.0, rng.uniform(-0.2, 0.2)]])
        mujoco.mj_resetData(self.model, self.data)
        apply_scene(self.model, self.data, self.scene)
        self.controller.set_arm_qpos(self.data, self.controller.solve_ik(start, HOME_QPOS))
        mujoco.mj_forward(self.model, self.data)
        mujoco.mj_step(self.model, self.data, nstep=round(SETTLE_SECONDS / self.model.opt.timestep))
        self._start_positions = {s: self.object_position(s) for s in self.scene.objects}

    def _require_reset(self) -> None:
        if self.task is None:
            raise RuntimeError("MiniDROIDSimulator.reset() must be called first")

    def tick(self, pose7: np.ndarray) -> None:
        """Track the absolute pose command for one 15 Hz control tick."""
        self._require_reset()
        pose7 = np.asarray(pose7, dtype=np.float64)
        if pose7.shape != (7,) or not np.all(np.isfinite(pose7)):
            raise ValueError(f"pose command must be 7 finite numbers, got {pose7!r}")
        self.controller.command(self.data, pose7, 1.0 / DATA_FPS)
        mujoco.mj_step(self.model, self.data, nstep=self.substeps)

    # -- observation ---------------------------------------------------------------------------
    def render(self) -> dict[str, np.ndarray]:
        """Current uint8 (H, W, 3) image of every camera, in ``CAMERAS`` order."""
        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.model, self.height, self.width)
        frames = {}
        for cam in CAMERAS:
            self._renderer.update_scene(self.data, camera=cam)
            frames[cam] = self._renderer.render().copy()
        return frames

    def pose(self) -> np.ndarray:
        """Measured 7-D pose: xyz, euler xyz, gripper closure."""
        return np.concatenate([self.controller.ee_pose(self.data), [self.gripper_position()]]).astype(np.float32)

    def joint_position(self) -> np.ndarray:
        return self.controller.arm_qpos(self.data).astype(np.float32)

    def joint_targets(self) -> np.ndarray:
        return self.controller.joint_targets(self.data).astype(np.float32)

    def gripper_position(self) -> float:
        return self.controller.gripper_position(self.data)

    def object_position(self, slot: str) -> np.ndarray:
        return self.data.body(slot).xpos.copy()

    def object_yaw(self, slot: str) -> float:
        m = self.data.body(slot).xmat.reshape(3, 3)
        return float(np.arctan2(m[1, 0], m[0, 0]))

    def success(self) -> bool:
        """The current task's success predicate."""
        self._require_reset()
        return self.task.success(self, self._start_positions)

    @property
    def instruction(self) -> str:
        self._require_reset()
        return self.task.instruction

    def close(self) -> None:
        """Release the renderer (idempotent)."""
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter exit
        try:
            self.close()
        except Exception:
            pass
