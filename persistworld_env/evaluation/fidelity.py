"""Replay fidelity of world models on held-out episodes, and the ``metrics.json`` document (DESIGN.md 6, 7).

From each held-out episode's first frame every model replays the recorded poses for H steps (4 frames
at 5 Hz each, H = 14 is ~11 s), batched across episodes with the shared rollout engine
(:func:`persistworld_env.replay.rollout_replay`). Per episode, step and camera, PSNR (data range 1),
SSIM (Gaussian window 11, sigma 1.5) and LPIPS (AlexNet v0.1; its backbone named in the document)
are averaged over the step's 4 frames. Camera groups: ``exterior`` (the mean of the two exterior
cameras) and ``wrist``. Every model replays an episode with the same sampling seed (common random
numbers), so paired comparisons compare models, not noise draws.

``metrics.json`` (:func:`build_metrics_document`, checked by :func:`validate_metrics`)::

    schema_version, kind, data, split, episodes [E ids], horizon H, step_seconds, cameras,
    camera_groups {group: [cameras]}, metrics [names], higher_is_better {metric: bool},
    lpips_backbone ("alexnet" | "alexnet-random" | null), seed, rollout_seeds [E], sampler, command,
    models: {name: {
        path, lpips_backbone, seconds,
        <group>: {<metric>: {"per_step": [H means over episodes and the group's cameras], "mean": float}},
        per_episode: {<group>: {<metric>: [E means over steps and the group's cameras]}},
        per_camera: {<camera>: {<metric>: [E lists of H values]}}}},
    paired: [{model_a, model_b, group, metric, wins, losses, ties, n, win_rate, p_value}],
    elo: {comparisons, bootstrap, confidence, seed, ratings: {name: {elo, ci_low, ci_high, log_strength}}}

``per_camera`` keeps every value, so any statistic (bootstraps, other groupings) can be recomputed.
PSNR of identical images is infinite; the document caps it at ``MAX_PSNR`` dB so it stays valid JSON.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from persistworld_env.constants import EXTERIOR_CAMERAS, FRAMES_PER_STEP, MODEL_FPS, WRIST_CAMERAS
from persistworld_env.evaluation.comparisons import elo_ratings, model_pairs, paired_comparison
from persistworld_env.evaluation.schema import Checker, SchemaError, load_document

SCHEMA_VERSION = 1
METRICS: tuple[str, ...] = ("psnr", "ssim", "lpips")
HIGHER_IS_BETTER: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False}
CAMERA_GROUPS: dict[str, tuple[str, ...]] = {"exterior": EXTERIOR_CAMERAS, "wrist": WRIST_CAMERAS}
STEP_SECONDS = FRAMES_PER_STEP / MODEL_FPS
MAX_PSNR = 100.0


class MetricsSchemaError(SchemaError):
    """A ``metrics.json`` document does not follow the schema (the message names the bad field)."""


@dataclass(frozen=True)
class ModelSpec:
    """A model to evaluate: a display name and a model directory (or ``"default"``)."""

    name: str
    path: str

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``NAME=PATH``, or just ``PATH`` (named after its folder)."""
        name, sep, path = text.partition("=")
        if not sep:
            path = text
            name = Path(text.rstrip("/")).name or text
        if not name or not path:
            raise ValueError(f"--model must be NAME=PATH or PATH, got {text!r}")
        return cls(name, path)


def unique_specs(specs: Sequence[ModelSpec]) -> list[ModelSpec]:
    """The specs, refusing two models of one name."""
    names = [s.name for s in specs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"model names must be unique, {duplicates} given twice (use NAME=PATH)")
    if not specs:
        raise ValueError("give at least one --model")
    return list(specs)


def rollout_seed(seed: int, episode: int) -> int:
    """Sampling seed of one episode's replay: the same for every model (common random numbers)."""
    return int(np.random.SeedSequence([int(seed), int(episode)]).generate_state(1)[0])


