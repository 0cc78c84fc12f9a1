"""Diffusion maths of the world model: EDM preconditioning and training noise (``edm``), samplers (``sampling``).

Small pure functions on tensors, kept apart from the networks that use them.
"""
from persistworld_env.diffusion.edm import (
    EDMConfig,
    denoise,
    loss_weight,
    precondition,
    sample_training_sigma,
)
from persistworld_env.diffusion.sampling import (
    classifier_free_guidance,
    frame_guidance_scales,
    karras_sigmas,
    sample_euler,
)

__all__ = [
    "EDMConfig", "denoise", "loss_weight", "precondition", "sample_training_sigma",
    "classifier_free_guidance", "frame_guidance_scales", "karras_sigmas", "sample_euler",
]
