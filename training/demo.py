"""``persistworld demo``: a scripted expert's actions replayed in the world model next to the simulator.

With a world model (``--model``, default: the embedded one) the demo steps ``PersistWorld-DROID-v0`` with
the MiniDROID simulator alongside (``ground_truth="sim"``), writes a video and a contact sheet with the
simulator on top and the model below, and prints per-camera fidelity and step time. Without one (the
embedded model not installed), it shows the simulator alone and says so.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np


def _make_env(model: str | None, device: str, task: str | None, dtype: str | None = "auto"):
    """(env, has_model): the world-model env with the simulator alongside, or the simulator alone."""
    import gymnasium as gym

    import persistworld_env  # noqa: F401  (registers the environments)
    from persistworld_env.models.autoencoder import ModelLoadError
    from persistworld_env.world_model_env import PersistWorldEnv

    if model is not None:
        try:
            return PersistWorldEnv(model=model, device=device, task=task, ground_truth="sim", dtype=dtype), True
        except ModelLoadError as e:
            if model != "default":
                raise
            print(f"note: {e}\n      showing the MiniDROID simulator alone")
    return gym.make("MiniDROID-Sim-v0", task=task).unwrapped, False


def run_demo(out: str | Path = "demo_out", steps: int = 14, seed: int = 0, task: str | None = None,
             model: str | None = "default", device: str = "cpu", scale: int = 4, dtype: str | None = "auto") -> dict:
    """Run the demo and return its summary (also written to ``out/summary.json``)."""
    from rich.console import Console
    from rich.table import Table

    from persistworld_env.constants import CAMERAS
    from persistworld_env.sim.recording import expert_action_chunks
    from persistworld_env.visualization import comparison_frames, contact_sheet, write_video

    console = Console()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env, has_model = _make_env(model, device, task, dtype)
    try:
        obs, info = env.reset(seed=seed)
        console.print(f"[bold]{'PersistWorld-DROID-v0 + MiniDROID' if has_model else 'MiniDROID-Sim-v0'}[/bold] "
                      f"seed {seed}: '{info['instruction']}'")
        normalizer = env.model.normalizer if has_model else env.normalizer
        height, width = obs[CAMERAS[0]].shape[1:3]
        chunks = expert_action_chunks(info["episode_seed"], info["task"], normalizer, height, width, steps)
        start = np.stack([obs[c][-1] for c in CAMERAS])[None]
        model_frames, truth_frames, step_times, fidelity = [start], [start], [], []
        for k in range(steps):
            t0 = time.perf_counter()
            obs, reward, terminated, truncated, info = env.step(chunks[k])
            step_times.append(time.perf_counter() - t0)
            clip = np.stack([obs[c] for c in CAMERAS], axis=1)
            model_frames.append(clip)
            truth_frames.append(env.ground_truth_clip if has_model else clip)
            if has_model:
                fidelity.append(info["fidelity"])
            if terminated or truncated:
                break
    finally:
        env.close()
    model_video, truth_video = np.concatenate(model_frames), np.concatenate(truth_frames)
    frames = comparison_frames(truth_video, model_video) if has_model else comparison_frames(truth_video)
    write_video(frames, out / "demo.mp4", fps=5, scale=scale)
    contact_sheet(frames, out / "contact_sheet.png")
    summary = {"instruction": info["instruction"], "world_model": has_model, "steps": len(step_times),
               "mean_step_seconds": float(np.mean(step_times)), "video": str(out / "demo.mp4"),
               "contact_sheet": str(out / "contact_sheet.png")}
    if has_model:
        summary["fidelity"] = {m: {c: float(np.mean([f[m][c] for f in fidelity])) for c in CAMERAS}
                               for m in ("psnr", "ssim")}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    table = Table(title="persistworld demo" + ("" if has_model else " (simulator only)"))
    table.add_column("")
    table.add_column("value", justify="right")
    for key in ("instruction", "steps", "mean_step_seconds", "video", "contact_sheet"):
        value = summary[key]
        table.add_row(key, f"{value:.3f}" if isinstance(value, float) else str(value))
    for metric, per_cam in summary.get("fidelity", {}).items():
        for cam, value in per_cam.items():
            table.add_row(f"{metric} {cam} (model vs simulator)", f"{value:.3f}")
    console.print(table)
    return summary
