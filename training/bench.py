"""``persistworld bench``: performance figures printed by measurement, never asserted in tests."""
from __future__ import annotations

import argparse
import tempfile
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


def run_benchmark(target: str, args: argparse.Namespace) -> dict:
    if target != "data":
        raise ValueError(f"unknown benchmark {target!r}")
    figures = bench_data(args.episodes, args.workers, args.data)
    if not args.json:
        table = Table(title=f"persistworld bench {target}")
        table.add_column("figure")
        table.add_column("value", justify="right")
        for key, value in figures.items():
            table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
        Console().print(table)
    return figures
