"""PersistWorld: a learned multi-camera robot world model as a Gymnasium environment.

``import persistworld_env`` registers the environments (see :mod:`persistworld_env.registration`):
``PersistWorld-DROID-v0`` (the learned world model) and ``MiniDROID-Sim-v0`` (the ground-truth MuJoCo
simulator of the DROID setup, same spaces). ``persistworld_env.WorldModel.from_pretrained(path_or_name)``
loads a model directory.
"""
from persistworld_env._platform import configure_headless_rendering

configure_headless_rendering()

from persistworld_env.constants import CAMERAS  # noqa: E402
from persistworld_env.registration import register_envs  # noqa: E402

register_envs()

__version__ = "0.1.0"
__all__ = ["CAMERAS", "WorldModel", "__version__"]


def __getattr__(name: str):
    """Heavy names load lazily, so ``import persistworld_env`` stays light (simulator workers use it)."""
    if name == "WorldModel":
        from persistworld_env.models.world_model import WorldModel

        return WorldModel
    raise AttributeError(f"module 'persistworld_env' has no attribute {name!r}")
