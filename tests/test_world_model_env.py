"""PersistWorld-DROID-v0 on a tiny model: Gymnasium conformance, determinism, starts, drift info, bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import gymnasium as gym
from gymnasium.utils.env_checker import check_env

import persistworld_env  # noqa: F401
from persistworld_env.constants import CAMERAS
from persistworld_env.models.autoencoder import ModelLoadError
from persistworld_env.models.world_model import WorldModel, auto_dtype, resolve_dtype
from persistworld_env.sim.generation import generate_dataset
from persistworld_env.spaces import InvalidActionError
from persistworld_env.world_model_env import PersistWorldEnv

H, W = 24, 40


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # 24x40 = H x W


@pytest.fixture()
def env(model_dir):
    e = PersistWorldEnv(model=str(model_dir), render_mode="rgb_array", sampling_steps=2)
    yield e
    e.close()


def test_check_env(model_dir):
    env = gym.make("PersistWorld-DROID-v0", model=str(model_dir), sampling_steps=2)
    try:
        check_env(env.unwrapped, skip_render_check=False)  # made through its spec, so render modes are checked too
    finally:
        env.close()


def test_gym_make_and_spaces_match_the_simulator(model_dir):
    env = gym.make("PersistWorld-DROID-v0", model=str(model_dir), sampling_steps=2)
    sim = gym.make("MiniDROID-Sim-v0", height=H, width=W)
    assert env.observation_space == sim.observation_space and env.action_space == sim.action_space
    obs, info = env.reset(seed=0)
    assert info["source"] == "sim" and info["instruction"]
    env.close()
    sim.close()


def test_same_seed_same_observations(env):
    actions = [np.random.default_rng(i).uniform(-1, 1, (4, 7)).astype(np.float32) for i in range(2)]
    runs = []
    for _ in range(2):
        obs, _ = env.reset(seed=5)
        runs.append([obs] + [env.step(a)[0] for a in actions])
    for o1, o2 in zip(*runs):
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])


def test_ground_truth_fidelity_and_user_start(model_dir):
    env = PersistWorldEnv(model=str(model_dir), sampling_steps=2, ground_truth="sim", timing_info=True)
    obs, info = env.reset()  # no seed: the simulator alongside must still start from the same scene
    np.testing.assert_array_equal(env.ground_truth._clip[CAMERAS[2]], obs[CAMERAS[2]])
    _, _, _, _, info = env.step(np.tile(obs["pose"], (4, 1)))
    assert set(info["fidelity"]["psnr"]) == set(CAMERAS) and info["step_seconds"] > 0
    assert info["ground_truth_success"] == env.ground_truth.sim.success()  # the simulator's verdict, same step
    frames = np.stack([obs[c][0] for c in CAMERAS])
    pose = env.model.normalizer.denormalize(obs["pose"])
    env2 = PersistWorldEnv(model=str(model_dir), sampling_steps=2)
    obs2, info2 = env2.reset(seed=0, options={"frames": frames, "pose": pose, "instruction": "pick up the red cube"})
    assert info2["source"] == "user"
    np.testing.assert_array_equal(obs2[CAMERAS[0]][0], frames[0])
    with pytest.raises(ValueError, match="start frames"):
        env2.reset(options={"frames": frames[:2], "pose": pose})
    env.close()
    env2.close()


def test_dataset_starts(model_dir, tmp_path):
    root = tmp_path / "ds"
    generate_dataset(root, 1, seed=0, workers=1, height=H, width=W, progress=False)
    env = PersistWorldEnv(model=str(model_dir), sampling_steps=2, initial_state=str(root))
    obs, info = env.reset(options={"episode": 0})
    assert info["source"] == "dataset" and info["episode"] == 0
    with pytest.raises(ValueError, match="not in"):
        env.reset(options={"episode": 5})
    _, first = env.reset(seed=3)  # no episode given (as at an autoreset): one drawn from the env's RNG
    assert first["source"] == "dataset" and env.reset(seed=3)[1]["episode"] == first["episode"] == 0
    env.close()


@pytest.mark.parametrize("bad, match", [
    (np.zeros((4, 6), np.float32), "shape"), (np.full((4, 7), np.nan, np.float32), "NaN"),
    (np.full((4, 7), 2.0, np.float32), r"\[-1, 1\]"), (np.array([["x"] * 7] * 4), "dtype"),
])
def test_bad_actions_leave_state_unchanged(env, bad, match):
    obs, _ = env.reset(seed=2)
    with pytest.raises(InvalidActionError, match=match):
        env.step(bad)
    assert env.engine._histories[0].length == 1
    np.testing.assert_array_equal(env._observation()[CAMERAS[0]], obs[CAMERAS[0]])


def test_step_before_reset_unknown_options_and_close(env):
    with pytest.raises(RuntimeError, match="before reset"):
        env.step(np.zeros((4, 7), np.float32))
    with pytest.raises(ValueError, match="'colour': unknown option"):
        env.reset(options={"colour": "red"})
    with pytest.raises(ValueError, match="dataset"):
        env.reset(options={"episode": 0})
    env.close()
    env.close()


def test_missing_or_corrupt_model(tmp_path):
    with pytest.raises(ModelLoadError):
        PersistWorldEnv(model=str(tmp_path / "absent"))


def test_half_precision_env_and_dtype_of_a_loaded_model(model_dir):
    env = gym.make("PersistWorld-DROID-v0", model=str(model_dir), sampling_steps=2, dtype="bfloat16")
    assert env.unwrapped.model.denoiser.dtype == torch.bfloat16
    env.reset(seed=0)
    obs, *_ = env.step(np.zeros((4, 7), np.float32))
    assert obs[CAMERAS[0]].dtype == np.uint8 and env.observation_space.contains(obs)
    loaded = WorldModel.from_pretrained(model_dir)
    with pytest.raises(ValueError, match="convert it with model.to"):
        PersistWorldEnv(model=loaded, dtype="float16")


def test_auto_precision_follows_the_hardware_and_leaves_a_loaded_model_as_it_is(model_dir, monkeypatch):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    for amx, expected in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda amx=amx: amx)
        assert auto_dtype("cpu") == expected and resolve_dtype("auto") == expected and resolve_dtype("AUTO") == expected
        env = PersistWorldEnv(model=str(model_dir), sampling_steps=2)  # the default is "auto"
        assert env.model.denoiser.dtype == expected
        vec = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=2)
        assert vec.model.denoiser.dtype == expected
        assert PersistWorldEnv(model=str(model_dir), sampling_steps=2, dtype="float32").model.denoiser.dtype == \
            torch.float32
    assert auto_dtype("meta") == torch.float32
    loaded = WorldModel.from_pretrained(model_dir, dtype="bfloat16")
    assert PersistWorldEnv(model=loaded).model is loaded  # "auto" keeps a loaded model's precision
    assert PersistWorldEnv(model=loaded, dtype="AUTO").model is loaded
    # CUDA: bfloat16 tensor cores from compute capability 8; older cards only emulate bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for capability, expected in (((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None, c=capability: c)
        assert auto_dtype("cuda") == expected and auto_dtype("cuda:1") == expected


def test_vector_env_batches_resets_and_autoresets(model_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = gym.make_vec("PersistWorld-DROID-v0", num_envs=3, vectorization_mode="vector_entry_point",
                        model=str(model_dir), sampling_steps=2, max_episode_steps=2,
                        reward=lambda obs, info: float(obs["pose"][0]))  # a user reward sees one sub-env
    assert isinstance(venv, PersistWorldVectorEnv)
    obs, info = venv.reset(seed=[0, 1, 2])
    assert obs[CAMERAS[0]].shape == (3, 4, H, W, 3) and obs["pose"].shape == (3, 7)
    assert info["_instruction"].all()
    actions = np.tile(obs["pose"][:, None], (1, 4, 1))
    obs, rew, term, trunc, info = venv.step(actions)
    assert not trunc.any()
    np.testing.assert_allclose(rew, obs["pose"][:, 0], rtol=1e-6)
    obs, rew, term, trunc, info = venv.step(actions)
    assert trunc.all()  # time limit reached
    obs, rew, term, trunc, info = venv.step(actions)  # NEXT_STEP autoreset: fresh episodes
    assert not trunc.any() and (rew == 0).all() and (info["source"] == "sim").all()
    np.testing.assert_array_equal(obs[CAMERAS[0]][0, 0], obs[CAMERAS[0]][0, 3])  # a start clip is static
    # the same sub-env seeds give the same first observations as the single env
    single = PersistWorldEnv(model=str(model_dir), sampling_steps=2)
    o1, _ = single.reset(seed=1)
    v_obs, _ = venv.reset(seed=[0, 1, 2])
    np.testing.assert_array_equal(o1[CAMERAS[0]], v_obs[CAMERAS[0]][1])
    with pytest.raises(InvalidActionError):
        venv.step(np.full((3, 4, 7), np.nan, np.float32))
    with pytest.raises(ValueError, match="num_envs"):
        venv.step(np.zeros((2, 4, 7), np.float32))
    venv.close()
    single.close()


def test_sb3_wrappers_and_vecenv(model_dir):
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from persistworld_env.sb3 import SB3VecEnv
    from persistworld_env.wrappers import DeltaPoseAction, LatestFrameObservation

    env = DeltaPoseAction(LatestFrameObservation(PersistWorldEnv(model=str(model_dir), sampling_steps=2)))
    sb3_check_env(env, warn=True)
    obs, _ = env.reset(seed=0)
    assert obs[CAMERAS[0]].shape == (3, H, W) and obs[CAMERAS[0]].dtype == np.uint8
    pose0 = env._pose.copy()
    zero = np.zeros((4, 7), np.float32)
    zero[:, 6] = -1.0  # keep the gripper open
    target = env.action(zero)  # no motion: stay at the current pose (as far as the pose bounds allow)
    np.testing.assert_allclose(env.normalizer.denormalize(target[-1])[:6],
                               np.clip(pose0, env.normalizer.low, env.normalizer.high)[:6], atol=1e-5)
    env.close()

    venv = SB3VecEnv(num_envs=2, model=str(model_dir), sampling_steps=2, max_episode_steps=1)
    assert venv.venv.observed_frames == 1  # the policy sees the latest frame: only that one is decoded
    obs = venv.reset()
    assert obs[CAMERAS[0]].shape == (2, 3, H, W)
    venv.step_async(np.zeros((2, 4, 7), np.float32))
    obs, rewards, dones, infos = venv.step_wait()
    assert dones.all() and "terminal_observation" in infos[0] and infos[0]["TimeLimit.truncated"]
    raw_obs, _ = venv.venv.reset(seed=0)
    _, _, _, trunc, info = venv.venv.step(np.tile(raw_obs["pose"][:, None], (1, 4, 1)))
    assert trunc.all() and info["_final_info"].all() and info["final_info"]["_instruction"].all()
    assert isinstance(info["final_info"]["instruction"][0], str) and info["_final_obs"].all()
    assert infos[0]["terminal_observation"][CAMERAS[0]].shape == (3, H, W)
    venv.close()


def test_goal_reward(model_dir):
    env = PersistWorldEnv(model=str(model_dir), sampling_steps=2, reward="goal")
    with pytest.raises(ValueError, match="goal"):
        env.reset(seed=0)
    goal = np.zeros((3, H, W, 3), np.uint8)
    obs, _ = env.reset(seed=0, options={"goal": goal})
    obs, reward, *_ = env.step(np.tile(obs["pose"], (4, 1)))
    expected = -np.mean([np.abs(obs[c][-1].astype(np.float32)).mean() / 255 for c in CAMERAS])
    assert reward == pytest.approx(expected, rel=1e-5) and -1 <= reward <= 0
    with pytest.raises(ValueError, match="goal images"):
        env.reset(options={"goal": goal[:, :5]})
    with pytest.raises(ValueError, match="reward must be"):
        PersistWorldEnv(model=str(model_dir), reward="win")
    env.close()


def test_uncertainty_from_alternative_samples_leaves_the_rollout_unchanged(model_dir):
    plain = PersistWorldEnv(model=str(model_dir), sampling_steps=2)
    spread = PersistWorldEnv(model=str(model_dir), sampling_steps=2, uncertainty_samples=2)
    obs_a, _ = plain.reset(seed=4)
    obs_b, _ = spread.reset(seed=4)
    action = np.tile(obs_a["pose"], (4, 1))
    obs_a, *_ = plain.step(action)
    obs_b, _, _, _, info = spread.step(action)
    for cam in CAMERAS:  # the rollout itself is unaffected by the extra samples
        np.testing.assert_array_equal(obs_a[cam], obs_b[cam])
        assert 0.0 < info["uncertainty"][cam] < 1.0
    with pytest.raises(ValueError, match="uncertainty_samples"):
        PersistWorldEnv(model=str(model_dir), uncertainty_samples=-1)
    plain.close()
    spread.close()


def test_step_info_carries_start_facts_and_the_raw_pose(model_dir):
    env = PersistWorldEnv(model=str(model_dir), sampling_steps=2)
    obs, start = env.reset(seed=4, options={"task": "pick"})
    assert start["task"] == "pick" and start["target_position"].shape == (3,)
    action = np.tile(obs["pose"], (4, 1))
    _, _, _, _, info = env.step(action)
    assert info["task"] == "pick" and info["episode_seed"] == start["episode_seed"]
    np.testing.assert_array_equal(info["target_position"], start["target_position"])
    np.testing.assert_allclose(info["raw_pose"], env.model.normalizer.denormalize(action[-1]), atol=1e-5)
    env.close()


def test_gym_make_runs_the_embedded_default_model():
    env = gym.make("PersistWorld-DROID-v0", reward="success")  # no model= : the model shipped in the package
    obs, info = env.reset(seed=0)
    assert obs["exterior_1_left"].shape == (4, 48, 80, 3) and info["source"] == "sim"
    obs, reward, terminated, truncated, info = env.step(np.tile(obs["pose"], (4, 1)))
    assert obs["wrist_left"].dtype == np.uint8 and 0.0 <= info["success_probability"] <= 1.0
    env.close()


def test_observed_frames_are_the_last_frames_of_each_step(model_dir):
    """``observed_frames=k``: the last k frames of what a 4-frame env observes, in the single env, the vector env
    and the simulator alike (so the spaces still match); with ground truth the fidelity compares those frames."""
    from persistworld_env.vector_env import PersistWorldVectorEnv

    whole = PersistWorldEnv(model=str(model_dir), sampling_steps=2)
    latest = gym.make("PersistWorld-DROID-v0", model=str(model_dir), sampling_steps=2, observed_frames=1)
    sim = gym.make("MiniDROID-Sim-v0", height=H, width=W, observed_frames=1)
    assert latest.observation_space == sim.observation_space
    assert latest.observation_space[CAMERAS[0]].shape == (1, H, W, 3)
    check_env(latest.unwrapped)
    def same_images(ours, theirs):  # up to float rounding: decoder calls of other sizes may round a level apart
        assert ours.shape == theirs.shape and np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1

    o4, _ = whole.reset(seed=3)
    o1, _ = latest.reset(seed=3)
    action = np.tile(o4["pose"], (4, 1))
    for _ in range(2):
        for cam in CAMERAS:
            same_images(o1[cam], o4[cam][-1:])
        o4, *_ = whole.step(action)
        o1, *_ = latest.step(action)
    truth = PersistWorldEnv(model=str(model_dir), sampling_steps=2, ground_truth="sim", observed_frames=2)
    obs, _ = truth.reset(seed=3)
    _, _, _, _, info = truth.step(action)
    assert truth.ground_truth_clip.shape == (2, 3, H, W, 3) and set(info["fidelity"]["ssim"]) == set(CAMERAS)
    venv4 = PersistWorldVectorEnv(num_envs=2, model=str(model_dir), sampling_steps=2)
    venv2 = PersistWorldVectorEnv(num_envs=2, model=str(model_dir), sampling_steps=2, observed_frames=2)
    assert venv2.observation_space[CAMERAS[0]].shape == (2, 2, H, W, 3)
    v4, _ = venv4.reset(seed=[5, 6])
    v2, _ = venv2.reset(seed=[5, 6])
    actions = np.tile(v4["pose"][:, None], (1, 4, 1))
    for _ in range(2):
        v4, *_ = venv4.step(actions)
        v2, *_ = venv2.step(actions)
        for cam in CAMERAS:
            same_images(v2[cam], v4[cam][:, -2:])
    for bad in (0, 5, 1.0, True):
        with pytest.raises(ValueError, match="observed_frames"):
            PersistWorldEnv(model=str(model_dir), observed_frames=bad)
    for env in (whole, latest, sim, truth, venv4, venv2):
        env.close()


def test_reset_options_are_checked_for_the_start_source(model_dir, sim_dataset):
    """One helper for both envs: it names each option this start source does not use, and why."""
    from persistworld_env.vector_env import PersistWorldVectorEnv

    env = PersistWorldEnv(model=str(model_dir), sampling_steps=1)
    with pytest.raises(ValueError, match="'instruction': only used with your own start") as error:
        env.reset(seed=0, options={"instruction": "pick up the red cube"})
    assert "'episode'" not in str(error.value)  # the valid options listed are this start source's
    data = PersistWorldEnv(model=str(model_dir), sampling_steps=1, initial_state=str(sim_dataset))
    with pytest.raises(ValueError, match="'task': only used with simulator starts") as error:
        data.reset(seed=0, options={"episode": 0, "task": "pick"})
    assert "Valid: 'episode'" in str(error.value)
    venv = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=1)
    with pytest.raises(ValueError, match="'goal': only used with reward='goal'"):
        venv.reset(seed=0, options={"goal": np.zeros((3, H, W, 3), np.uint8)})
    for e in (env, data, venv):
        e.close()


def test_rejected_single_env_reset_keeps_the_episode_and_its_goal(model_dir):
    env = PersistWorldEnv(model=str(model_dir), sampling_steps=1, reward="goal")
    goal = np.zeros((3, H, W, 3), np.uint8)
    env.reset(seed=0, options={"goal": goal})
    with pytest.raises(ValueError, match="'bogus'"):
        env.reset(options={"goal": np.full_like(goal, 255), "bogus": 1})
    goal[:] = 9  # the env keeps its own copy of the user's images
    *_, info = env.step(np.zeros((4, 7), np.float32))
    assert info["goal"].max() == 0
    info["goal"][:] = 7  # and hands out copies
    assert env.step(np.zeros((4, 7), np.float32))[-1]["goal"].max() == 0
    env.close()


def test_a_rejected_single_env_reset_leaves_its_rng_as_it_was(model_dir):
    """After a refused reset (with or without a seed), the next reset starts the episode it would have started."""
    def next_episode_seed(refused: dict | None) -> int:
        env = PersistWorldEnv(model=str(model_dir), sampling_steps=1, reward="goal")
        goal = np.zeros((3, H, W, 3), np.uint8)
        env.reset(seed=3, options={"goal": goal})
        if refused is not None:
            with pytest.raises(ValueError):
                env.reset(**refused)
        seed = env.reset(options={"goal": goal})[1]["episode_seed"]
        env.close()
        return seed

    undisturbed = next_episode_seed(None)
    bad_frames = {"frames": np.zeros((3, H, W, 3), np.float32), "pose": np.zeros(7, np.float32),
                  "goal": np.zeros((3, H, W, 3), np.uint8)}
    for refused in ({}, {"seed": 99, "options": {"bogus": 1}}, {"options": bad_frames}):
        assert next_episode_seed(refused) == undisturbed, refused


@pytest.mark.parametrize("autoreset", ["next_step", "same_step"])
def test_vector_autoreset_of_dataset_starts_draws_an_episode(model_dir, sim_dataset, autoreset):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = PersistWorldVectorEnv(1, model=str(model_dir), sampling_steps=1, initial_state=str(sim_dataset),
                                 max_episode_steps=1, autoreset=autoreset)
    venv.reset(seed=0, options={"episode": 1})
    for _ in range(2):  # next_step: the second step resets the sub-env
        _, _, _, trunc, info = venv.step(np.zeros((1, 4, 7), np.float32))
        assert info["source"][0] == "dataset" and info["episode"][0] in (0, 1, 2)
    assert trunc.all() == (autoreset == "same_step")
    venv.close()


def test_vector_autoreset_resolves_starts_before_stepping(model_dir, monkeypatch):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=1, max_episode_steps=1)
    venv.reset(seed=0)
    venv.step(np.zeros((2, 4, 7), np.float32))
    elapsed, history = venv._elapsed.copy(), venv.engine._histories[0].length

    def broken(*args, **kwargs):
        raise OSError("start unavailable")

    monkeypatch.setattr(venv.starts, "get", broken)
    with pytest.raises(OSError):
        venv.step(np.zeros((2, 4, 7), np.float32))
    np.testing.assert_array_equal(venv._elapsed, elapsed)  # nothing half-stepped
    assert venv.engine._histories[0].length == history
    venv.close()


def test_vector_reset_continues_rngs_and_a_rejected_reset_changes_nothing(model_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    def episode_seeds(reject: bool) -> list[int]:
        venv = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=1)
        venv.reset(seed=0)
        if reject:
            with pytest.raises(ValueError, match="unknown option"):
                venv.reset(seed=7, options={"bogus": 1})
        seeds = venv.reset()[1]["episode_seed"].tolist()  # no seed: each sub-env's RNG goes on
        venv.close()
        return seeds

    assert episode_seeds(False) == episode_seeds(False) == episode_seeds(True)
    fresh = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=1)
    with pytest.raises(ValueError, match="unknown option"):
        fresh.reset(options={"bogus": 1})
    assert fresh.engine.batch_size == 0
    with pytest.raises(RuntimeError, match="before reset"):
        fresh.step(np.zeros((2, 4, 7), np.float32))
    a, _ = fresh.reset(seed=np.int64(3))  # a NumPy integer seeds like an int
    b, _ = fresh.reset(seed=3)
    np.testing.assert_array_equal(a[CAMERAS[0]], b[CAMERAS[0]])
    fresh.close()


def test_vector_next_step_autoreset_ignores_the_actions_of_resetting_sub_envs(model_dir):
    from persistworld_env.vector_env import PersistWorldVectorEnv

    venv = PersistWorldVectorEnv(2, model=str(model_dir), sampling_steps=1, max_episode_steps=1)
    venv.reset(seed=0)
    assert venv.step(np.zeros((2, 4, 7), np.float32))[3].all()
    _, reward, _, trunc, info = venv.step(np.full((2, 4, 7), np.nan, np.float32))  # both only reset
    assert not trunc.any() and (reward == 0).all() and info["_source"].all()
    venv.close()


def test_vector_infos_have_the_layout_of_the_sync_vector_env(model_dir):
    from gymnasium.vector import AutoresetMode

    def layout(info: dict) -> dict:
        return {k: layout(v) if isinstance(v, dict) else (v.dtype, v.shape) for k, v in info.items()}

    kwargs = dict(num_envs=2, model=str(model_dir), sampling_steps=1, max_episode_steps=1)
    ours = gym.make_vec("PersistWorld-DROID-v0", vectorization_mode="vector_entry_point", autoreset="same_step",
                        **kwargs)
    sync = gym.make_vec("PersistWorld-DROID-v0", vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": AutoresetMode.SAME_STEP}, **kwargs)
    (_, ours_reset), (_, sync_reset) = ours.reset(seed=0), sync.reset(seed=0)
    assert layout(ours_reset) == layout(sync_reset) and ours_reset["raw_pose"].shape == (2, 7)
    actions = np.zeros((2, 4, 7), np.float32)
    ours_step, sync_step = ours.step(actions)[-1], sync.step(actions)[-1]
    assert layout(ours_step) == layout(sync_step)  # final_obs, final_info (nested) and the reset infos
    assert ours_step["final_info"]["raw_pose"].dtype == np.float32 and ours_step["final_obs"][0]["pose"].shape == (7,)
    np.testing.assert_array_equal(ours_step["episode_seed"], sync_step["episode_seed"])
    ours.close()
    sync.close()


def test_sb3_vecenv_passes_reset_options_and_infos_like_dummy_vec_env(model_dir):
    from persistworld_env.sb3 import SB3VecEnv

    venv = SB3VecEnv(num_envs=2, model=str(model_dir), sampling_steps=1, max_episode_steps=2)
    venv.seed(0)
    venv.set_options([{"task": "push"}, {"task": "pick"}])
    venv.reset()
    assert [info["task"] for info in venv.reset_infos] == ["push", "pick"]
    assert venv._options == [{}, {}] and venv._seeds == [None, None]  # used once
    _, _, dones, infos = venv.step(np.zeros((2, 4, 7), np.float32))
    assert not dones.any() and [info["task"] for info in infos] == ["push", "pick"]
    assert infos[0]["instruction"] and infos[0]["raw_pose"].shape == (7,) and not infos[0]["TimeLimit.truncated"]
    first_seeds = [info["episode_seed"] for info in venv.reset_infos]
    assert all(type(seed) is int for seed in first_seeds)  # Python scalars, as DummyVecEnv passes them on
    _, _, dones, infos = venv.step(np.zeros((2, 4, 7), np.float32))
    assert dones.all() and infos[1]["task"] == "pick" and infos[1]["TimeLimit.truncated"]  # the finished episode's
    assert infos[1]["terminal_observation"][CAMERAS[0]].shape == (3, H, W)
    assert [info["episode_seed"] for info in venv.reset_infos] != first_seeds  # the new episodes'
    venv.close()


def test_delta_pose_action_starts_from_the_raw_pose_outside_the_bounds():
    from persistworld_env.sim.env import MiniDROIDSimEnv
    from persistworld_env.wrappers import DeltaPoseAction

    env = DeltaPoseAction(MiniDROIDSimEnv(H, W))
    obs, info = env.reset(seed=2)  # this scene's start height lies above the pose bounds
    assert obs["pose"][2] == 1.0 and info["raw_pose"][2] > env.normalizer.high[2]
    down = np.zeros((4, 7), np.float32)
    down[0, 2], down[:, 6] = -1.0, -1.0
    target = env.normalizer.denormalize(env.action(down)[0].astype(np.float64))
    assert target[2] == pytest.approx(info["raw_pose"][2] - env.max_delta[2], abs=1e-5)
    env.close()
