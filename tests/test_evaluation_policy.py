"""Policy evaluation: success bookkeeping, the policy zoo, and ``persistworld policy-eval`` on tiny models."""
from __future__ import annotations

import copy
import json
import shutil

import numpy as np
import pytest
import torch

from persistworld_env.evaluation.policies import (
    BCModel, BCPolicy, PolicySpec, bc_training_samples, expert_spec, random_spec, run_policy, step_success,
    train_bc_policy,
)
from persistworld_env.evaluation.policy_agreement import (
    PolicyEvalSchemaError, build_policy_eval_document, load_policy_eval, mmrv, pearson_r, validate_policy_eval,
)
from persistworld_env.sim.env import default_pose_normalizer
from persistworld_env.spaces import POSE_KEY
from training.policy_eval import model_env, run_policy_eval, sim_env

from evaluation_helpers import H, W, tiny_dataset, tiny_world_model


# -- success bookkeeping ------------------------------------------------------------------------------
def test_step_success_reads_info_then_terminated():
    term = np.array([True, False, False])
    assert step_success({}, term).tolist() == [True, False, False]
    info = {"success": np.array([False, True, False]), "_success": np.array([True, True, False])}
    assert step_success(info, term).tolist() == [False, True, False]  # reported verdicts win over terminated
    info = {"success": np.array([None, True, None], dtype=object), "_success": np.array([False, True, False])}
    assert step_success(info, term).tolist() == [True, True, False]


class _FakeVectorEnv:
    """Two sub-envs; the episode of seed s succeeds at step ``success_at[s]`` (None: never)."""

    num_envs = 2

    def __init__(self, success_at: dict[int, int | None]) -> None:
        self.success_at, self.t, self.seeds = success_at, 0, []

    def _obs(self):
        return {POSE_KEY: np.zeros((2, 7), np.float32)}

    def reset(self, seed):
        self.t, self.seeds = 0, list(seed)
        return self._obs(), {"episode_seed": np.array(seed), "_episode_seed": np.ones(2, bool)}

    def step(self, actions):
        assert actions.shape == (2, 4, 7)
        self.t += 1
        success = np.array([self.success_at[s] == self.t for s in self.seeds])
        return self._obs(), success.astype(float), success, np.zeros(2, bool), {"success": success,
                                                                              "_success": np.ones(2, bool)}


class _CountingPolicy:
    """Records (episode seed, number of act calls) per episode."""

    calls: list = []

    def reset(self, info, normalizer):
        self.record = [int(info["episode_seed"]), 0]
        _CountingPolicy.calls.append(self.record)

    def act(self, obs):
        self.record[1] += 1
        return np.zeros((4, 7), np.float32)


def test_run_policy_counts_success_within_the_horizon_and_stops_acting():
    env = _FakeVectorEnv({10: 2, 11: None, 12: 5, 13: 1, 14: 3})
    spec = PolicySpec("counting", "test", {}, _CountingPolicy)
    _CountingPolicy.calls = []
    results = run_policy(env, spec, [10, 11, 12, 13, 14], max_steps=4, normalizer=default_pose_normalizer(),
                         progress=False)
    assert results == [True, False, False, True, True]  # seed 12 succeeds too late (step 5 > 4)
    acts: dict[int, int] = {}
    for seed, n in _CountingPolicy.calls:  # 5 seeds in 3 batches of 2: the last one pads with seed 14 again
        acts.setdefault(seed, n)
    assert acts[10] == 2 and acts[11] == 4 and acts[12] == 4 and acts[13] == 1 and acts[14] == 3


