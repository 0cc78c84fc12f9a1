"""MiniDROID simulator: control, tasks, experts, the Gymnasium env and its input validation."""
from __future__ import annotations

import numpy as np
import pytest

import persistworld_env  # noqa: F401  (registers envs, sets headless rendering)
import gymnasium as gym
from gymnasium.utils.env_checker import check_env

from persistworld_env.constants import CAMERAS
from persistworld_env.sim.controller import HOME_QPOS, site_to_pose, pose_to_site
from persistworld_env.sim.env import MiniDROIDSimEnv, default_pose_normalizer
from persistworld_env.sim.experts import ExpertNoise
from persistworld_env.sim.recording import action_chunks, record_episode
from persistworld_env.sim.simulator import MiniDROIDSimulator
from persistworld_env.spaces import InvalidActionError, validate_action

H, W = 24, 40


@pytest.fixture(scope="module")
def sim():
    s = MiniDROIDSimulator(H, W)
    yield s
    s.close()


@pytest.fixture()
def env():
    e = MiniDROIDSimEnv(H, W, render_mode="rgb_array")
    yield e
    e.close()


def test_pose_conversion_round_trip():
    pose = np.array([0.5, -0.1, 0.2, 0.1, -0.2, 0.7])
    pos, mat = pose_to_site(pose)
    np.testing.assert_allclose(site_to_pose(pos, mat), pose, atol=1e-9)
    # The canonical top-down grasp: the MuJoCo site's z axis (approach) points down.
    _, mat = pose_to_site(np.zeros(6))
    np.testing.assert_allclose(mat[:, 2], [0, 0, -1], atol=1e-9)


def test_ik_reaches_reachable_poses(sim):
    sim.reset(0)
    for target in ([0.55, 0.1, 0.15, 0.0, 0.0, 0.4], [0.4, -0.2, 0.3, 0.1, 0.0, -0.3]):
        q = sim.controller.solve_ik(np.array(target), HOME_QPOS)
        sim.controller.set_arm_qpos(sim.data, q)
        import mujoco
        mujoco.mj_forward(sim.model, sim.data)
        np.testing.assert_allclose(sim.controller.ee_pose(sim.data), target, atol=2e-3)


def test_pose_tracking_at_15hz(sim):
    sim.reset(1)
    target = sim.pose().astype(np.float64)
    target[:3] += [0.08, -0.05, -0.1]
    target[6] = 1.0
    for _ in range(20):  # 1.33 s
        sim.tick(target)
    pose = sim.pose()
    assert np.linalg.norm(pose[:3] - target[:3]) < 0.01
    assert pose[6] > 0.9  # gripper closed on nothing


def test_simulator_rejects_bad_commands(sim):
    sim.reset(2)
    with pytest.raises(ValueError, match="7 finite"):
        sim.tick(np.full(7, np.nan))
    with pytest.raises(ValueError, match="7 finite"):
        sim.tick(np.zeros(6))
    fresh = MiniDROIDSimulator(H, W)
    with pytest.raises(RuntimeError, match="reset"):
        fresh.tick(np.zeros(7))
    fresh.close()


@pytest.mark.parametrize("family", ["pick", "place", "push"])
def test_success_predicates_by_hand(sim, family):
    sim.reset(3, family)
    assert not sim.success()
    slot = sim.task.target
    qa = sim.model.joint(slot).qposadr[0]
    import mujoco
    if family == "pick":
        sim.data.qpos[qa + 2] += 0.1
        sim.data.qpos[sim.controller._finger_qadr] = 0.01  # fingers closed on it
    elif family == "place":
        bowl = sim.object_position("bowl")
        sim.data.qpos[qa:qa + 3] = [bowl[0], bowl[1], 0.03]
    else:
        sign = 1.0 if sim.task.direction == "left" else -1.0
        sim.data.qpos[qa + 1] += sign * 0.12
    mujoco.mj_forward(sim.model, sim.data)
    assert sim.success()
    assert sim.task.color in sim.instruction


def test_expert_noise_changes_outcome(sim):
    good = record_episode(sim, 5, "pick", noise=ExpertNoise(action_std=0.0, grasp_offset_std=0.0, speed=0.3))
    bad = record_episode(sim, 5, "pick", noise=ExpertNoise(action_std=0.0, grasp_offset_std=0.08, speed=0.3))
    assert good.success and not bad.success
    good.validate()
    assert good.frames[CAMERAS[0]].shape[1:] == (H, W, 3)


def test_recording_is_deterministic(sim):
    a = record_episode(sim, 11)
    b = record_episode(sim, 11)
    assert a.length == b.length and a.instruction == b.instruction
    np.testing.assert_array_equal(a.cartesian_position, b.cartesian_position)
    for cam in CAMERAS:
        np.testing.assert_array_equal(a.frames[cam], b.frames[cam])
    c = record_episode(sim, 12)
    assert c.instruction != a.instruction or not np.array_equal(c.frames[CAMERAS[0]][0], a.frames[CAMERAS[0]][0])


def test_action_chunks_follow_commands(sim):
    rec = record_episode(sim, 7)
    norm = default_pose_normalizer()
    chunks = action_chunks(rec, norm)
    assert all(c.shape == (4, 7) and c.dtype == np.float32 for c in chunks)
    np.testing.assert_allclose(chunks[0][0], norm.normalize(rec.action_pose[2]), atol=1e-6)
    np.testing.assert_allclose(chunks[1][0], norm.normalize(rec.action_pose[14]), atol=1e-6)
    assert len(chunks) == (rec.length - 1) // 12


