"""``persistworld policy-eval``: does a world model rank policies like the simulator does?

A zoo of policies of spread quality (scripted experts at three noise levels, image-based behaviour
cloning trained to several step budgets on MiniDROID, a random policy) runs ``--episodes`` episodes
from the same reset seeds in ``MiniDROID-Sim-v0`` (success: the simulator's task predicate) and in each
``--model`` as ``PersistWorld-DROID-v0`` (success: the learned success detector, ``reward="success"``;
:func:`model_env` is the one place that decides it). Per model: success rates, Pearson r and MMRV
(SIMPLER's definition) against the simulator with bootstrap intervals over seeds.

Writes to ``--out``: ``policy_eval.json`` (schema: :mod:`persistworld_env.evaluation.policy_agreement`),
``policy_scatter.png``, the trained behaviour-cloning policies (``policies/bc-<steps>/``) and one result
file per world and policy (``runs/``): rerunning the same command resumes, reusing finished runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Sequence

from training.cli import add_dtype_argument

REAL_WORLD = "sim"


#: Frames per camera the policy-evaluation envs observe: the zoo's policies and the success detector look at the
#: latest frame only, so only that one is rendered (simulator) or decoded (world model).
OBSERVED_FRAMES = 1


def sim_env(height: int, width: int, task: str | None):
    """``MiniDROID-Sim-v0`` as a one-env vector env (it terminates at the first success)."""
    import gymnasium as gym

    from persistworld_env.sim.env import MiniDROIDSimEnv

    return gym.vector.SyncVectorEnv([lambda: MiniDROIDSimEnv(height, width, task=task,
                                                             observed_frames=OBSERVED_FRAMES)])


def model_env(model: str, num_envs: int = 1, *, device: str = "cpu", sampling_steps: int | None = None,
              guidance: float | None = None, task: str | None = None, max_steps: int = 25,
              success_detector: str | None = None, success_threshold: float | None = None,
              success_steps: int | None = None, dtype: str | None = None):
    """The world model as a vector env whose per-step ``info["success"]`` is its learned success detector.

    One env: ``PersistWorldEnv(reward="success")`` (the detector from ``success_detector`` or the model
    directory's ``success_detector/``; it also terminates on success). Several: the batched
    ``PersistWorldVectorEnv`` with the same :class:`~persistworld_env.success.SuccessReward` as its reward,
    which reports ``info["success"]`` per sub-env. ``dtype``: the world model's weights (None: float32).
    """
    import gymnasium as gym

    from persistworld_env.world_model_env import PersistWorldEnv

    common = dict(model=model, device=device, sampling_steps=sampling_steps, guidance=guidance, task=task,
                  dtype=dtype, observed_frames=OBSERVED_FRAMES)
    if num_envs == 1:
        return gym.vector.SyncVectorEnv([lambda: PersistWorldEnv(
            reward="success", success_detector=success_detector, success_threshold=success_threshold,
            success_steps=success_steps, **common)])
    from persistworld_env.success import SuccessReward, load_success_detector
    from persistworld_env.vector_env import PersistWorldVectorEnv

    reward = SuccessReward(load_success_detector(success_detector, model, device), success_threshold,
                           consecutive_steps=success_steps)
    return PersistWorldVectorEnv(num_envs=num_envs, reward=reward, max_episode_steps=max_steps, **common)


def env_normalizer(venv):
    """The pose normaliser of a vector env's observations and actions."""
    inner = venv.envs[0].unwrapped if hasattr(venv, "envs") else venv
    return inner.model.normalizer if hasattr(inner, "model") else inner.normalizer


def build_zoo(out: Path, data: str | None, bc_budgets: Sequence[int], bc_policies: Sequence[str], bc_episodes: int,
              experts: Sequence[str], include_random: bool, max_steps: int, seed: int, progress: bool) -> list:
    """The policy specs: experts, behaviour cloning (trained into ``out/policies`` or reused), random."""
    from persistworld_env.evaluation.policies import (
        BCModel, bc_spec, bc_training_samples, expert_spec, random_spec, train_bc_policy,
    )

    zoo = [expert_spec(level, max_steps) for level in experts]
    samples = None
    for steps in sorted(set(int(b) for b in bc_budgets)):
        folder = out / "policies" / f"bc-{steps}"
        if (folder / "model.safetensors").is_file():
            model = BCModel.from_pretrained(folder)
        else:
            if data is None:
                raise ValueError("--bc-budgets needs --data (MiniDROID episodes to clone)")
            if samples is None:
                samples = bc_training_samples(data, bc_episodes, progress=progress)
            model = train_bc_policy(data, steps, seed=seed, max_episodes=bc_episodes, samples=samples,
                                    progress=progress)
            model.save_pretrained(folder)
        zoo.append(bc_spec(model, path=str(folder)))
    for text in bc_policies:
        name, sep, path = text.partition("=")
        name, path = (name, path) if sep else (None, text)
        zoo.append(bc_spec(BCModel.from_pretrained(path), name=name, path=path))
    if include_random:
        zoo.append(random_spec())
    names = [s.name for s in zoo]
    if len(set(names)) != len(names):
        raise ValueError(f"policy names must be unique, got {names}")
    if len(zoo) < 2:
        raise ValueError("policy evaluation needs at least 2 policies")
    return zoo


def policy_key(spec) -> dict:
    """What identifies a policy's stored outcomes: its description without where its files lie (a
    behaviour-cloning policy is named by its weights' SHA-256), so a copied output folder is reused."""
    described = spec.describe()
    return {**described, "config": {k: v for k, v in described["config"].items() if k != "path"}}


def files_sha256(directory: str | Path | None) -> str | None:
    """SHA-256 over the files of a model directory (names and bytes, model cards (``*.md``) excluded): the
    identity of a world model and its detector in stored outcomes, so that replacing the weights behind a
    path (or the embedded default) is never mistaken for the same model."""
    import hashlib

    if directory is None:
        return None
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(f"no model directory at {root}")
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".md"):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _cached_run(path: Path, key: dict, run) -> list[bool]:
    """The outcomes stored at ``path`` for exactly these settings (``key``), else ``run()``'s (then stored)."""
    key = json.loads(json.dumps(key))
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return [bool(x) for x in stored["success"]]
    from persistworld_env.data.io_utils import write_json_atomic

    success = [bool(x) for x in run()]
    write_json_atomic(path, {"key": key, "success": success})  # an interrupted run leaves no torn file
    return success


