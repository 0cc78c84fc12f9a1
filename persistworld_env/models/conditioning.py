"""Action and instruction conditioning: one cross-attention token per frame.

``ActionEncoder`` maps each frame's normalised 7-D pose to a token with a 3-layer MLP
(7 -> d -> d -> d, SiLU), named as in Ctrl-World (``action_encode.{0,2,4}``) so its checkpoints load.
``InstructionEmbedding`` is a learned bag-of-words embedding of MiniDROID's templated instructions,
added to every frame's token (Ctrl-World adds a CLIP text embedding the same way).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
from torch import nn

from persistworld_env.constants import POSE_DIM


class ActionEncoder(nn.Module):
    """Per-frame pose tokens: (B, F, 7) -> (B, F, d)."""

    def __init__(self, dim: int, pose_dim: int = POSE_DIM) -> None:
        super().__init__()
        self.action_encode = nn.Sequential(
            nn.Linear(pose_dim, dim), nn.SiLU(), nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        for layer in (self.action_encode[0], self.action_encode[2]):
            nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")

    def forward(self, poses: torch.Tensor) -> torch.Tensor:
        return self.action_encode(poses)


def tokenize(instruction: str) -> list[str]:
    """Lower-case words of an instruction."""
    return re.findall(r"[a-z]+", instruction.lower())


class InstructionEmbedding(nn.Module):
    """Mean of learned word vectors over an instruction's in-vocabulary words (zeros if none)."""

    def __init__(self, vocabulary: Sequence[str], dim: int) -> None:
        super().__init__()
        self.vocabulary = list(vocabulary)
        self._index = {w: i + 1 for i, w in enumerate(self.vocabulary)}  # 0 = padding
        self.embed = nn.EmbeddingBag(len(self.vocabulary) + 1, dim, mode="sum", padding_idx=0)
        nn.init.normal_(self.embed.weight, std=0.02)
        with torch.no_grad():
            self.embed.weight[0].zero_()

    def forward(self, instructions: Sequence[str]) -> torch.Tensor:
        device = self.embed.weight.device
        ids = [[self._index[w] for w in tokenize(s) if w in self._index] or [0] for s in instructions]
        width = max(len(i) for i in ids)
        padded = torch.tensor([i + [0] * (width - len(i)) for i in ids], device=device)
        counts = torch.tensor([max(1, sum(1 for x in i if x)) for i in ids], device=device, dtype=torch.float32)
        return self.embed(padded) / counts[:, None].to(self.embed.weight.dtype)


#: Words of MiniDROID's instruction templates (colours, objects, verbs, directions).
MINIDROID_VOCABULARY: tuple[str, ...] = (
    "pick", "up", "put", "push", "the", "in", "to", "cube", "bowl", "cup", "left", "right",
    "red", "green", "blue", "yellow", "orange", "purple",
)
