"""``persistworld average``: one model from the weight average of several fine-tunes of one base model.

Post-training moves the weights in small, noisy steps; the checkpoints of one run (or of runs from one base)
differ from each other mostly by that noise. Their average keeps the direction they share and cancels much
of the noise (stochastic weight averaging, Izmailov et al. 2018; "model soups", Wortsman et al. 2022).
``posttrain --average-decay`` does the same within a run; this command does it after the fact, from model
directories.

Only the denoiser is averaged: the autoencoder, the pose normalisation and the configuration must be the
same in every model (they are for post-trained models of one base), else the command stops and names what
differs. The result is a standalone model directory (the first model's success detector is carried over)
whose model card lists every source with its weight and its own card.
"""
from __future__ import annotations

import argparse
import math
from typing import Sequence

import torch

from persistworld_env.models.world_model import WorldModel


def _check_same_base(models: Sequence[WorldModel], paths: Sequence[str]) -> None:
    first, first_path = models[0], paths[0]
    for model, path in zip(models[1:], paths[1:]):
        if model.config.to_dict() != first.config.to_dict():
            raise ValueError(f"{path} and {first_path} have different configurations: only fine-tunes of one "
                             "base model can be averaged")
        if model.normalizer.to_dict() != first.normalizer.to_dict():
            raise ValueError(f"{path} and {first_path} have different pose normalisations")
        ours, theirs = first.autoencoder.state_dict(), model.autoencoder.state_dict()
        if ours.keys() != theirs.keys() or any(not torch.equal(ours[k], theirs[k]) for k in ours):
            raise ValueError(f"{path} and {first_path} have different autoencoders: only the denoiser is averaged")


def average_models(paths: Sequence[str], weights: Sequence[float] | None = None, command: str = "") -> WorldModel:
    """The weighted average (uniform by default) of the denoisers of the model directories ``paths``.

    Floating-point tensors are averaged in float64 and cast back; any other tensor must be equal in all.
    ``command`` (the command line that made it) goes into the model card.
    """
    if len(paths) < 2:
        raise ValueError(f"need at least two models to average, got {len(paths)}")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths):
        raise ValueError(f"got {len(weights)} weights for {len(paths)} models")
    if any(not math.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be finite and > 0, got {weights}")
    total = sum(weights)
    models = [WorldModel.from_pretrained(p) for p in paths]
    _check_same_base(models, [str(p) for p in paths])
    states = [m.denoiser.state_dict() for m in models]
    averaged = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            mean = sum(s[key].double() * (w / total) for s, w in zip(states, weights))
            averaged[key] = mean.to(first.dtype)
        elif all(torch.equal(s[key], first) for s in states[1:]):
            averaged[key] = first
        else:
            raise ValueError(f"the non-float tensor {key!r} differs between the models and cannot be averaged")
    result = models[0]
    result.denoiser.load_state_dict(averaged, strict=True)
    result.model_card = _model_card(paths, weights, [m.model_card for m in models], command)
    return result


def _model_card(paths: Sequence[str], weights: Sequence[float], cards: Sequence[str], command: str) -> str:
    total = sum(weights)
    lines = ["# PersistWorld world model (weight average)", "",
             f"The denoiser weights of {len(paths)} models of one base, averaged "
             + ("uniformly" if len(set(weights)) == 1 else "with the weights below")
             + " (`persistworld average`); the autoencoder and everything else are theirs.", "",
             f"- command: `{command or '(from Python)'}`", ""]
    lines += [f"- `{p}`: weight {w / total:.3f}" for p, w in zip(paths, weights)]
    for i, (path, card) in enumerate(zip(paths, cards), 1):
        lines += ["", f"## Source {i}: `{path}`", "", card.strip() or "(no model card)"]
    return "\n".join(lines) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--model", action="append", required=True, metavar="DIR",
                        help="a model directory (repeat, at least twice); all fine-tunes of one base model")
    parser.add_argument("--weights", default=None,
                        help="comma-separated weights, one per --model in order (default: uniform)")
    parser.add_argument("--out", required=True, help="model directory to write")
    return parser


def main(args: argparse.Namespace) -> int:
    from training.checkpoints import save_derived_model

    try:
        weights = [float(w) for w in args.weights.split(",")] if args.weights else None
        model = average_models(args.model, weights, command=getattr(args, "command_line", ""))
    except ValueError as e:
        raise SystemExit(f"persistworld average: {e}") from None
    out = save_derived_model(model, args.out, args.model[0])
    print(f"wrote {out} (the average of {len(args.model)} models)")
    return 0