# -- policy_eval.json ---------------------------------------------------------------------------------
def test_policy_eval_document_and_validator():
    rng = np.random.default_rng(0)
    names = ["a", "b", "c"]
    real = {p: (rng.random(8) < q).tolist() for p, q in zip(names, (0.9, 0.5, 0.1))}
    model = {p: (rng.random(8) < q).tolist() for p, q in zip(names, (0.8, 0.3, 0.2))}
    doc = build_policy_eval_document([{"name": p, "kind": "test", "config": {}} for p in names], list(range(8)), real,
                                     {"m": {"path": "/m", "success": model}}, max_steps=5, bootstrap=30)
    doc = json.loads(json.dumps(doc))
    validate_policy_eval(doc)
    rates = lambda d: [np.mean(d[p]) for p in names]  # noqa: E731
    assert doc["models"]["m"]["mmrv"]["value"] == pytest.approx(mmrv(rates(model), rates(real)))
    assert doc["models"]["m"]["pearson"]["value"] == pytest.approx(pearson_r(rates(model), rates(real)))

    def broken(edit, match):
        bad = copy.deepcopy(doc)
        edit(bad)
        with pytest.raises(PolicyEvalSchemaError, match=match):
            validate_policy_eval(bad)

    broken(lambda d: d["real"]["success"]["a"].pop(), r"real\.success\.a")
    broken(lambda d: d["models"]["m"]["rate"].update(b=0.99), r"models\.m\.rate\.b")
    broken(lambda d: d["models"]["m"]["mmrv"].update(value=-0.5), r"models\.m\.mmrv\.value")
    broken(lambda d: d["policies"].pop(), r"policies")
    broken(lambda d: d.pop("seeds"), r"seeds: missing")


# -- the zoo and the command --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("policy_eval")
    tiny_dataset(root / "ds")
    tiny_world_model(root / "wm")
    return root


def test_behaviour_cloning_learns_and_round_trips(setup, tmp_path):
    samples = bc_training_samples(setup / "ds", progress=False)
    assert samples.episodes == 3 and samples.frames.shape[1:] == (3, 24, 40, 3) and samples.target.shape[1:] == (4, 7)
    untrained = train_bc_policy(setup / "ds", 0, samples=samples, progress=False)
    trained = train_bc_policy(setup / "ds", 150, samples=samples, progress=False, batch_size=16, lr=3e-3)
    assert trained.training_info["final_loss"] < 0.5 * _bc_loss(untrained, samples)
    loaded = BCModel.from_pretrained(trained.save_pretrained(tmp_path / "bc"))
    frames, pose = samples.frames[:1], samples.pose[:1]
    np.testing.assert_allclose(loaded.predict(frames, pose), trained.predict(frames, pose), atol=1e-6)
    policy = BCPolicy(loaded)
    norm = default_pose_normalizer()
    policy.reset({}, norm)
    obs = {cam: np.repeat(samples.frames[:1, v], 4, axis=0) for v, cam in enumerate(loaded.config.cameras)}
    obs[POSE_KEY] = norm.normalize(samples.pose[0].astype(np.float64)).astype(np.float32)
    action = policy.act(obs)
    assert action.shape == (4, 7) and action.dtype == np.float32 and np.abs(action).max() <= 1.0


def _bc_loss(model, samples) -> float:
    norm = model.normalizer
    pred = norm.normalize(model.predict(samples.frames, samples.pose))
    return float(np.mean((pred - norm.normalize(samples.target.astype(np.float64))) ** 2))


def test_simulator_and_model_envs_share_scenes_per_seed(setup):
    sim = sim_env(H, W, None)
    single = model_env(str(setup / "wm"), 1, sampling_steps=1)
    batched = model_env(str(setup / "wm"), 2, sampling_steps=1, max_steps=3)
    half = model_env(str(setup / "wm"), 2, sampling_steps=1, max_steps=3, dtype="bfloat16")
    assert half.model.denoiser.dtype == torch.bfloat16 and batched.model.denoiser.dtype == torch.float32
    half.close()
    try:
        _, a = sim.reset(seed=[7])
        _, b = single.reset(seed=[7])
        obs, c = batched.reset(seed=[7, 8])
        # policies and the detector look at the latest frame: only that one is rendered or decoded
        assert sim.single_observation_space == single.single_observation_space == batched.single_observation_space
        assert batched.single_observation_space["wrist_left"].shape == (1, H, W, 3)
        assert int(a["episode_seed"][0]) == int(b["episode_seed"][0]) == int(c["episode_seed"][0])
        assert a["task"][0] == b["task"][0] == c["task"][0]
        *_, info = batched.step(np.tile(obs[POSE_KEY][:, None], (1, 4, 1)))
        assert info["_success"].all() and info["success"].dtype == bool  # the detector's verdict per sub-env
    finally:
        sim.close()
        single.close()
        batched.close()