def run_policy_eval(models: Sequence[str], out: str, data: str | None = None, episodes: int = 20,
                    max_steps: int = 20, seed: int = 0, bc_budgets: Sequence[int] = (200, 1000, 4000),
                    bc_policies: Sequence[str] = (), bc_episodes: int = 100,
                    experts: Sequence[str] = ("careful", "noisy", "sloppy"), include_random: bool = True,
                    task: str | None = None, num_envs: int = 1, sampling_steps: int | None = None,
                    guidance: float | None = None, success_detector: str | None = None,
                    success_threshold: float | None = None, success_steps: int | None = None,
                    bootstrap: int = 1000, device: str = "cpu", dtype: str | None = None,
                    progress: bool = True, command: str | None = None) -> dict:
    """Run the zoo in the simulator and in every model; write ``out`` and return policy_eval.json's content.

    ``dtype``: the world models' weights (None: float32; see ``WorldModel.from_pretrained``)."""
    from persistworld_env.constants import DEFAULT_HEIGHT, DEFAULT_WIDTH
    from persistworld_env.evaluation.fidelity import ModelSpec, unique_specs
    from persistworld_env.evaluation.plots import plot_policy_scatter
    from persistworld_env.evaluation.policies import run_policy
    from persistworld_env.evaluation.policy_agreement import build_policy_eval_document, validate_policy_eval
    from persistworld_env.models.world_model import dtype_name
    from persistworld_env.success import model_directory
    from training.cli import command_line

    if episodes < 1 or max_steps < 1 or num_envs < 1:
        raise ValueError(f"--episodes, --max-steps and --num-envs must be >= 1, got {episodes}, {max_steps}, "
                         f"{num_envs}")
    specs = unique_specs([ModelSpec.parse(m) for m in models])
    if REAL_WORLD in {s.name for s in specs}:
        raise ValueError(f"{REAL_WORLD!r} names the simulator's results; name the model otherwise")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [seed + i for i in range(episodes)]
    zoo = build_zoo(out_dir, data, bc_budgets, bc_policies, bc_episodes, experts, include_random, max_steps, seed,
                    progress)
    height, width = DEFAULT_HEIGHT, DEFAULT_WIDTH
    if data is not None:
        from persistworld_env.data.lerobot_reader import LeRobotEpisodes

        height, width = LeRobotEpisodes(data).image_shape("exterior_1_left")

    def run_all(venv, world: str, settings: dict) -> dict[str, list[bool]]:
        normalizer = env_normalizer(venv)
        key = {"seeds": seeds, "max_steps": max_steps, "task": task, "world": settings}
        return {spec.name: _cached_run(out_dir / "runs" / world / f"{spec.name}.json",
                                       {**key, "policy": policy_key(spec)},
                                       lambda: run_policy(venv, spec, seeds, max_steps, normalizer,
                                                          progress=progress, desc=f"{world}: {spec.name}"))
                for spec in zoo}

    venv = sim_env(height, width, task)
    try:
        real = run_all(venv, REAL_WORLD, {"env": "MiniDROID-Sim-v0", "height": height, "width": width})
    finally:
        venv.close()
    results: dict[str, dict[str, Any]] = {}
    for spec in specs:
        venv = model_env(spec.path, num_envs, device=device, sampling_steps=sampling_steps, guidance=guidance,
                         task=task, max_steps=max_steps, success_detector=success_detector,
                         success_threshold=success_threshold, success_steps=success_steps, dtype=dtype)
        try:
            settings = {"model_sha256": files_sha256(model_directory(spec.path)), "sampling_steps": sampling_steps,
                        "guidance": guidance, "success_detector_sha256": files_sha256(success_detector),
                        "success_threshold": success_threshold, "success_steps": success_steps,
                        **({"dtype": dtype_name(dtype, device)} if dtype else {})}
            # (float32 runs without --dtype keep their earlier stored key; "auto" is recorded as what it chose)
            results[spec.name] = {"path": spec.path, "success": run_all(venv, f"model-{spec.name}", settings)}
        finally:
            venv.close()
    doc = build_policy_eval_document(
        [s.describe() for s in zoo], seeds, real, results, max_steps=max_steps, task=task, seed=seed,
        command=command if command is not None else command_line(),
        bootstrap=bootstrap,
        model_source="learned success detector" + (f" {success_detector}" if success_detector else
                                                   " (the model's success_detector/)") + " via info['success']")
    validate_policy_eval(doc)
    notes = [f"{m}: r = {_fmt(e['pearson']['value'])}, MMRV = {_fmt(e['mmrv']['value'])}"
             for m, e in doc["models"].items()]
    scatter = plot_policy_scatter(doc["real"]["rate"], {m: e["rate"] for m, e in doc["models"].items()},
                                  out_dir / "policy_scatter.png", annotations=notes,
                                  title=f"{len(zoo)} policies x {episodes} seeds, {max_steps} steps")
    doc["figures"] = {"scatter": scatter.name}
    (out_dir / "policy_eval.json").write_text(json.dumps(doc, indent=1))
    return doc


