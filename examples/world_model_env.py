"""Step the world-model environment next to the MiniDROID simulator and watch the drift.

    python examples/world_model_env.py --model runs/wm/model --steps 14

``--model`` is a model directory from ``persistworld pretrain`` (or ``default`` once the embedded model
is installed). The scripted expert of the reset scene drives both; PSNR per camera is printed per step.
"""
from __future__ import annotations

import argparse

import gymnasium as gym

import persistworld_env  # noqa: F401  (registers the environments)
from persistworld_env.sim.recording import expert_action_chunks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="world model directory, or 'default'")
    parser.add_argument("--steps", type=int, default=14)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    env = gym.make("PersistWorld-DROID-v0", model=args.model, ground_truth="sim")
    obs, info = env.reset(seed=args.seed)
    print(f"instruction: {info['instruction']}")
    height, width = obs["wrist_left"].shape[1:3]
    chunks = expert_action_chunks(info["episode_seed"], info["task"], env.unwrapped.model.normalizer, height, width)
    for k in range(min(args.steps, len(chunks))):
        obs, reward, terminated, truncated, info = env.step(chunks[k])
        psnr = info["fidelity"]["psnr"]
        print(f"step {k + 1:2d}: PSNR " + "  ".join(f"{cam} {value:5.2f} dB" for cam, value in psnr.items()))
        if terminated or truncated:
            break
    env.close()


if __name__ == "__main__":
    main()