def test_policy_eval_command_end_to_end_and_resume(setup, monkeypatch):
    out = setup / "out"
    kwargs = dict(data=str(setup / "ds"), episodes=2, max_steps=2, bc_budgets=[3], bc_episodes=3,
                  experts=["careful"], bootstrap=20, progress=False, sampling_steps=1, command="test")
    doc = run_policy_eval([f"tiny={setup / 'wm'}"], str(out), num_envs=2, **kwargs)
    on_disk = load_policy_eval(out)
    assert [p["name"] for p in on_disk["policies"]] == ["expert-careful", "bc-3", "random"]
    assert on_disk["seeds"] == [0, 1] and set(on_disk["models"]) == {"tiny"}
    assert (out / "policies" / "bc-3" / "model.safetensors").is_file()
    assert (out / doc["figures"]["scatter"]).read_bytes()[:4] == b"\x89PNG"
    stored = json.loads((out / "runs" / "sim" / "random.json").read_text())
    assert stored["success"] == on_disk["real"]["success"]["random"] and stored["key"]["seeds"] == [0, 1]
    # A rerun resumes: every (world, policy) result is read back, nothing is run again.
    import persistworld_env.evaluation.policies as policies

    monkeypatch.setattr(policies, "run_policy", lambda *a, **k: pytest.fail("should have been cached"))
    again = run_policy_eval([f"tiny={setup / 'wm'}"], str(out), num_envs=2, **kwargs)
    assert again["real"] == on_disk["real"]
    assert again["models"]["tiny"]["success"] == on_disk["models"]["tiny"]["success"]
    # A copied output folder is reused too (policies are keyed by their weights, not their folder) ...
    shutil.copytree(out, setup / "out_copy")
    copied = run_policy_eval([f"tiny={setup / 'wm'}"], str(setup / "out_copy"), num_envs=2, **kwargs)
    assert copied["real"] == on_disk["real"]
    # ... because a behaviour-cloning policy is keyed by the SHA-256 of its weights, not by its folder.
    bc = json.loads((out / "runs" / "sim" / "bc-3.json").read_text())["key"]["policy"]["config"]
    assert "path" not in bc and len(bc["weights_sha256"]) == 64
    # The world model is keyed by its files: a copy elsewhere is reused, changed weights at the same path are not.
    shutil.copytree(setup / "wm", setup / "wm_copy")
    run_policy_eval([f"tiny={setup / 'wm_copy'}"], str(out), num_envs=2, **kwargs)
    from persistworld_env.models.world_model import WorldModel

    changed = WorldModel.from_pretrained(setup / "wm_copy")
    with torch.no_grad():
        next(changed.denoiser.parameters()).add_(0.01)
    changed.save_pretrained(setup / "wm_copy")
    with pytest.raises(pytest.fail.Exception, match="cached"):
        run_policy_eval([f"tiny={setup / 'wm_copy'}"], str(out), num_envs=2, **kwargs)
    # Other settings are not served from the cache.
    with pytest.raises(pytest.fail.Exception, match="cached"):
        run_policy_eval([f"tiny={setup / 'wm'}"], str(out), num_envs=2, **{**kwargs, "max_steps": 3})
    with pytest.raises(pytest.fail.Exception, match="cached"):  # another precision is another world
        run_policy_eval([f"tiny={setup / 'wm'}"], str(out), num_envs=2, **{**kwargs, "dtype": "bfloat16"})
    with pytest.raises(ValueError, match="simulator"):
        run_policy_eval([f"sim={setup / 'wm'}"], str(out), **kwargs)


def test_zoo_specs_describe_themselves():
    careful, rnd = expert_spec("careful", max_steps=3), random_spec()
    assert careful.describe()["kind"] == "expert" and careful.describe()["config"]["give_up_prob"] == 0.0
    assert rnd.name == "random" and rnd.build() is not rnd.build()
    with pytest.raises(ValueError, match="expert level"):
        expert_spec("perfect")
