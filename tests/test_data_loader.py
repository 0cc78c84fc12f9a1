"""Pose normaliser, Ctrl-World sample indices, WorldModelDataset, frame cache and loader bench."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from data_helpers import LENGTHS, psnr
from persistworld_env.constants import CAMERAS
from persistworld_env.data import (
    LeRobotEpisodes, PoseNormalizer, SamplingConfig, WorldModelDataset, bench_loader, collate_samples,
)
from persistworld_env.data import video as video_module


# ------------------------------------------------------------------ normaliser
def test_pose_normalizer(dataset, episodes):
    poses = np.concatenate([e.pose for e in episodes]).astype(np.float64)
    lo, hi = np.percentile(poses, 1, axis=0), np.percentile(poses, 99, axis=0)
    norm = PoseNormalizer.from_dataset(dataset)  # from meta/stats.json q01/q99
    np.testing.assert_allclose(norm.low, lo, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(norm.high, hi, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(norm.normalize(lo), -1, atol=1e-6)
    np.testing.assert_allclose(norm.normalize(hi), 1, atol=1e-6)
    np.testing.assert_allclose(norm.normalize((lo + hi) / 2), 0, atol=1e-6)
    x = lo + 0.3 * (hi - lo)
    np.testing.assert_allclose(norm.normalize(x), 2 * 0.3 - 1, atol=1e-6)  # hand computation
    np.testing.assert_allclose(norm.denormalize(norm.normalize(x)), x, atol=1e-9)
    assert np.all(norm.normalize(hi + 10) == 1) and np.all(norm.normalize(lo - 10) == -1)  # clipped
    t = torch.tensor(x, dtype=torch.float32)
    torch.testing.assert_close(norm.denormalize(norm.normalize(t)), t, atol=1e-5, rtol=1e-5)
    again = PoseNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    np.testing.assert_array_equal(again.low, norm.low)
    np.testing.assert_array_equal(again.high, norm.high)

    (dataset / "meta/stats.json").rename(dataset / "meta/stats.json.bak")
    try:  # no stats.json (as in some DROID ports): scan the parquet files
        scanned = PoseNormalizer.from_dataset(dataset)
    finally:
        (dataset / "meta/stats.json.bak").rename(dataset / "meta/stats.json")
    np.testing.assert_allclose(scanned.low, lo, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scanned.high, hi, rtol=1e-6, atol=1e-7)


def test_pose_normalizer_degenerate_dim():
    low, high = np.zeros(7), np.ones(7)
    high[6] = 0.0  # gripper never moved
    norm = PoseNormalizer(low, high)
    y = norm.normalize(np.array([0.5] * 6 + [0.0]))
    assert np.all(np.isfinite(y)) and y[6] == 0.0
    assert norm.denormalize(y)[6] == 0.0


# ------------------------------------------------------------------ sampling scheme
def test_frame_indices_hand_computed():
    cfg = SamplingConfig()
    # skip 1 (3 ticks), history spacing 4 model frames = 12 ticks; clamped at 0
    assert cfg.frame_indices(30, 60, 1, 4).tolist() == [0, 0, 0, 0, 6, 18, 30, 33, 36, 39, 42]
    # skip 2 (6 ticks), history 8 model frames = 24 ticks
    assert cfg.frame_indices(30, 60, 2, 8).tolist() == [0, 0, 0, 0, 0, 6, 30, 36, 42, 48, 54]
    assert cfg.frame_indices(150, 300, 2, 8).tolist() == [6, 30, 54, 78, 102, 126, 150, 156, 162, 168, 174]
    # all-current branch: history repeats the current frame
    assert cfg.frame_indices(30, 60, 1, 0).tolist() == [30] * 6 + [30, 33, 36, 39, 42]
    # clip past the end is clamped to the last tick on the 3-tick grid: T=50 -> last is 48
    assert cfg.frame_indices(36, 50, 2, 8).tolist()[6:] == [36, 42, 48, 48, 48]
    # current frames: 5 Hz aligned, clip fits at skip 1 (c + 12 <= T - 1)
    assert cfg.current_frames(45).tolist() == list(range(0, 33, 3))
    assert SamplingConfig(fit_max_skip=True).current_frames(45).tolist() == list(range(0, 21, 3))
    assert cfg.current_frames(10).tolist() == [0]


def test_all_current_probability():
    cfg = SamplingConfig()
    rng = np.random.default_rng(0)
    draws = [cfg.draw(rng) for _ in range(4000)]
    frac = np.mean([h == 0 for _, h in draws])
    assert 0.13 < frac < 0.17
    assert {s for s, _ in draws} == {1, 2}
    assert all(h in (0, 4 * s) for s, h in draws)


# ------------------------------------------------------------------ dataset samples
def test_sample_contents(dataset, episodes):
    ds = WorldModelDataset(dataset, split="all", sampling=SamplingConfig(fixed_skip=1))
    assert len(ds) == sum(len(range(0, n - 12, 3)) for n in LENGTHS)
    k = int(np.flatnonzero([ds.locate(i) == (1, 30) for i in range(len(ds))])[0])
    s = ds[k]
    assert s["video"].shape == (11, 3, 48, 80, 3) and s["video"].dtype == torch.uint8
    assert s["pose"].shape == (11, 7) and s["pose"].dtype == torch.float32
    assert (s["episode_index"], s["current_index"], s["future_skip"], s["history_skip"]) == (1, 30, 1, 4)
    idx = [0, 0, 0, 0, 6, 18, 30, 33, 36, 39, 42]
    assert s["frame_indices"].tolist() == idx
    np.testing.assert_array_equal(s["pose_raw"].numpy(), episodes[1].pose[idx])
    np.testing.assert_allclose(s["pose"].numpy(), ds.normalizer.normalize(episodes[1].pose[idx]), atol=1e-6)
    assert s["pose"].abs().max() <= 1
    assert s["instruction"] == episodes[1].instruction
    reader = LeRobotEpisodes(dataset)
    for v, cam in enumerate(CAMERAS):
        np.testing.assert_array_equal(s["video"][:, v].numpy(), reader.load_frames(1, cam)[idx])
        assert psnr(s["video"][:, v].numpy(), episodes[1].frames[cam][idx]) > 35


def test_all_current_branch_and_determinism(dataset):
    ds = WorldModelDataset(dataset, split="all", sampling=SamplingConfig(p_all_current=1.0), seed=3)
    for i in (0, 5, len(ds) - 1):
        s = ds[i]
        assert s["history_skip"] == 0
        assert s["frame_indices"][:6].tolist() == [s["current_index"]] * 6
        assert torch.equal(s["video"][:6], s["video"][6:7].expand(6, -1, -1, -1, -1))
    a = WorldModelDataset(dataset, split="all", seed=7)
    b = WorldModelDataset(dataset, split="all", seed=7)
    skips_a = [(a[i]["future_skip"], a[i]["history_skip"]) for i in range(len(a))]
    assert skips_a == [(b[i]["future_skip"], b[i]["history_skip"]) for i in range(len(b))]
    assert len(set(skips_a)) > 1
    a.set_epoch(1)
    assert skips_a != [(a[i]["future_skip"], a[i]["history_skip"]) for i in range(len(a))]


def test_validation_split(dataset):
    assert len(WorldModelDataset(dataset, split="val").episodes) == 0  # no index % 100 == 99 here
    assert WorldModelDataset(dataset, split="train").episodes.tolist() == [0, 1, 2, 3]
    assert WorldModelDataset(dataset, split="val", val_mod=2, val_rem=1).episodes.tolist() == [1, 3]
    assert WorldModelDataset(dataset, split="train", val_mod=2, val_rem=1).episodes.tolist() == [0, 2]
    assert WorldModelDataset(dataset, split="val", val_episodes=[2]).episodes.tolist() == [2]
    assert WorldModelDataset(dataset, split="train", val_episodes=[2]).episodes.tolist() == [0, 1, 3]


# ------------------------------------------------------------------ cache
def test_cache_decodes_once(dataset, tmp_path, monkeypatch):
    calls = []
    real = video_module.decode_video

    def counting(path, *args, **kwargs):
        calls.append(Path(path).name)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(video_module, "decode_video", counting)
    ds = WorldModelDataset(dataset, split="all", cache_dir=tmp_path / "cache")
    first = ds[0]
    assert len(calls) == len(CAMERAS)
    ds[1], ds[0]
    assert len(calls) == len(CAMERAS)  # same episode: in-memory LRU
    fresh = WorldModelDataset(dataset, split="all", cache_dir=tmp_path / "cache")
    assert torch.equal(fresh[0]["video"], first["video"])
    assert len(calls) == len(CAMERAS)  # new process-like object: served from the on-disk .npy cache
    cached = list((tmp_path / "cache").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0], mmap_mode="r").shape == (15, 3, 48, 80, 3)  # every 3rd frame

    mem = WorldModelDataset(dataset, split="all")  # memory-only cache
    mem[0], mem[1]
    assert len(calls) == 2 * len(CAMERAS)


def test_dataloader_workers_match_single_process(dataset, tmp_path):
    ds = WorldModelDataset(dataset, split="all", cache_dir=tmp_path / "cache", seed=1)
    picks = [0, 7, 15, 30, len(ds) - 1]
    sub = torch.utils.data.Subset(ds, picks)
    single = next(iter(DataLoader(sub, batch_size=5, num_workers=0)))
    multi = next(iter(DataLoader(sub, batch_size=5, num_workers=2, collate_fn=collate_samples)))
    assert single["video"].shape == (5, 11, 3, 48, 80, 3)
    assert set(single) == set(multi)
    for key in single:
        if isinstance(single[key], torch.Tensor):
            assert torch.equal(single[key], multi[key]) and single[key].dtype == multi[key].dtype, key
        else:
            assert single[key] == multi[key], key


def test_bench_loader(dataset):
    out = bench_loader(dataset, num_samples=16, batch_size=4, num_workers=0)
    assert out["cold_samples_per_s"] > 0 and out["warm_samples_per_s"] > 0
    assert out["sample_video_shape"] == [11, 3, 48, 80, 3]
