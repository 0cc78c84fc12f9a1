"""Networks of the world model: the image autoencoder (``autoencoder``, ``image_codec``), the denoiser, ...

Only torch-level names are imported here (diffusers loads when a model is built or loaded).
"""
from persistworld_env._platform import guard_cpu_torchvision

guard_cpu_torchvision()  # before anything imports diffusers, transformers or lpips

from persistworld_env.models.autoencoder import (  # noqa: E402
    AUTOENCODER_CONFIGS,
    ModelLoadError,
    build_autoencoder,
    compute_scaling_factor,
    load_autoencoder,
    load_codec,
)
from persistworld_env.models.image_codec import LatentCodec, float_to_uint8, stack_views, uint8_to_float, unstack_views  # noqa: E402

__all__ = [
    "AUTOENCODER_CONFIGS", "ModelLoadError", "build_autoencoder", "compute_scaling_factor", "load_autoencoder",
    "load_codec", "LatentCodec", "float_to_uint8", "stack_views", "uint8_to_float", "unstack_views"
]