def _fmt(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def print_table(doc: dict) -> None:
    """Success rates per policy and world, and the agreement of each model with the simulator."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"policy success over {len(doc['seeds'])} seeds ({doc['max_steps']} steps of 0.8 s)")
    table.add_column("policy")
    table.add_column("MiniDROID-Sim-v0", justify="right")
    for m in doc["models"]:
        table.add_column(m, justify="right")
    for p in doc["real"]["rate"]:
        table.add_row(p, f"{doc['real']['rate'][p]:.2f}", *[f"{e['rate'][p]:.2f}" for e in doc["models"].values()])
    for key, label in (("pearson", "Pearson r"), ("mmrv", "MMRV (lower is better)")):
        table.add_row(label, "", *[f"{_fmt(e[key]['value'])} [{_fmt(e[key]['ci_low'])}, {_fmt(e[key]['ci_high'])}]"
                                   for e in doc["models"].values()])
    Console().print(table)


def add_zoo_arguments(parser: argparse.ArgumentParser, bc_budgets: Sequence[int]) -> None:
    """The policy-zoo options (:func:`build_zoo`), shared with ``collect-success-frames``."""
    parser.add_argument("--bc-budgets", type=int, nargs="*", default=list(bc_budgets),
                        help="behaviour-cloning training steps, one policy each (default: "
                             f"{' '.join(map(str, bc_budgets))})")
    parser.add_argument("--bc-policy", action="append", default=[], metavar="NAME=DIR",
                        help="an already trained behaviour-cloning policy directory (repeatable)")
    parser.add_argument("--bc-episodes", type=int, default=100, help="training episodes for behaviour cloning")
    parser.add_argument("--experts", nargs="*", default=["careful", "noisy", "sloppy"],
                        choices=["careful", "noisy", "sloppy"], help="scripted expert noise levels")
    parser.add_argument("--no-random", dest="include_random", action="store_false", help="leave out the random policy")


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", action="append", required=True, metavar="NAME=PATH",
                        help="world model (repeat for several); its directory should hold success_detector/ "
                             "unless --success-detector is given")
    parser.add_argument("--out", required=True, help="folder for policy_eval.json, the scatter plot, policies, runs")
    parser.add_argument("--data", default=None, help="MiniDROID dataset for behaviour cloning (and the image size)")
    parser.add_argument("--episodes", type=int, default=20, help="episodes per policy and world (default: 20)")
    parser.add_argument("--max-steps", type=int, default=20, help="env steps of 0.8 s per episode (default: 20)")
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed SEED + i (default: 0)")
    add_zoo_arguments(parser, bc_budgets=(200, 1000, 4000))
    parser.add_argument("--task", choices=["pick", "place", "push"], default=None, help="one task family only")
    parser.add_argument("--num-envs", type=int, default=1, help="world-model episodes stepped as one batch")
    parser.add_argument("--sampling-steps", type=int, default=None, help="override the models' sampling steps")
    parser.add_argument("--guidance", type=float, default=None, help="override the models' guidance scale")
    parser.add_argument("--success-detector", default=None, help="success detector directory for every model "
                        "(default: each model's success_detector/)")
    parser.add_argument("--success-threshold", type=float, default=None, help="P(success) threshold (default: "
                        "the detector's own)")
    parser.add_argument("--success-steps", type=int, default=None, help="steps in a row the detector must judge a "
                        "success before the episode counts (default: the detector's own)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the seeds")
    parser.add_argument("--device", default="cpu", help="torch device of the world models")
    add_dtype_argument(parser)
    return parser


def main(args: argparse.Namespace) -> int:
    doc = run_policy_eval(args.model, args.out, data=args.data, episodes=args.episodes, max_steps=args.max_steps,
                          seed=args.seed, bc_budgets=args.bc_budgets, bc_policies=args.bc_policy,
                          bc_episodes=args.bc_episodes, experts=args.experts, include_random=args.include_random,
                          task=args.task, num_envs=args.num_envs, sampling_steps=args.sampling_steps,
                          guidance=args.guidance, success_detector=args.success_detector,
                          success_threshold=args.success_threshold, success_steps=args.success_steps,
                          bootstrap=args.bootstrap, device=args.device, dtype=args.dtype,
                          command=getattr(args, "command_line", None))
    print_table(doc)
    print(f"wrote {Path(args.out) / 'policy_eval.json'}")
    return 0
