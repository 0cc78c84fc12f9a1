"""PersistWorld: a learned multi-camera robot world model as a Gymnasium environment.

``import persistworld_env`` registers the environments (see :mod:`persistworld_env.registration`):
``MiniDROID-Sim-v0``, the ground-truth MuJoCo simulator of the DROID setup.
"""
from persistworld_env._platform import configure_headless_rendering

configure_headless_rendering()

from persistworld_env.constants import CAMERAS  # noqa: E402
from persistworld_env.registration import register_envs  # noqa: E402

register_envs()

__version__ = "0.1.0"
__all__ = ["CAMERAS", "__version__"]
