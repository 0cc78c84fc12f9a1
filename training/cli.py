"""The ``persistworld`` command line: ``persistworld <command> --help`` documents each command."""
from __future__ import annotations

import argparse
import importlib
import json
import shlex
import sys

#: Commands implemented by a module with ``add_arguments(parser)`` and ``main(args)``.
MODULE_COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("train-vae", "training.train_autoencoder", "train the per-camera image autoencoder on a LeRobot dataset"),
    ("vae-eval", "persistworld_env.models.vae_quality", "print an autoencoder's reconstruction PSNR per camera"),
    ("pretrain", "training.pretrain", "pretrain the world model (EDM, teacher-forced); accelerate-ready"),
    ("posttrain", "training.posttrain", "RL post-training for long-horizon persistence (PersistWorld, DiffusionNFT); "
                                        "accelerate-ready"),
    ("swap-decoder", "training.swap_decoder", "give a world model a fine-tuned decoder of the same latent space "
                                              "(from train-vae --train decoder)"),
    ("tune-decoder", "training.tune_decoder", "fine-tune a world model's decoder on the latents it generates in "
                                              "replays (sharper, truer frames; denoiser unchanged)"),
    ("average", "training.average", "average the weights of several fine-tunes of one base model (a model soup)"),
    ("quality", "training.quality", "print a world model's fidelity on held-out episodes (VAE, one clip, replay)"),
    ("collect-success-frames", "training.success_frames", "world-model frames of a policy zoo labelled by the "
     "simulator on the same actions (training data for the success detector)"),
    ("train-success", "training.train_success", "train the success detector (views + instruction -> P(success))"),
    ("evaluate", "training.evaluate", "replay fidelity of world models: metrics.json, curves, videos, sign tests, Elo"),
    ("policy-eval", "training.policy_eval", "policy zoo in the simulator vs in world models: Pearson r and MMRV"),
    ("report", "training.report", "write docs/results.md from the outputs of evaluate and policy-eval"),
)


def _cmd_demo(args: argparse.Namespace) -> int:
    from training.demo import run_demo

    run_demo(out=args.out, steps=args.steps, seed=args.seed, task=args.task, model=args.model, device=args.device,
             dtype=args.dtype)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    import persistworld_env  # noqa: F401
    from persistworld_env.sim.generation import generate_dataset

    summary = generate_dataset(args.out, args.episodes, seed=args.seed, height=args.height, width=args.width,
                               workers=args.workers, task=args.task, low_poly=not args.full_meshes,
                               min_seconds=args.min_seconds)
    print(json.dumps(summary, indent=2))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from training.bench import run_benchmark

    figures = run_benchmark(args.target, args)
    if args.json:
        print(json.dumps(figures))
    return 0


#: ``--dtype`` choices of the commands that run a model (see ``WorldModel.from_pretrained``).
DTYPE_CHOICES = ("float32", "float16", "bfloat16", "auto")


def add_dtype_argument(parser: argparse.ArgumentParser, what: str = "the models' weights",
                       default: str | None = None) -> None:
    """``--dtype`` for a command that runs world models (``default`` None = float32)."""
    parser.add_argument("--dtype", choices=DTYPE_CHOICES, default=default,
                        help=f"precision of {what} (default: {default or 'float32'}; bfloat16 is faster on GPUs and "
                             "on CPUs with bfloat16 units, e.g. lscpu lists amx_bf16; float16 is for GPUs; auto = "
                             "bfloat16 on a CUDA GPU of compute capability >= 8 and on a CPU with AMX tiles, else "
                             "float32)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="persistworld", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="replay a scripted expert and write a video + contact sheet (README command 1)")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--steps", type=int, default=14, help="environment steps of 0.8 s (default: 14)")
    p.add_argument("--seed", type=int, default=0, help="reset seed (default: 0)")
    p.add_argument("--task", choices=["pick", "place", "push"], default=None, help="task family (default: random)")
    p.add_argument("--model", default="default", help="world model directory (default: the embedded model)")
    p.add_argument("--device", default="cpu", help="torch device for the world model (default: cpu)")
    add_dtype_argument(p, "the model's weights (the env's default)", default="auto")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("generate", help="generate MiniDROID episodes in the DROID LeRobot layout (resumable)")
    p.add_argument("--out", required=True, help="dataset folder; an existing one is resumed")
    p.add_argument("--episodes", type=int, required=True, help="total number of episodes wanted")
    p.add_argument("--seed", type=int, default=0, help="base seed; episode i uses an independent stream (default: 0)")
    p.add_argument("--height", type=int, default=48, help="image height (default: 48, DROID's 3:5 aspect)")
    p.add_argument("--width", type=int, default=80, help="image width (default: 80)")
    p.add_argument("--workers", type=int, default=2, help="simulator processes (default: 2)")
    p.add_argument("--task", choices=["pick", "place", "push"], default=None, help="one task family only")
    p.add_argument("--full-meshes", action="store_true", help="render the arm with its detailed meshes (slower)")
    p.add_argument("--min-seconds", type=float, default=0.0,
                   help="make every episode at least this long: after its task the expert brings the arm back to "
                        "its start and holds it (long-horizon evaluation sets; 12 covers 14 replay steps)")
    p.set_defaults(func=_cmd_generate)

    for name, module_path, help_text in MODULE_COMMANDS:
        module = importlib.import_module(module_path)
        p = sub.add_parser(name, help=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.main)

    p = sub.add_parser("bench", help="print performance figures")
    p.add_argument("target", choices=["data", "sampler", "env", "posttrain"],
                   help="data = generation and loader throughput; sampler = world-model env-step cost; "
                        "env = env steps/s, batched vs gymnasium's SyncVectorEnv; posttrain = seconds per "
                        "post-training group and where they go, K candidates batched vs one by one")
    p.add_argument("--model", default="default", help="model directory for the sampler, env and posttrain "
                   "benchmarks (default: the embedded model, what gym.make runs)")
    p.add_argument("--episodes", type=int, default=20, help="episodes to generate for the data benchmark")
    p.add_argument("--data", default=None, help="existing dataset for the loader benchmark (default: the generated one)")
    p.add_argument("--workers", type=int, default=2, help="generator / loader worker processes")
    p.add_argument("--device", default="cpu", help="torch device for the sampler benchmark (default: cpu)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default=None,
                   help="precision: of the model's weights for the sampler and env benchmarks (default: auto, the "
                        "env's default: bfloat16 on a CUDA GPU of compute capability >= 8 and on a CPU with AMX "
                        "tiles, else float32), of accelerate's mixed precision (autocast) for the posttrain "
                        "benchmark (default: float32, as `posttrain`)")
    p.add_argument("--observed-frames", type=int, default=4, choices=range(1, 5), metavar="{1..4}",
                   help="env benchmark: frames per camera in each observation, the last of each step's 4 (default 4; "
                        "1 = the latest frame only, decoding a quarter of the frames)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_bench)
    return parser


def command_line(argv: list[str] | None = None) -> str:
    """This run's ``persistworld ...`` command line (outputs record it so every number can be reproduced)."""
    return "persistworld " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.command_line = command_line(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume where it applies", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
