"""``persistworld bench``: performance figures printed by measurement, never asserted in tests."""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

#: Samples/s a CPU training step of the default world-model size consumes (batch 8 in ~1 s on 2 cores,
#: ENVIRONMENT.md); the loader must beat it by a wide margin so training is never data-bound.
TRAINING_SAMPLES_PER_S = 8.0


def bench_data(episodes: int, workers: int, data: str | None) -> dict:
    """Generation throughput (fresh episodes) and loader throughput (cold decode and warm cache)."""
    import persistworld_env  # noqa: F401
    from persistworld_env.data.bench import bench_loader
    from persistworld_env.sim.generation import generate_dataset

    with tempfile.TemporaryDirectory(prefix="pw_bench_") as tmp:
        gen = generate_dataset(Path(tmp) / "ds", episodes, seed=12345, workers=workers, progress=True)
        figures = {f"generate_{k}": v for k, v in gen.items()}
        figures["generate_projected_minutes_per_1000_episodes"] = round(1000 / gen["episodes_per_min"], 1)
        loader = bench_loader(data or Path(tmp) / "ds", num_samples=256, batch_size=8, num_workers=0)
    figures.update({f"loader_{k}": v for k, v in loader.items()})
    figures["loader_warm_vs_training_demand"] = round(loader["warm_samples_per_s"] / TRAINING_SAMPLES_PER_S, 1)
    return figures


