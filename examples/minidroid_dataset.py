"""Generate a few MiniDROID episodes in the DROID LeRobot layout and read a world-model training sample.

    python examples/minidroid_dataset.py --out /tmp/minidroid_small --episodes 4
"""
from __future__ import annotations

import argparse

import persistworld_env  # noqa: F401  (headless rendering defaults)
from persistworld_env.data import LeRobotEpisodes, WorldModelDataset
from persistworld_env.sim.generation import generate_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/minidroid_small")
    parser.add_argument("--episodes", type=int, default=4)
    args = parser.parse_args()

    print(generate_dataset(args.out, args.episodes, seed=0, workers=1))
    reader = LeRobotEpisodes(args.out)
    for ep in reader.episode_indices:
        print(f"episode {ep}: {reader.length(ep)} frames at 15 Hz, '{reader.instruction(ep)}', "
              f"success={reader.episode_meta(ep).get('success')}")
    # Small sets need an explicit validation split: hold out the last episode (a single one is read whole).
    if len(reader.episode_indices) > 1:
        ds = WorldModelDataset(args.out, split="train", val_episodes=[reader.episode_indices[-1]])
    else:
        ds = WorldModelDataset(args.out, split="all")
    sample = ds[0]
    print("video", tuple(sample["video"].shape), "(6 history + 5 clip frames, views, H, W, RGB)")
    print("pose", tuple(sample["pose"].shape), "normalised to [-1, 1]; frame ticks", sample["frame_indices"].tolist())


if __name__ == "__main__":
    main()