@dataclass
class ReplayRun:
    """One model's replay of the evaluation episodes."""

    scores: dict[str, np.ndarray]  # metric -> (E, steps, V), cameras in the model's order
    seconds: float  # wall-clock time of rollouts and metrics
    videos: dict[int, np.ndarray] = field(default_factory=dict)  # episode -> (steps*4, V, H, W, 3) generated


def replay_model(model, reader, episodes: Sequence[int], steps: int, seed: int = 0, batch_size: int = 8,
                 lpips=None, sampler_overrides: Mapping[str, Any] | None = None,
                 keep_videos: Iterable[int] = (), progress: bool = True) -> ReplayRun:
    """Replay ``episodes`` of ``reader`` with ``model`` for ``steps`` steps, batched, and score every step.

    Args:
        model: a loaded :class:`~persistworld_env.models.world_model.WorldModel`.
        reader: the dataset's :class:`~persistworld_env.data.lerobot_reader.LeRobotEpisodes`.
        lpips: an LPIPS metric (``build_lpips``) or None for PSNR and SSIM only.
        sampler_overrides: sampling settings to change (e.g. ``{"steps": 8}``); the model's own otherwise.
        keep_videos: episodes whose generated frames are returned in ``ReplayRun.videos``.
    """
    from tqdm.auto import tqdm

    from persistworld_env.replay import fidelity, load_replay_episode, rollout_replay
    from persistworld_env.rollout import RolloutEngine

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    engine = RolloutEngine(model)
    if sampler_overrides:
        engine.with_sampler(**dict(sampler_overrides))
    keep = set(int(e) for e in keep_videos)
    parts: dict[str, list[np.ndarray]] = {}
    videos: dict[int, np.ndarray] = {}
    start = time.perf_counter()
    batches = [list(episodes[i:i + batch_size]) for i in range(0, len(episodes), batch_size)]
    for batch in tqdm(batches, desc="replay", unit="batch", disable=not progress):
        eps = [load_replay_episode(reader, e, steps) for e in batch]
        generated = rollout_replay(engine, eps, steps, seeds=[rollout_seed(seed, e) for e in batch])
        truth = np.stack([ep.frames[:steps] for ep in eps])
        for metric, values in fidelity(generated, truth, lpips).items():
            parts.setdefault(metric, []).append(values)
        for i, e in enumerate(batch):
            if e in keep:
                videos[int(e)] = generated[i].reshape(-1, *generated.shape[3:])
    scores = {k: np.concatenate(v) for k, v in parts.items()}
    if "psnr" in scores:
        scores["psnr"] = np.minimum(scores["psnr"], MAX_PSNR)
    return ReplayRun(scores=scores, seconds=time.perf_counter() - start, videos=videos)


def weights_sha256(module, facts: Mapping[str, Any] | None = None) -> str:
    """SHA-256 over a module's named weights (and JSON ``facts`` such as its config): same digest, same model."""
    import hashlib

    import torch

    digest = hashlib.sha256(json.dumps(facts or {}, sort_keys=True, default=str).encode())
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode())
        # the raw bytes (numpy has no bfloat16); for float32 the same bytes as ``tensor.numpy().tobytes()``
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_fingerprint(model) -> str:
    """A world model's :func:`weights_sha256` over its config, pose normaliser and every weight."""
    return weights_sha256(model, {"config": model.config.to_dict(), "normalizer": model.normalizer.to_dict()})


