"""``persistworld evaluate`` on tiny models: batched replay metrics, metrics.json schema, plots, videos."""
from __future__ import annotations

import copy
import json
import os
import shutil

import numpy as np
import torch
import pytest

from persistworld_env.constants import CAMERAS
from persistworld_env.data.lerobot_reader import LeRobotEpisodes
from persistworld_env.evaluation.fidelity import (
    MetricsSchemaError, ModelSpec, ReplayRun, build_metrics_document, fidelity_table, group_curves, load_metrics,
    load_replay_run, model_fingerprint, rollout_seed, validate_metrics,
)
from persistworld_env.metrics import psnr, ssim
from persistworld_env.models.world_model import WorldModel
from persistworld_env.replay import load_replay_episode, rollout_replay
from persistworld_env.rollout import RolloutEngine
from training.evaluate import run_evaluation

from evaluation_helpers import tiny_dataset, tiny_world_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    tiny_dataset(root / "ds")
    for name, seed in (("a", 0), ("b", 1)):
        tiny_world_model(root / name, seed, detector=False)
    shutil.copytree(root / "a", root / "a_copy")
    return root


@pytest.fixture(scope="module")
def evaluated(setup):
    r = setup
    doc = run_evaluation([f"a={r / 'a'}", f"b={r / 'b'}", f"same={r / 'a_copy'}"], str(r / "ds"), str(r / "out"),
                         episodes=3, horizon=2, lpips="random", batch_size=2, sampling_steps=2, videos=1,
                         bootstrap=50, split="all", progress=False, command="persistworld evaluate (test)")
    return r, doc


def test_metrics_json_is_valid_and_matches_an_unbatched_replay(evaluated):
    root, doc = evaluated
    on_disk = load_metrics(root / "out")
    assert on_disk["models"].keys() == {"a", "b", "same"} and on_disk["lpips_backbone"] == "alexnet-random"
    assert doc["episodes"] == [0, 1, 2] and doc["horizon"] == 2 and doc["metrics"] == ["psnr", "ssim", "lpips"]
    # Episodes 0 (batched with 1) and 2 (alone: batches [0, 1], [2]) replayed one by one give the same
    # per-camera values: batching does not change a rollout (up to float rounding of a few pixels).
    model = WorldModel.from_pretrained(root / "b")
    reader = LeRobotEpisodes(root / "ds")
    for e in (0, 2):
        ep = load_replay_episode(reader, e, 2)
        gen = rollout_replay(RolloutEngine(model).with_sampler(steps=2), [ep], 2, seeds=[rollout_seed(0, e)])[0]
        per_cam = doc["models"]["b"]["per_camera"]
        for v, cam in enumerate(CAMERAS):
            np.testing.assert_allclose(per_cam[cam]["psnr"][e], psnr(gen[:, :, v], ep.frames[:, :, v]).mean(1),
                                       atol=1e-3)
            np.testing.assert_allclose(per_cam[cam]["ssim"][e], ssim(gen[:, :, v], ep.frames[:, :, v]).mean(1),
                                       atol=1e-4)
    # Groups: external = mean of the two exterior cameras, wrist = the wrist camera; means over steps.
    b = doc["models"]["b"]
    ext = (np.array(b["per_camera"][CAMERAS[0]]["ssim"]) + np.array(b["per_camera"][CAMERAS[1]]["ssim"])) / 2
    np.testing.assert_allclose(b["exterior"]["ssim"]["per_step"], ext.mean(0))
    np.testing.assert_allclose(b["exterior"]["ssim"]["mean"], ext.mean())
    np.testing.assert_allclose(b["per_episode"]["exterior"]["ssim"], ext.mean(1))
    np.testing.assert_allclose(group_curves(doc, "b", "wrist", "lpips"), b["per_camera"][CAMERAS[2]]["lpips"])
    assert all(0 < v for v in b["wrist"]["lpips"]["per_step"])