def cpu_model_name(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``'s first ``model name``; ``platform`` elsewhere)."""
    import platform

    try:
        with open(cpuinfo) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_figures() -> dict:
    """What a benchmark ran on, recorded with its figures: speed depends on the CPU's vector and matrix units
    (AVX2 only, AVX512, AMX tiles for bfloat16), the threads, the torch build and a GPU if there is one."""
    import torch

    from persistworld_env.models.world_model import dtype_name

    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return {"cpu": cpu_model_name(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_amx": bool(amx()) if amx is not None else False, "cpu_auto_dtype": dtype_name("auto"),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None, "torch": torch.__version__}


def _rss_mb() -> float:
    """Resident memory of this process (MB), from /proc (Linux) or the peak from resource elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def bench_sampler(model_path: str = "default", batch_sizes: tuple[int, ...] = (1, 8, 16), long_steps: int = 200,
                  repeats: int = 5, call_size_batch: int = 16, device: str = "cpu", dtype: str | None = None) -> dict:
    """Env-step cost of the rollout engine: 4 new frames x 3 cameras per rollout at the model's default
    sampling steps; throughput per batch size; step time and memory at step 5 vs step ``long_steps``; at batch
    ``call_size_batch``, the sampling time per rollouts-per-forward and the decoding time per images-per-call
    (interleaved rounds, best of each), to check the device's defaults (``RolloutEngine.max_batch``,
    ``LatentCodec.chunk_size``). ``model_path``: a model directory or an embedded model's name (``"default"``:
    what ``gym.make`` runs). ``device``/``dtype``: where and in which precision the model runs."""
    import numpy as np
    import torch

    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.rollout import RolloutEngine

    model = WorldModel.from_pretrained(model_path, device=device, dtype=dtype)
    cfg = model.config
    pose = model.normalizer.denormalize(np.zeros(7, np.float32))

    def engine(b: int) -> tuple[RolloutEngine, np.ndarray]:
        eng = RolloutEngine(model)
        frames = np.random.default_rng(0).integers(0, 256, (b, len(cfg.cameras), cfg.height, cfg.width, 3),
                                                   dtype=np.uint8)
        eng.reset(frames, np.tile(pose, (b, 1)), seeds=list(range(b)))
        return eng, np.tile(pose, (b, 4, 1))

    def timed(eng, actions, n, decode: bool = True) -> float:
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            eng.step(actions, decode=decode)
            _synchronize(model.device)
            times.append(time.perf_counter() - t0)
        return float(np.median(times))

    figures: dict = {"model": model_path, "device": str(model.device), "dtype": str(model.denoiser.dtype),
                     "sampling_steps": cfg.sampler.steps, "guidance": cfg.sampler.guidance,
                     "image": f"{cfg.height}x{cfg.width} x {len(cfg.cameras)} cameras"}
    seconds: dict[int, tuple[float, float]] = {}  # batch size -> (sampling, decoding) seconds per step
    first = batch_sizes[0]  # speedups per rollout are against it (one rollout by default)
    for b in batch_sizes:
        eng, actions = engine(b)
        eng.step(actions)  # warm-up
        t = timed(eng, actions, repeats)
        sampling = timed(eng, actions, repeats, decode=False)  # the step without decoding its frames
        figures[f"batch{b}_step_seconds"] = round(t, 4)
        figures[f"batch{b}_env_steps_per_s"] = round(b / t, 2)
        figures[f"batch{b}_sampling_seconds"] = round(sampling, 4)
        figures[f"batch{b}_decoding_seconds"] = round(max(0.0, t - sampling), 4)
        seconds[b] = (sampling, t - sampling)
        if b != first:
            for part, now, then in zip(("sampling", "decoding"), seconds[b], seconds[first]):
                # decoding = step - sampling, two medians: None where timing noise leaves nothing to compare
                figures[f"batch{b}_{part}_speedup"] = round(then / first * b / now, 2) if now > 0 and then > 0 else None
    figures.update(_call_size_figures(*engine(call_size_batch), repeats))
    eng, actions = engine(1)
    eng.step(actions)  # step 1 pays one-off allocations
    figures["step5_seconds"] = round(timed(eng, actions, 5), 4)  # median of steps 2..6
    figures["step5_rss_mb"] = round(_rss_mb(), 1)
    for _ in range(long_steps - 10):
        eng.step(actions)
    figures[f"step{long_steps}_seconds"] = round(timed(eng, actions, 5), 4)  # median of the last 5 steps
    figures[f"step{long_steps}_rss_mb"] = round(_rss_mb(), 1)
    figures["long_vs_short_time_ratio"] = round(figures[f"step{long_steps}_seconds"] / figures["step5_seconds"], 3)
    return figures


def _synchronize(device) -> None:
    """Wait for a GPU's queued work (so that wall-clock times cover it); nothing on a CPU."""
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _call_size_figures(eng, actions, repeats: int) -> dict:
    """Seconds per rollout at batch B: sampling at 1/2/4/8/.../B rollouts per denoiser forward (``fwd``), autoencoder
    decoding at 12/16/24/64 images per call (``call``); interleaved rounds, best of each; the defaults restored."""
    b, model = eng.batch_size, eng.model
    max_batches = sorted({min(m, b) for m in (1, 2, 4, 8, 16, b)})
    chunks = (12, 16, 24, 64)
    default_max_batch, default_chunk = eng.max_batch, model.codec.chunk_size
    best: dict[str, float] = {}

    def keep(key: str, seconds: float) -> None:
        best[key] = min(best.get(key, float("inf")), seconds / b)

    eng.step(actions)  # warm-up
    try:
        for _ in range(repeats):
            for m in max_batches:
                eng.max_batch = m
                t0 = time.perf_counter()
                out = eng.step(actions, decode=False)
                _synchronize(model.device)
                keep(f"sampling_per_rollout_fwd{m}", time.perf_counter() - t0)
            for c in chunks:
                model.codec.chunk_size = c
                t0 = time.perf_counter()
                model.decode(out.latents)
                keep(f"decoding_per_rollout_call{c}", time.perf_counter() - t0)
    finally:
        eng.max_batch, model.codec.chunk_size = default_max_batch, default_chunk
    figures = {"call_size_batch": b, **{k: round(v, 4) for k, v in best.items()}}
    figures["default_max_batch"] = default_max_batch
    figures["default_images_per_call"] = model.codec.images_per_call
    return figures


def bench_env(model_path: str = "default", sizes: tuple[int, ...] = (1, 4, 8, 16), steps: int = 3,
              rounds: int = 3, dtype: str | None = "auto", observed_frames: int = 4) -> dict:
    """Env steps/s: single env, batched vector env at N, and gymnasium's SyncVectorEnv of N single envs.

    The batched and the sync env of each N are timed in ``rounds`` interleaved rounds of ``steps`` steps and
    each keeps its best round, so a drift in the machine's speed hits both alike. ``dtype``: the weights' precision
    (``"auto"``: the env's default, see ``persistworld_env.models.world_model.auto_dtype``). ``observed_frames``:
    the envs' argument (1: observations of the latest frame only, a quarter of the decoding).
    """
    import gymnasium as gym
    import numpy as np

    import persistworld_env  # noqa: F401

    def started(env, batched):
        obs, _ = env.reset(seed=0)
        pose = obs["pose"]
        action = np.tile(pose[:, None], (1, 4, 1)) if batched else np.tile(pose[..., None, :], (4, 1))
        env.step(action)  # warm-up
        return env, action

    def rate(env, action, n):
        t0 = time.perf_counter()
        for _ in range(steps):
            env.step(action)
        return n * steps / (time.perf_counter() - t0)

    from persistworld_env.models.world_model import dtype_name

    figures: dict = {"steps_per_round": steps, "rounds": rounds, "dtype": dtype_name(dtype), "model": model_path,
                     "observed_frames": observed_frames}
    kwargs = {"model": model_path, "dtype": dtype, "observed_frames": observed_frames}
    single, action = started(gym.make("PersistWorld-DROID-v0", **kwargs), False)
    figures["single_env_steps_per_s"] = round(max(rate(single, action, 1) for _ in range(rounds)), 3)
    single.close()
    for n in sizes:
        envs = {k: started(gym.make_vec("PersistWorld-DROID-v0", num_envs=n, vectorization_mode=mode, **kwargs), True)
                for k, mode in (("batched", "vector_entry_point"), ("sync", "sync"))}
        best = {k: 0.0 for k in envs}
        for _ in range(rounds):
            for k, (env, action) in envs.items():
                best[k] = max(best[k], rate(env, action, n))
        figures[f"batched{n}_env_steps_per_s"] = round(best["batched"], 3)
        figures[f"sync{n}_env_steps_per_s"] = round(best["sync"], 3)
        figures[f"batched{n}_vs_sync"] = round(best["batched"] / best["sync"], 2)
        for env, _ in envs.values():
            env.close()
    return figures


def bench_posttrain(model_path: str = "default", candidates: int = 16, prefix_steps: int = 2, clips: int = 1,
                    repeats: int = 3, mixed_precision: str = "no") -> dict:
    """Seconds per post-training group and where they go (prefix, candidates, rewards, update), and the
    K candidates generated in one batched call against one by one.

    The procedure's own functions run on a synthetic episode at the model's image size (speed does not
    depend on the content) with ``persistworld posttrain``'s defaults: LoRA rank 8, the old adapter
    sampling, rewards with LPIPS on a random AlexNet backbone (the real one costs the same), one
    DiffusionNFT optimizer step over the group's K x clips samples (micro-batches of 16, reference term).
    ``mixed_precision`` (``"no"``, ``"bf16"``, ``"fp16"``): accelerate's autocast around sampling and the update,
    as ``persistworld posttrain --mixed-precision`` runs them.
    """
    import numpy as np
    import torch
    from accelerate import Accelerator

    from persistworld_env.diffusion.nft import optimality_probability
    from persistworld_env.models.world_model import WorldModel
    from persistworld_env.perceptual import build_lpips
    from persistworld_env.posttrain.groups import GroupSpec, collect_group, generate_candidates, rollout_prefix
    from persistworld_env.replay import ReplayEpisode
    from persistworld_env.rewards import RewardScorer
    from persistworld_env.rollout import RolloutEngine
    from training.posttrain import PosttrainConfig, accumulate_gradients, build_policy, sampler_settings

    accelerator = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision=mixed_precision)
    model = WorldModel.from_pretrained(model_path).to(accelerator.device)
    model.requires_grad_(False)
    cfg = model.config
    settings = PosttrainConfig(data_dir="", out_dir="", candidates=candidates)  # the command's defaults
    sampler = sampler_settings(model, settings.sampling_steps)
    rng = np.random.default_rng(0)
    steps = prefix_steps + clips
    pose = model.normalizer.denormalize(np.zeros(7, np.float32))
    views = (len(cfg.cameras), cfg.height, cfg.width, 3)
    episode = ReplayEpisode(0, "pick up the red cube", rng.integers(0, 256, views, dtype=np.uint8), pose,
                            np.tile(pose, (steps, 4, 1)).astype(np.float32),
                            rng.integers(0, 256, (steps, 4, *views), dtype=np.uint8))
    spec = GroupSpec(0, 0, prefix_steps, clips)
    denoiser = model.denoiser
    policy = build_policy(denoiser, settings)
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=settings.lr)
    scorer = RewardScorer(lpips=build_lpips("random", device=accelerator.device))
    engine = RolloutEngine(model, sampler_settings(model, settings.prefix_sampling_steps))
    seeds = list(range(candidates + 1))

    def group() -> dict[str, float]:
        with policy.old(merged=True), accelerator.autocast():
            samples = collect_group(engine, episode, spec, seeds, scorer, candidate_sampler=sampler)
        t0 = time.perf_counter()
        r = optimality_probability(torch.as_tensor(samples.rewards)[None], settings.adv_clip)[0]
        r = r[torch.as_tensor(samples.candidate)]
        accumulate_gradients(accelerator, denoiser, policy, samples, r.to(accelerator.device), settings,
                             torch.Generator(device=accelerator.device).manual_seed(0))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        policy.update_old(0.5)
        return {**samples.timings, "update": time.perf_counter() - t0}

    group()  # warm-up
    runs = [group() for _ in range(repeats)]
    parts = {k: float(np.median([run[k] for run in runs])) for k in runs[0]}
    total = sum(parts.values())
    figures: dict = {"model": model_path, "candidates": candidates,
                     "mixed_precision": mixed_precision,
                     "prefix_steps": prefix_steps, "clips": clips, "sampling_steps": sampler.steps,
                     "image": f"{cfg.height}x{cfg.width} x {len(cfg.cameras)} cameras",
                     "lpips": "alexnet-random (same cost as the real backbone)",
                     "seconds_per_group": round(total, 3)}
    for k, v in parts.items():
        figures[f"{k}_seconds"] = round(v, 3)
        figures[f"{k}_share"] = round(v / total, 3)

    # best of interleaved rounds (robust to a busy CPU); (batch size, decode): None = all K at once
    times: dict[tuple[int | None, bool], list[float]] = {(b, d): [] for d in (True, False) for b in (None, 1)}
    with policy.old(merged=True), accelerator.autocast(), torch.no_grad():
        rollout_prefix(engine, episode, prefix_steps, seeds[0])
        for _ in range(repeats):
            for batch_size, decode in times:
                t0 = time.perf_counter()
                generate_candidates(engine, episode.poses[prefix_steps:], seeds[1:], batch_size, sampler, decode)
                times[batch_size, decode].append(time.perf_counter() - t0)
    batched, serial = min(times[None, True]), min(times[1, True])
    figures["candidates_batched_seconds"] = round(batched, 3)
    figures["candidates_one_by_one_seconds"] = round(serial, 3)
    figures["batched_vs_one_by_one_speedup"] = round(serial / batched, 2)
    # The same without decoding the frames: what batching gains on the denoiser alone, the ceiling of the
    # speedup above when decoding costs the same per image either way (as on a CPU).
    figures["sampling_only_speedup"] = round(min(times[1, False]) / min(times[None, False]), 2)
    return figures


#: ``bench posttrain``: the ``--dtype`` of the benchmark as accelerate's mixed precision (the trained weights
#: stay float32).
MIXED_PRECISION = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}


def run_benchmark(target: str, args: argparse.Namespace) -> dict:
    from persistworld_env.models.world_model import AUTO_DTYPE, dtype_name

    if target == "data":
        figures = bench_data(args.episodes, args.workers, args.data)
    elif target == "sampler":
        figures = bench_sampler(args.model, device=args.device, dtype=args.dtype or AUTO_DTYPE)
    elif target == "env":
        figures = bench_env(args.model, dtype=args.dtype or AUTO_DTYPE, observed_frames=args.observed_frames)
    elif target == "posttrain":
        import torch  # bench_posttrain runs where accelerate puts it: the GPU if there is one

        precision = dtype_name(args.dtype, "cuda" if torch.cuda.is_available() else "cpu") if args.dtype else "float32"
        figures = bench_posttrain(args.model, mixed_precision=MIXED_PRECISION[precision])
    else:
        raise ValueError(f"unknown benchmark {target!r}")
    figures = {**figures, **machine_figures()}
    if not args.json:
        table = Table(title=f"persistworld bench {target}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
        Console().print(table)
    return figures