def save_replay_run(run: ReplayRun, path: str | Path, key: Mapping[str, Any]) -> None:
    """Store ``run`` at ``path`` (``.npz``, written atomically) under the settings ``key`` that produced it."""
    from persistworld_env.data.io_utils import atomic_path

    arrays = {f"scores/{k}": v for k, v in run.scores.items()}
    arrays.update({f"video/{e}": v for e, v in run.videos.items()})
    arrays["key"] = np.array(json.dumps(key, sort_keys=True))
    arrays["seconds"] = np.array(run.seconds)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def load_replay_run(path: str | Path, key: Mapping[str, Any]) -> ReplayRun | None:
    """The run stored at ``path`` if it was made with exactly ``key``; None if absent, different or unreadable."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if json.loads(str(z["key"])) != json.loads(json.dumps(key, sort_keys=True)):
                return None
            scores = {k.split("/", 1)[1]: z[k] for k in z.files if k.startswith("scores/")}
            videos = {int(k.split("/", 1)[1]): z[k] for k in z.files if k.startswith("video/")}
            return ReplayRun(scores=scores, seconds=float(z["seconds"]), videos=videos)
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        print(f"note: ignoring unreadable stored replay {path} ({e})")
        return None


def camera_groups(cameras: Sequence[str]) -> dict[str, list[str]]:
    """The camera groups present among ``cameras`` (``exterior``, ``wrist``)."""
    groups = {g: [c for c in cams if c in cameras] for g, cams in CAMERA_GROUPS.items()}
    return {g: cams for g, cams in groups.items() if cams}


def _group_mean(values: np.ndarray, cameras: Sequence[str], group: Sequence[str]) -> np.ndarray:
    """(E, steps, V) -> (E, steps): mean over the group's cameras."""
    return values[..., [list(cameras).index(c) for c in group]].mean(-1)


def build_metrics_document(runs: Mapping[str, tuple[ModelSpec, ReplayRun]], *, cameras: Sequence[str],
                           episodes: Sequence[int], horizon: int, lpips_backbone: str | None, seed: int = 0,
                           data: str = "", split: str = "val", sampler: Mapping[str, Any] | None = None,
                           command: str = "", bootstrap: int = 1000, confidence: float = 0.95) -> dict:
    """The ``metrics.json`` document (see module docstring) from each model's :class:`ReplayRun`."""
    if not runs:
        raise ValueError("no model runs")
    metrics = [m for m in METRICS if all(m in run.scores for _, run in runs.values())]
    groups = camera_groups(cameras)
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "kind": "persistworld-evaluate", "data": str(data), "split": split,
        "episodes": [int(e) for e in episodes], "horizon": int(horizon), "step_seconds": STEP_SECONDS,
        "cameras": list(cameras), "camera_groups": groups, "metrics": metrics,
        "higher_is_better": {m: HIGHER_IS_BETTER[m] for m in metrics}, "lpips_backbone": lpips_backbone,
        "seed": int(seed), "rollout_seeds": [rollout_seed(seed, e) for e in episodes],
        "sampler": dict(sampler or {}), "command": command, "models": {},
    }
    per_episode: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for name, (spec, run) in runs.items():
        entry: dict[str, Any] = {"path": spec.path, "lpips_backbone": lpips_backbone if "lpips" in metrics else None,
                                 "seconds": round(float(run.seconds), 3)}
        per_episode[name] = {}
        for group, cams in groups.items():
            entry[group] = {}
            per_episode[name][group] = {}
            for metric in metrics:
                values = _group_mean(run.scores[metric], cameras, cams)  # (E, H)
                entry[group][metric] = {"per_step": values.mean(0).tolist(), "mean": float(values.mean())}
                per_episode[name][group][metric] = values.mean(1)
        entry["per_episode"] = {g: {m: v.tolist() for m, v in per_m.items()} for g, per_m in per_episode[name].items()}
        entry["per_camera"] = {cam: {m: run.scores[m][:, :, v].tolist() for m in metrics}
                               for v, cam in enumerate(cameras)}
        doc["models"][name] = entry
    doc["paired"] = [
        {"model_a": a, "model_b": b, "group": g, "metric": m,
         **paired_comparison(per_episode[a][g][m], per_episode[b][g][m], HIGHER_IS_BETTER[m]).to_dict()}
        for a, b in model_pairs(list(runs)) for g in groups for m in metrics]
    oriented = {name: np.stack([per_episode[name][g][m] * (1 if HIGHER_IS_BETTER[m] else -1)
                                for g in groups for m in metrics], axis=1) for name in runs}
    doc["elo"] = {"comparisons": "one game per episode, camera group and metric",
                  "bootstrap": int(bootstrap), "confidence": confidence, "seed": int(seed),
                  "ratings": elo_ratings(oriented, bootstrap=bootstrap, confidence=confidence, seed=seed)}
    return doc


