"""PNG figures of the evaluation (matplotlib, Agg backend): fidelity curves and policy-success scatter."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from persistworld_env.evaluation.fidelity import group_curves

_LABELS = {"psnr": "PSNR (dB)", "ssim": "SSIM", "lpips": "LPIPS"}
_GROUP_TITLES = {"exterior": "external (mean of the exterior cameras)", "wrist": "wrist camera"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_fidelity_curves(doc: Mapping[str, Any], out_dir: str | os.PathLike) -> dict[str, Path]:
    """One PNG per metric (``fidelity_<metric>.png``): the metric over replay steps for every model,
    one panel per camera group, mean over episodes with a 95% normal interval. Returns metric -> path."""
    plt = _pyplot()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps = np.arange(1, doc["horizon"] + 1) * doc["step_seconds"]
    groups = list(doc["camera_groups"])
    paths = {}
    for metric in doc["metrics"]:
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.6), squeeze=False)
        for ax, group in zip(axes[0], groups):
            for model in doc["models"]:
                values = group_curves(doc, model, group, metric)  # (E, H)
                mean = values.mean(0)
                half = 1.96 * values.std(0, ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0 * mean
                ax.plot(steps, mean, marker="o", markersize=3, label=model)
                ax.fill_between(steps, mean - half, mean + half, alpha=0.2)
            arrow = "higher is better" if doc["higher_is_better"][metric] else "lower is better"
            ax.set_title(f"{_GROUP_TITLES.get(group, group)} ({arrow})")
            ax.set_xlabel("time since the first frame (s)")
            ax.set_ylabel(_LABELS[metric])
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        note = f", LPIPS backbone: {doc['lpips_backbone']}" if metric == "lpips" else ""
        fig.suptitle(f"{_LABELS[metric]} over {doc['horizon']} replay steps, {len(doc['episodes'])} episodes{note}",
                     fontsize=10)
        fig.tight_layout()
        paths[metric] = out_dir / f"fidelity_{metric}.png"
        fig.savefig(paths[metric], dpi=120)
        plt.close(fig)
    return paths


def plot_policy_scatter(real: Mapping[str, float], models: Mapping[str, Mapping[str, float]],
                        path: str | os.PathLike, title: str = "", annotations: Sequence[str] | None = None) -> Path:
    """Scatter of each policy's success rate in the simulator (x) and in each model (y), with the diagonal."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
    policies = list(real)
    for model, rates in models.items():
        x = [real[p] for p in policies]
        y = [rates[p] for p in policies]
        ax.scatter(x, y, label=model, s=30)
        for p, xi, yi in zip(policies, x, y):
            ax.annotate(p, (xi, yi), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("success in MiniDROID-Sim-v0 (ground truth)")
    ax.set_ylabel("success in the world model (learned detector)")
    ax.set_title("\n".join([title or "policy success: simulator vs world model", *(annotations or [])]), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
