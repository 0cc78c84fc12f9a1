"""End-effector pose control of the Franka: damped-least-squares IK to joint position targets.

A command is a 7-D absolute pose (xyz in m, extrinsic euler xyz in rad, gripper 0 open .. 1 closed),
the same convention as DROID's ``action.cartesian_position`` / ``action.gripper_position``.

MiniDROID reports the end-effector frame with its z axis pointing *up* out of the gripper (the hand's
approach axis flipped), so the canonical top-down grasp is euler ``(0, 0, yaw)``. This keeps recorded
roll away from the +-pi wrap that a downward z axis would put it on, which matters for percentile
normalisation and for learning.
"""
from __future__ import annotations

import mujoco
import numpy as np
from scipy.spatial.transform import Rotation

from persistworld_env.sim.assets import ARM_JOINTS, EE_SITE, FINGER_JOINTS, FINGER_OPEN

#: Rotation from the MuJoCo site frame to the reported end-effector frame (pi about x).
_SITE_TO_EE = Rotation.from_euler("x", np.pi)
#: Franka joint velocity limits (rad/s), joints 1..7.
JOINT_SPEED_LIMITS = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
#: A comfortable posture the IK null space pulls toward.
HOME_QPOS = np.array([0.0, -0.31, 0.0, -2.35, 0.0, 0.47, 0.0])  # EE at (0.45, 0, 0.35), euler 0
#: Workspace box the commanded end-effector position is clipped to (m).
WORKSPACE_LOW = np.array([0.20, -0.45, 0.02])
WORKSPACE_HIGH = np.array([0.80, 0.45, 0.60])