def test_paired_section_elo_table_plots_and_videos(evaluated):
    root, doc = evaluated
    rows = {(p["model_a"], p["model_b"], p["group"], p["metric"]): p for p in doc["paired"]}
    assert len(rows) == 3 * 2 * 3  # 3 pairs x 2 groups x 3 metrics
    same = rows[("a", "same", "exterior", "psnr")]  # identical weights and seeds: every episode ties
    assert (same["ties"], same["n"], same["win_rate"], same["p_value"]) == (3, 0, 0.5, 1.0)
    ab = rows[("a", "b", "wrist", "lpips")]
    a_vals = np.array(doc["models"]["a"]["per_episode"]["wrist"]["lpips"])
    b_vals = np.array(doc["models"]["b"]["per_episode"]["wrist"]["lpips"])
    assert ab["wins"] == int((a_vals < b_vals).sum()) and ab["n"] + ab["ties"] == 3  # lower LPIPS wins
    ratings = doc["elo"]["ratings"]
    assert ratings["a"]["elo"] == pytest.approx(ratings["same"]["elo"])
    headers, table = fidelity_table(doc)
    assert headers[1:4] == ["external SSIM ↑", "external PSNR ↑", "external LPIPS ↓"] and len(table) == 3
    for metric in ("psnr", "ssim", "lpips"):
        png = root / "out" / doc["figures"][metric]
        assert png.read_bytes()[:4] == b"\x89PNG"
    assert doc["videos"]["columns"] == ["ground truth", "a", "b", "same"]
    files = doc["videos"]["files"]["0"]
    assert set(files) == set(CAMERAS) and all((root / "out" / f).stat().st_size > 0 for f in files.values())


