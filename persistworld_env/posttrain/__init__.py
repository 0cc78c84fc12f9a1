"""RL post-training of the world model (PersistWorld, DESIGN.md section 2).

* :mod:`.truth`: where the ground-truth future comes from (the dataset's recording, or the MiniDROID
  simulator run on any actions);
* :mod:`.groups`: one training group, steps S1-S3: draw an episode, start and prefix length, roll the
  prefix out with the old model, branch K candidates in one batched call, score them;
* :mod:`.update`: step S4's loss on a batch of candidate clips (DiffusionNFT, :mod:`persistworld_env.diffusion.nft`).

The command is ``persistworld posttrain`` (:mod:`training.posttrain`).
"""