def group_curves(doc: Mapping[str, Any], model: str, group: str, metric: str) -> np.ndarray:
    """(E, H) per-episode, per-step values of a camera group, recomputed from ``per_camera``."""
    per_camera = doc["models"][model]["per_camera"]
    cams = doc["camera_groups"][group]
    return np.mean([np.asarray(per_camera[c][metric], dtype=np.float64) for c in cams], axis=0)


# -- validation --------------------------------------------------------------------------------------
_check = Checker("metrics.json", MetricsSchemaError)
_fail, _expect, _numbers = _check.fail, _check.expect, _check.numbers


def validate_metrics(doc: Mapping[str, Any]) -> None:
    """Check a ``metrics.json`` document against the schema; raise :class:`MetricsSchemaError` naming the field."""
    if _expect(doc, "schema_version", int) != SCHEMA_VERSION:
        _fail("schema_version", f"expected {SCHEMA_VERSION}, got {doc['schema_version']}")
    horizon = _expect(doc, "horizon", int)
    if horizon < 1:
        _fail("horizon", f"must be >= 1, got {horizon}")
    episodes = _expect(doc, "episodes", list)
    n_ep = len(episodes)
    if n_ep < 1 or not all(isinstance(e, int) for e in episodes):
        _fail("episodes", "expected a non-empty list of episode indices")
    cameras = _expect(doc, "cameras", list)
    groups = _expect(doc, "camera_groups", dict)
    for g, cams in groups.items():
        if g not in CAMERA_GROUPS or not isinstance(cams, list) or not cams or not set(cams) <= set(cameras):
            _fail(f"camera_groups.{g}", f"unknown group or cameras not in {cameras}")
    metrics = _expect(doc, "metrics", list)
    if not metrics or any(m not in METRICS for m in metrics) or "psnr" not in metrics or "ssim" not in metrics:
        _fail("metrics", f"expected psnr, ssim and optionally lpips, got {metrics}")
    backbone = doc.get("lpips_backbone", "missing")
    if "lpips" in metrics and not (isinstance(backbone, str) and backbone):
        _fail("lpips_backbone", f"LPIPS values need the backbone named, got {backbone!r}")
    if "lpips" not in metrics and backbone is not None:
        _fail("lpips_backbone", "must be null when LPIPS is not computed")
    _numbers(_expect(doc, "rollout_seeds", list), n_ep, "rollout_seeds")
    models = _expect(doc, "models", dict)
    if not models:
        _fail("models", "no models")
    for name, entry in models.items():
        base = f"models.{name}"
        _expect(entry, "path", str, base)
        if entry.get("lpips_backbone") != (backbone if "lpips" in metrics else None):
            _fail(f"{base}.lpips_backbone", f"expected {backbone!r}, got {entry.get('lpips_backbone')!r}")
        per_episode = _expect(entry, "per_episode", dict, base)
        per_camera = _expect(entry, "per_camera", dict, base)
        for cam in cameras:
            for m in metrics:
                rows = _expect(_expect(per_camera, cam, dict, f"{base}.per_camera"), m, list,
                               f"{base}.per_camera.{cam}")
                if len(rows) != n_ep:
                    _fail(f"{base}.per_camera.{cam}.{m}", f"expected {n_ep} episodes, got {len(rows)}")
                for i, row in enumerate(rows):
                    _numbers(row, horizon, f"{base}.per_camera.{cam}.{m}[{i}]")
        for g in groups:
            group = _expect(entry, g, dict, base)
            for m in metrics:
                cell = _expect(group, m, dict, f"{base}.{g}")
                steps = _numbers(_expect(cell, "per_step", list, f"{base}.{g}.{m}"), horizon,
                                 f"{base}.{g}.{m}.per_step")
                mean = _expect(cell, "mean", float, f"{base}.{g}.{m}")
                if abs(mean - float(np.mean(steps))) > 1e-6 * max(1.0, abs(mean)):
                    _fail(f"{base}.{g}.{m}.mean", f"{mean} is not the mean of per_step ({np.mean(steps)})")
                _numbers(_expect(_expect(per_episode, g, dict, f"{base}.per_episode"), m, list,
                                 f"{base}.per_episode.{g}"), n_ep, f"{base}.per_episode.{g}.{m}")
    names = list(models)
    expected_pairs = {(a, b, g, m) for a, b in model_pairs(names) for g in groups for m in metrics}
    seen = set()
    for i, row in enumerate(_expect(doc, "paired", list)):
        path = f"paired[{i}]"
        key = tuple(_expect(row, k, str, path) for k in ("model_a", "model_b", "group", "metric"))
        if key not in expected_pairs:
            _fail(path, f"unexpected comparison {key}")
        seen.add(key)
        wins, losses, ties, n = (_expect(row, k, int, path) for k in ("wins", "losses", "ties", "n"))
        if min(wins, losses, ties) < 0 or wins + losses != n or n + ties != n_ep:
            _fail(path, f"inconsistent counts wins={wins} losses={losses} ties={ties} n={n} for {n_ep} episodes")
        for k in ("win_rate", "p_value"):
            if not 0.0 <= _expect(row, k, float, path) <= 1.0:
                _fail(f"{path}.{k}", f"must lie in [0, 1], got {row[k]}")
    if seen != expected_pairs:
        _fail("paired", f"missing comparisons {sorted(expected_pairs - seen)[:3]}")
    ratings = _expect(_expect(doc, "elo", dict), "ratings", dict, "elo")
    if set(ratings) != set(names):
        _fail("elo.ratings", f"expected ratings of {names}, got {sorted(ratings)}")
    for name, r in ratings.items():
        low, _, high = (_expect(r, k, float, f"elo.ratings.{name}") for k in ("ci_low", "elo", "ci_high"))
        if low > high:
            _fail(f"elo.ratings.{name}", f"empty interval [{low}, {high}]")