def test_stored_runs_are_reused_only_for_the_same_weights_and_settings(evaluated, monkeypatch):
    import persistworld_env.evaluation.fidelity as fidelity_module

    root, doc = evaluated
    out = root / "out_again"
    shutil.copytree(root / "out" / "runs", out / "runs")
    calls = []
    real_replay = fidelity_module.replay_model
    monkeypatch.setattr(fidelity_module, "replay_model", lambda model, *a, **k: calls.append(1) or real_replay(
        model, *a, **k))
    settings = dict(episodes=3, horizon=2, lpips="random", batch_size=2, sampling_steps=2, videos=1, bootstrap=50,
                    split="all", progress=False, command="persistworld evaluate (test)")
    again = run_evaluation([f"a={root / 'a'}", f"b={root / 'b'}"], str(root / "ds"), str(out), **settings)
    assert calls == []  # both reused
    assert again["models"]["a"]["per_camera"] == doc["models"]["a"]["per_camera"]
    # Another model under a stored name, or another setting, replays again.
    run_evaluation([f"a={root / 'b'}"], str(root / "ds"), str(out), **settings)
    assert len(calls) == 1
    run_evaluation([f"a={root / 'b'}"], str(root / "ds"), str(out), **{**settings, "seed": 3})
    assert len(calls) == 2
    half = run_evaluation([f"a={root / 'b'}"], str(root / "ds"), str(out), **{**settings, "seed": 3,
                                                                                "dtype": "bfloat16"})
    assert len(calls) == 3 and half["models"]["a"]["per_camera"]  # another precision replays again
    assert half["dtype"] == "bfloat16" and again["dtype"] == "float32"
    calls.pop()
    # A damaged store is ignored (and rewritten), never trusted.
    (out / "runs" / "b.npz").write_bytes(b"not an npz")
    run_evaluation([f"b={root / 'b'}"], str(root / "ds"), str(out), **settings)
    assert len(calls) == 3 and load_replay_run(out / "runs" / "b.npz", {"x": 1}) is None
    # The same path with its episodes written again (a dataset generated anew there) replays again.
    reader = LeRobotEpisodes(root / "ds")
    for episode in reader.episode_indices:
        stat = reader.data_path(episode).stat()
        os.utime(reader.data_path(episode), ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    run_evaluation([f"b={root / 'b'}"], str(root / "ds"), str(out), **settings)
    assert len(calls) == 4
    # The fingerprint follows the weights, not the folder.
    fp = [model_fingerprint(WorldModel.from_pretrained(root / n)) for n in ("a", "a_copy", "b")]
    assert fp[0] == fp[1] != fp[2]


def test_bad_inputs_are_clear_errors(setup):
    r = setup
    with pytest.raises(ValueError, match="unique"):
        run_evaluation([f"x={r / 'a'}", f"x={r / 'b'}"], str(r / "ds"), str(r / "o2"), progress=False)
    with pytest.raises(ValueError, match="long enough"):
        run_evaluation([str(r / "a")], str(r / "ds"), str(r / "o3"), horizon=14, lpips="off", split="all",
                       progress=False)
    assert ModelSpec.parse("/x/models/base/") == ModelSpec("base", "/x/models/base/")
    assert ModelSpec.parse("pw=/x/y") == ModelSpec("pw", "/x/y")


def _synthetic_doc(metrics=("psnr", "ssim", "lpips"), episodes=4, horizon=3):
    rng = np.random.default_rng(0)
    runs = {}
    for name in ("base", "persist"):
        shape = (episodes, horizon, 3)
        scores = {"psnr": rng.uniform(15, 25, shape), "ssim": rng.uniform(0.5, 0.9, shape),
                  "lpips": rng.uniform(0.05, 0.3, shape)}
        runs[name] = (ModelSpec(name, f"/models/{name}"), ReplayRun({m: scores[m] for m in metrics}, 1.0))
    return build_metrics_document(runs, cameras=CAMERAS, episodes=list(range(episodes)), horizon=horizon,
                                  lpips_backbone="alexnet" if "lpips" in metrics else None, bootstrap=20)


def test_schema_validator_accepts_good_documents_and_names_bad_fields():
    doc = json.loads(json.dumps(_synthetic_doc()))  # a JSON round trip keeps it valid
    validate_metrics(doc)
    validate_metrics(_synthetic_doc(metrics=("psnr", "ssim")))  # LPIPS off: no lpips entries, backbone null

    def broken(edit, match):
        bad = copy.deepcopy(doc)
        edit(bad)
        with pytest.raises(MetricsSchemaError, match=match):
            validate_metrics(bad)

    broken(lambda d: d.pop("horizon"), r"horizon: missing")
    broken(lambda d: d["models"]["base"]["wrist"]["psnr"]["per_step"].pop(), r"models\.base\.wrist\.psnr\.per_step")
    broken(lambda d: d["models"]["base"]["exterior"]["ssim"].update(mean=0.1), r"not the mean of per_step")
    broken(lambda d: d["models"]["persist"]["per_camera"]["wrist_left"]["lpips"][0].__setitem__(1, float("nan")),
           r"per_camera\.wrist_left\.lpips\[0\]\[1\]")
    broken(lambda d: d.update(lpips_backbone=None), r"backbone named")
    broken(lambda d: d["paired"][0].update(wins=d["paired"][0]["wins"] + 1), r"inconsistent counts")
    broken(lambda d: d["paired"].pop(), r"missing comparisons")
    broken(lambda d: d["paired"][0].update(p_value=1.5), r"p_value")
    broken(lambda d: d["elo"]["ratings"].pop("base"), r"elo\.ratings")
    broken(lambda d: d["models"]["base"].pop("per_episode"), r"models\.base\.per_episode: missing")


def test_a_fine_tuned_model_directory_keeps_its_parents_success_detector(tmp_path):
    from persistworld_env.models.success_detector import SuccessDetector
    from persistworld_env.success import carry_success_detector

    parent = tiny_world_model(tmp_path / "parent", detector=True)
    child = tiny_world_model(tmp_path / "child", seed=1, detector=False)
    assert carry_success_detector(str(parent), child)
    original = SuccessDetector.from_pretrained(parent / "success_detector").state_dict()
    copied = SuccessDetector.from_pretrained(child / "success_detector").state_dict()
    assert all(torch.equal(original[k], copied[k]) for k in original)
    assert not carry_success_detector(str(parent), child)  # never overwrites one already there
    bare = tiny_world_model(tmp_path / "bare", detector=False)
    assert not carry_success_detector(str(bare), tmp_path / "other") and not (tmp_path / "other").exists()