def test_env_passes_gymnasium_checker():
    env = gym.make("MiniDROID-Sim-v0", height=H, width=W)
    try:
        check_env(env.unwrapped, skip_render_check=False)  # made through its spec, so render modes are checked too
    finally:
        env.close()


def test_registered_env_and_vector_env():
    env = gym.make("MiniDROID-Sim-v0", height=H, width=W)
    obs, info = env.reset(seed=0)
    assert set(obs) == set(CAMERAS) | {"pose"}
    assert obs[CAMERAS[0]].shape == (4, H, W, 3) and info["instruction"]
    env.close()
    venv = gym.make_vec("MiniDROID-Sim-v0", num_envs=2, vectorization_mode="sync", height=H, width=W)
    obs, _ = venv.reset(seed=[0, 1])
    assert obs["pose"].shape == (2, 7)
    venv.close()


def test_env_same_seed_same_rollout(env):
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-0.5, 0.5, (4, 7)).astype(np.float32) for _ in range(3)]
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=42)
        seq = [obs]
        for a in actions:
            seq.append(env.step(a)[0])
        runs.append(seq)
    for o1, o2 in zip(*runs):
        for key in o1:
            np.testing.assert_array_equal(o1[key], o2[key])
    frame = env.render()
    assert frame.shape == (H, 3 * W, 3) and frame.dtype == np.uint8


def test_env_reports_success_and_terminates():
    env = MiniDROIDSimEnv(H, W, task="pick")
    obs, info = env.reset(seed=0)
    sim = MiniDROIDSimulator(H, W)
    rec = record_episode(sim, info["episode_seed"], "pick", noise=ExpertNoise(0.0, 0.0, 0.3))
    sim.close()
    assert rec.success
    rewards = []
    for chunk in action_chunks(rec, env.normalizer):
        _, r, terminated, _, info = env.step(chunk)
        rewards.append(r)
        if terminated:
            break
    env.close()
    assert rewards[-1] == 1.0 and terminated and info["success"]


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 6), np.float32), "shape"),
    (np.zeros(28, np.float32), "shape"),
    (np.array([["a"] * 7] * 4), "dtype"),
    (np.full((4, 7), np.nan, np.float32), "NaN"),
    (np.full((4, 7), 3.0, np.float32), r"\[-1, 1\]"),
])
def test_bad_actions_are_rejected_and_state_kept(env, bad, match):
    obs, _ = env.reset(seed=3)
    pose_before = env.sim.pose().copy()
    with pytest.raises(InvalidActionError, match=match):
        env.step(bad)
    np.testing.assert_array_equal(env.sim.pose(), pose_before)
    obs2, *_ = env.step(np.tile(obs["pose"], (4, 1)))  # still usable
    assert obs2[CAMERAS[0]].shape == (4, H, W, 3)


def test_small_overshoot_is_clipped_and_int_actions_accepted():
    a = validate_action(np.full((4, 7), 1.02))
    assert a.max() == 1.0 and a.dtype == np.float32
    assert validate_action(np.zeros((4, 7), dtype=np.int64)).dtype == np.float32


def test_step_before_reset_and_unknown_options(env):
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match="unknown reset options"):
        env.reset(seed=0, options={"episode": 3})
    env.close()
    env.close()  # idempotent


def test_naming_the_drawn_family_gives_the_same_episode(sim):
    sim.reset(21)
    family, qpos = sim.task.family, sim.data.qpos.copy()
    sim.reset(21, family)
    np.testing.assert_array_equal(sim.data.qpos, qpos)


def test_min_ticks_extends_an_episode_without_changing_its_task_part(sim):
    from persistworld_env.sim.recording import run_expert

    short = run_expert(sim, 1, render=False)
    long = run_expert(sim, 1, render=False, min_ticks=150)
    n = len(short.state) - 9  # the short run ends with HOLD_TICKS of holding after the task
    assert len(short.state) < 150 <= len(long.state)
    np.testing.assert_array_equal(long.state[:n], short.state[:n])
    assert long.success == short.success
    # after the task the arm goes back to where it started and stays there
    np.testing.assert_allclose(long.state[-1, :3], long.state[0, :3], atol=0.02)
    np.testing.assert_allclose(long.state[-5:, :3], long.state[-1:, :3].repeat(5, 0), atol=3e-3)
    with pytest.raises(ValueError, match="min_ticks"):
        run_expert(sim, 1, render=False, min_ticks=10_000)


def test_sim_observed_frames_render_only_the_last_frames():
    whole = gym.make("MiniDROID-Sim-v0", height=24, width=40)
    latest = gym.make("MiniDROID-Sim-v0", height=24, width=40, observed_frames=1)
    assert latest.observation_space["wrist_left"].shape == (1, 24, 40, 3)
    check_env(latest.unwrapped)
    o4, _ = whole.reset(seed=2)
    o1, _ = latest.reset(seed=2)
    action = np.clip(np.tile(o4["pose"], (4, 1)) + 0.1, -1, 1)
    for _ in range(2):
        o4, r4, *_ = whole.step(action)
        o1, r1, *_ = latest.step(action)
        for cam in CAMERAS:
            np.testing.assert_array_equal(o1[cam], o4[cam][-1:])
        np.testing.assert_array_equal(o1["pose"], o4["pose"])
    whole.close()
    latest.close()