def load_metrics(path: str | os.PathLike) -> dict:
    """Read and validate ``metrics.json`` (a file, or the folder holding it)."""
    return load_document(path, "metrics.json", validate_metrics, "persistworld evaluate")


# -- the table in the paper's shape ----------------------------------------------------------------------
TABLE_ORDER: tuple[str, ...] = ("ssim", "psnr", "lpips")
_FORMATS = {"ssim": "{:.3f}", "psnr": "{:.2f}", "lpips": "{:.3f}"}
_NAMES = {"ssim": "SSIM", "psnr": "PSNR", "lpips": "LPIPS"}


def fidelity_table(doc: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the fidelity table in the paper's shape: one row per model; per camera group
    (external = mean of the exterior cameras, wrist) SSIM, PSNR, LPIPS means over all steps; then Elo."""
    metrics = [m for m in TABLE_ORDER if m in doc["metrics"]]
    groups = list(doc["camera_groups"])
    label = {"exterior": "external", "wrist": "wrist"}
    headers = ["model"] + [f"{label.get(g, g)} {_NAMES[m]} {'↑' if HIGHER_IS_BETTER[m] else '↓'}"
                           for g in groups for m in metrics] + ["Elo [95% CI]"]
    rows = []
    for name, entry in doc["models"].items():
        r = doc["elo"]["ratings"][name]
        rows.append([name] + [_FORMATS[m].format(entry[g][m]["mean"]) for g in groups for m in metrics]
                    + [f"{r['elo']:.0f} [{r['ci_low']:.0f}, {r['ci_high']:.0f}]"])
    return headers, rows