def pose_to_site(pose6: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """6-D pose (xyz + euler xyz) -> (site position, site rotation matrix)."""
    rot = Rotation.from_euler("xyz", pose6[3:6]) * _SITE_TO_EE.inv()
    return np.asarray(pose6[:3], dtype=np.float64), rot.as_matrix()


def site_to_pose(pos: np.ndarray, mat: np.ndarray) -> np.ndarray:
    """(site position, site rotation matrix) -> 6-D pose (xyz + euler xyz)."""
    euler = (Rotation.from_matrix(mat.reshape(3, 3)) * _SITE_TO_EE).as_euler("xyz")
    return np.concatenate([pos, euler]).astype(np.float64)


class PoseController:
    """Turns absolute end-effector pose commands into joint and finger position targets."""

    def __init__(self, model: mujoco.MjModel, iterations: int = 25, damping: float = 0.05,
                 null_gain: float = 0.05) -> None:
        self.model = model
        self.iterations = iterations
        self.damping = damping
        self.null_gain = null_gain
        self._scratch = mujoco.MjData(model)
        self._site = model.site(EE_SITE).id
        self._qadr = np.array([model.joint(j).qposadr[0] for j in ARM_JOINTS])
        self._dadr = np.array([model.joint(j).dofadr[0] for j in ARM_JOINTS])
        self._range = np.array([model.joint(j).range for j in ARM_JOINTS])
        self._arm_act = np.array([model.actuator(f"panda0_joint{i}").id for i in range(1, 8)])
        self._finger_qadr = np.array([model.joint(j).qposadr[0] for j in FINGER_JOINTS])
        self._finger_act = np.array([model.actuator(n).id for n in ("r_gripper_finger_joint", "l_gripper_finger_joint")])

    # -- state ------------------------------------------------------------------------------
    def arm_qpos(self, data: mujoco.MjData) -> np.ndarray:
        return data.qpos[self._qadr].copy()

    def ee_pose(self, data: mujoco.MjData) -> np.ndarray:
        """Measured 6-D end-effector pose."""
        return site_to_pose(data.site_xpos[self._site], data.site_xmat[self._site])

    def gripper_position(self, data: mujoco.MjData) -> float:
        """Measured gripper closure in [0, 1] (0 open)."""
        opening = float(np.mean(data.qpos[self._finger_qadr]))
        return float(np.clip(1.0 - opening / FINGER_OPEN, 0.0, 1.0))

    def set_arm_qpos(self, data: mujoco.MjData, q: np.ndarray, gripper: float = 0.0) -> None:
        """Teleport the arm (used at reset) and hold it there."""
        data.qpos[self._qadr] = q
        data.qvel[self._dadr] = 0.0
        data.qpos[self._finger_qadr] = FINGER_OPEN * (1.0 - gripper)
        data.ctrl[self._arm_act] = q
        data.ctrl[self._finger_act] = FINGER_OPEN * (1.0 - gripper)

    # -- IK -----------------------------------------------------------------------------------
    def solve_ik(self, pose6: np.ndarray, q_init: np.ndarray) -> np.ndarray:
        """Joint angles reaching ``pose6`` (damped least squares, null space toward ``HOME_QPOS``)."""
        target_pos, target_mat = pose_to_site(pose6)
        target_quat = np.empty(4)
        mujoco.mju_mat2Quat(target_quat, target_mat.ravel())
        d = self._scratch
        q = np.clip(q_init.astype(np.float64), self._range[:, 0], self._range[:, 1])
        jacp, jacr = np.zeros((3, self.model.nv)), np.zeros((3, self.model.nv))
        cur_quat, err_rot = np.empty(4), np.empty(3)
        lam2 = self.damping**2
        for _ in range(self.iterations):
            d.qpos[self._qadr] = q
            mujoco.mj_kinematics(self.model, d)
            mujoco.mj_comPos(self.model, d)
            err_pos = target_pos - d.site_xpos[self._site]
            mujoco.mju_mat2Quat(cur_quat, d.site_xmat[self._site])
            mujoco.mju_subQuat(err_rot, target_quat, cur_quat)  # in the current site frame
            err_rot_world = d.site_xmat[self._site].reshape(3, 3) @ err_rot
            err = np.concatenate([err_pos, 0.5 * err_rot_world])
            if np.linalg.norm(err_pos) < 1e-4 and np.linalg.norm(err_rot) < 1e-3:
                break
            mujoco.mj_jacSite(self.model, d, jacp, jacr, self._site)
            jac = np.vstack([jacp[:, self._dadr], 0.5 * jacr[:, self._dadr]])
            jjt = jac @ jac.T + lam2 * np.eye(6)
            dq = jac.T @ np.linalg.solve(jjt, err)
            null = np.eye(7) - jac.T @ np.linalg.solve(jjt, jac)
            dq += null @ (self.null_gain * (HOME_QPOS - q))
            step = np.abs(dq).max()
            if step > 0.2:
                dq *= 0.2 / step
            q = np.clip(q + dq, self._range[:, 0], self._range[:, 1])
        return q

    def command(self, data: mujoco.MjData, pose7: np.ndarray, dt: float) -> None:
        """Set actuator targets for one control tick of length ``dt`` toward the absolute ``pose7``.

        The position is clipped to the workspace and the joint targets move at most at the Franka's
        joint speed limits.
        """
        pose6 = np.array(pose7[:6], dtype=np.float64)
        pose6[:3] = np.clip(pose6[:3], WORKSPACE_LOW, WORKSPACE_HIGH)
        q_now = data.ctrl[self._arm_act].copy()
        q_goal = self.solve_ik(pose6, q_now)
        max_step = JOINT_SPEED_LIMITS * dt
        data.ctrl[self._arm_act] = q_now + np.clip(q_goal - q_now, -max_step, max_step)
        data.ctrl[self._finger_act] = FINGER_OPEN * (1.0 - float(np.clip(pose7[6], 0.0, 1.0)))

    def joint_targets(self, data: mujoco.MjData) -> np.ndarray:
        """The joint position targets currently commanded (DROID's ``action.joint_position``)."""
        return data.ctrl[self._arm_act].copy()
