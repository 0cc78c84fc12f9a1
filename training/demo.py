"""``persistworld demo``: a scripted expert replayed in ``MiniDROID-Sim-v0``, written as video and a contact sheet.

Until the world-model environment lands this demo shows the ground-truth simulator the world model
is trained on; the same actions will drive ``PersistWorld-DROID-v0`` side by side.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def run_demo(out: str | Path = "demo_out", steps: int = 14, seed: int = 0, task: str | None = None,
             scale: int = 4) -> dict:
    """Run the demo and return its summary (also written to ``out/summary.json``)."""
    import gymnasium as gym
    from rich.console import Console
    from rich.table import Table

    import persistworld_env  # noqa: F401  (registers the environments)
    from persistworld_env.constants import CAMERAS
    from persistworld_env.visualization import contact_sheet, write_video
    from persistworld_env.sim.env import tile_cameras
    from persistworld_env.sim.recording import action_chunks, record_episode
    from persistworld_env.sim.simulator import MiniDROIDSimulator

    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = gym.make("MiniDROID-Sim-v0", task=task)
    try:
        obs, info = env.reset(seed=seed)
        console.print(f"[bold]MiniDROID-Sim-v0[/bold] seed {seed}: '{info['instruction']}'")
        expert_sim = MiniDROIDSimulator(*obs[CAMERAS[0]].shape[1:3])
        record = record_episode(expert_sim, info["episode_seed"], task_family=info["task"])
        expert_sim.close()
        chunks = action_chunks(record, env.unwrapped.normalizer)
        chunks += [chunks[-1]] * max(0, steps - len(chunks))
        frames = [tile_cameras({c: obs[c][-1] for c in CAMERAS})]
        step_times, success_step = [], None
        for k in range(steps):
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(chunks[k])
            step_times.append(time.perf_counter() - t0)
            frames += [tile_cameras({c: obs[c][j] for c in CAMERAS}) for j in range(obs[CAMERAS[0]].shape[0])]
            if reward > 0 and success_step is None:
                success_step = k
            if terminated or truncated:
                break
    finally:
        env.close()
    write_video(np.stack(frames), out / "demo.mp4", fps=5, scale=scale)
    contact_sheet(np.stack(frames), out / "contact_sheet.png")
    summary = {"instruction": info["instruction"], "steps": len(step_times), "success_step": success_step,
               "mean_step_seconds": float(np.mean(step_times)), "video": str(out / "demo.mp4"),
               "contact_sheet": str(out / "contact_sheet.png"), "cameras": list(CAMERAS)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table(title="demo")
    for key in ("instruction", "steps", "success_step", "mean_step_seconds", "video", "contact_sheet"):
        table.add_row(key, f"{summary[key]:.3f}" if isinstance(summary[key], float) else str(summary[key]))
    console.print(table)
    return summary
