"""``persistworld collect-success-frames``: world-model frames labelled by the simulator, for the success detector.

Runs a policy zoo (scripted experts, behaviour cloning at ``--bc-budgets``, random) from ``--episodes`` reset
seeds in a world model (batched) and in MiniDROID on the same actions
(:func:`persistworld_env.evaluation.success_frames.collect_success_frames`). Writes to ``--out``:
``success_frames.npz`` (every step's model frames with the simulator's verdict; ``persistworld train-success
--rollout-frames``), ``summary.json`` (rows and success frames per policy) and the behaviour-cloning policies it
trained (``policies/``). Use seeds and behaviour-cloning budgets other than those of the ``policy-eval`` run
that will judge the detector, so that the evaluation sees neither the scenes nor the policies.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

FRAMES_FILE = "success_frames.npz"


def run_collection(model: str, out: str, data: str | None, episodes: int, seed: int, max_steps: int,
                   num_envs: int, bc_budgets=(), bc_policies=(), bc_episodes: int = 100,
                   experts=("careful", "noisy", "sloppy"), include_random: bool = True, device: str = "cpu",
                   progress: bool = True) -> dict:
    """Collect, save and summarise; returns the summary."""
    from persistworld_env.data.io_utils import write_json_atomic
    from persistworld_env.evaluation.success_frames import SuccessFrames, collect_success_frames
    from persistworld_env.vector_env import PersistWorldVectorEnv
    from training.policy_eval import OBSERVED_FRAMES, build_zoo

    if episodes < 1 or max_steps < 1 or num_envs < 1:
        raise ValueError(f"--episodes, --max-steps and --num-envs must be >= 1, got {episodes}, {max_steps}, "
                         f"{num_envs}")
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    zoo = build_zoo(out_dir, data, bc_budgets, bc_policies, bc_episodes, experts, include_random, max_steps, seed,
                    progress)
    seeds = [seed + i for i in range(episodes)]
    # float32 like policy-eval and evaluate (not the envs' "auto"), so the detector sees the frames it is judged on
    venv = PersistWorldVectorEnv(num_envs=num_envs, model=model, device=device, max_episode_steps=max_steps + 1,
                                 dtype="float32", observed_frames=OBSERVED_FRAMES)  # the latest frame is collected
    try:
        parts = [collect_success_frames(venv, spec, seeds, max_steps, progress=progress) for spec in zoo]
    finally:
        venv.close()
    frames = SuccessFrames.concatenate(parts)
    path = frames.save(out_dir / FRAMES_FILE)
    summary = {"model": model, "file": str(path), "rows": len(frames), "success_rows": int(frames.labels.sum()),
               "seeds": [seeds[0], seeds[-1]], "max_steps": max_steps, "dtype": "float32",
               "per_policy": {p.policies[0]: {"rows": len(p), "success_rows": int(p.labels.sum()),
                                              "episodes_with_success": int(len(set(p.seeds[p.labels])))}
                              for p in parts}}
    write_json_atomic(out_dir / "summary.json", summary)
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    from training.policy_eval import add_zoo_arguments

    parser.add_argument("--model", default="default", help="world model directory (default: the embedded model)")
    parser.add_argument("--out", required=True, help="folder for success_frames.npz, summary.json, policies/")
    parser.add_argument("--data", default=None, help="MiniDROID dataset for behaviour cloning")
    parser.add_argument("--episodes", type=int, default=48, help="reset seeds per policy (default: 48)")
    parser.add_argument("--seed", type=int, default=6000, help="episode i resets with seed SEED + i (default: 6000)")
    parser.add_argument("--max-steps", type=int, default=20, help="env steps of 0.8 s per episode (default: 20)")
    parser.add_argument("--num-envs", type=int, default=12, help="world-model episodes stepped as one batch")
    add_zoo_arguments(parser, bc_budgets=(200, 800))
    parser.add_argument("--device", default="cpu", help="torch device of the world model")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def main(args: argparse.Namespace) -> int:
    summary = run_collection(args.model, args.out, args.data, args.episodes, args.seed, args.max_steps, args.num_envs,
                             bc_budgets=args.bc_budgets, bc_policies=args.bc_policy, bc_episodes=args.bc_episodes,
                             experts=args.experts, include_random=args.include_random, device=args.device,
                             progress=not args.no_progress)
    print(json.dumps(summary, indent=2))
    return 0
