"""``persistworld bench sampler`` and ``bench env`` on a tiny model: every figure is there and consistent."""
from __future__ import annotations

import pytest
import torch

from persistworld_env.models.world_model import WorldModel
from persistworld_env.sim.env import default_pose_normalizer


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    torch.manual_seed(0)
    return str(WorldModel.build("tiny", default_pose_normalizer()).save_pretrained(tmp_path_factory.mktemp("m")))


def test_bench_sampler_splits_a_step_into_sampling_and_decoding(tiny_model):
    from training.bench import bench_sampler

    figures = bench_sampler(tiny_model, batch_sizes=(1, 2), long_steps=12, repeats=1, call_size_batch=3)
    for b in (1, 2):
        step, sampling = figures[f"batch{b}_step_seconds"], figures[f"batch{b}_sampling_seconds"]
        assert step > 0 and sampling > 0 and figures[f"batch{b}_decoding_seconds"] >= 0
        assert figures[f"batch{b}_env_steps_per_s"] == pytest.approx(b / step, rel=0.01, abs=0.006)  # 2 decimals
    # per rollout: 2 rollouts' seconds at batch 1 over those at batch 2 (the figures above are rounded)
    expected = 2 * figures["batch1_sampling_seconds"] / figures["batch2_sampling_seconds"]
    assert figures["batch2_sampling_speedup"] == pytest.approx(expected, rel=0.05, abs=0.01)
    assert figures["batch2_decoding_speedup"] is None or figures["batch2_decoding_speedup"] > 0
    assert "batch1_sampling_speedup" not in figures
    assert figures["step12_rss_mb"] > 0 and figures["long_vs_short_time_ratio"] > 0
    assert figures["sampling_steps"] == 3  # the tiny model's own default
    assert figures["device"] == "cpu" and figures["dtype"] == "torch.float32"
    for m in (1, 2, 3):  # call sizes at batch 3: every rollouts-per-forward up to 3, then the images per call
        assert figures[f"sampling_per_rollout_fwd{m}"] > 0
    assert "sampling_per_rollout_fwd4" not in figures and figures["call_size_batch"] == 3
    assert all(figures[f"decoding_per_rollout_call{c}"] > 0 for c in (12, 16, 24, 64))
    assert figures["default_max_batch"] == 16 and figures["default_images_per_call"] == 16  # CPU defaults


def test_bench_env_compares_batched_with_sync_vector_envs(tiny_model):
    from training.bench import bench_env

    figures = bench_env(tiny_model, sizes=(2,), steps=1, rounds=2, dtype="bfloat16", observed_frames=1)
    assert figures["single_env_steps_per_s"] > 0 and figures["rounds"] == 2 and figures["dtype"] == "bfloat16"
    assert figures["observed_frames"] == 1
    assert figures["batched2_vs_sync"] == pytest.approx(figures["batched2_env_steps_per_s"]
                                                        / figures["sync2_env_steps_per_s"], rel=0.02)


def test_bench_sampler_in_half_precision(tiny_model):
    from training.bench import bench_sampler

    figures = bench_sampler(tiny_model, batch_sizes=(1,), long_steps=11, repeats=1, call_size_batch=1,
                            dtype="bfloat16")
    assert figures["dtype"] == "torch.bfloat16" and figures["batch1_step_seconds"] > 0


def test_bench_measures_the_embedded_model_unless_told_otherwise():
    """With no ``--model`` the benchmarks run what ``gym.make("PersistWorld-DROID-v0")`` runs."""
    from training.bench import bench_env
    from training.cli import build_parser

    assert build_parser().parse_args(["bench", "env"]).model == "default"
    assert build_parser().parse_args(["bench", "env"]).observed_frames == 4
    assert build_parser().parse_args(["bench", "env", "--observed-frames", "1"]).observed_frames == 1
    figures = bench_env(sizes=(1,), steps=1, rounds=1, dtype="float32")
    assert figures["model"] == "default" and figures["batched1_env_steps_per_s"] > 0


def test_every_benchmark_records_the_machine_it_ran_on(monkeypatch, tmp_path):
    """Speed depends on the CPU's units (AVX2 only, AVX512, AMX), so each figure set names them."""
    import argparse
    import os
    import platform

    import training.bench as bench

    monkeypatch.setattr(bench, "bench_env", lambda model, dtype, observed_frames: {"model": model, "dtype": dtype})
    args = argparse.Namespace(model="default", dtype="float32", observed_frames=4, json=True)
    figures = bench.run_benchmark("env", args)
    assert figures["model"] == "default" and figures["dtype"] == "float32"
    assert figures["torch"] == torch.__version__ and figures["torch_threads"] == torch.get_num_threads()
    assert figures["cpu_count"] == os.cpu_count() and figures["cpu_auto_dtype"] in {"float32", "bfloat16"}
    assert figures["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(figures["cpu_amx"], bool) and figures["cpu"]

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t: avx2\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 7B13\n")
    assert bench.cpu_model_name(cpuinfo) == "AMD EPYC 7B13"
    assert bench.cpu_model_name(tmp_path / "missing") == (platform.processor() or platform.machine() or "unknown")


def test_bench_posttrain_resolves_auto_for_the_device_it_runs_on(monkeypatch):
    """It trains on the GPU when there is one, so "auto" follows the GPU, not the host CPU's units."""
    import argparse

    import training.bench as bench

    monkeypatch.setattr(bench, "bench_posttrain", lambda model, mixed_precision: {"mixed_precision": mixed_precision})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "a GPU of compute capability 9")
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    args = argparse.Namespace(model="default", dtype="auto", json=True)
    assert bench.run_benchmark("posttrain", args)["mixed_precision"] == "bf16"
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    assert bench.run_benchmark("posttrain", args)["mixed_precision"] == "no"
