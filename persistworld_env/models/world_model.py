"""``WorldModel``: autoencoder + denoiser + pose normalisation + sampling defaults, saved as one directory.

Directory layout (``save_pretrained`` / ``from_pretrained``)::

    config.json                 scale, image size, cameras, denoiser / sampler configs, history offsets
    normalization.json          pose bounds (1st / 99th percentiles of the training data)
    denoiser.safetensors        UNet + action encoder + instruction embedding
    autoencoder/                a diffusers autoencoder directory (config.json + safetensors)
    README.md                   model card: data, command, steps, metrics

``WorldModel.from_pretrained("default")`` loads the model embedded in the package.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from persistworld_env.constants import CAMERAS, DEFAULT_HEIGHT, DEFAULT_WIDTH, EXTERIOR_CAMERAS
from persistworld_env.data.io_utils import write_text_atomic
from persistworld_env.data.stats import PoseNormalizer
from persistworld_env.models.autoencoder import (ModelLoadError, build_autoencoder, load_autoencoder,
                                                  load_safetensors_into, save_safetensors_atomic)
from persistworld_env.models.clip_sampler import SamplerConfig
from persistworld_env.models.denoiser import DENOISER_SCALES, DenoiserConfig, WorldModelDenoiser
from persistworld_env.models.image_codec import LatentCodec, float_to_uint8, is_temporal_autoencoder, uint8_to_float

CONFIG_FILE = "config.json"
NORMALIZATION_FILE = "normalization.json"
DENOISER_FILE = "denoiser.safetensors"
AUTOENCODER_DIR = "autoencoder"
MODEL_CARD = "README.md"
#: Sampling defaults per scale (Ctrl-World: 50 Euler steps, guidance 2, sigma_max 700).
SAMPLER_SCALES: dict[str, dict] = {"ctrl-world": {"steps": 50, "guidance": 2.0, "sigma_max": 700.0}}
#: Cameras decoded relative to the reference frame, per scale (the fixed MiniDROID cameras at ``default``).
REFERENCE_CAMERAS_SCALES: dict[str, tuple[str, ...]] = {"default": EXTERIOR_CAMERAS}
#: Names resolved to model directories shipped inside the package.
EMBEDDED_MODELS = {"default": "default_model"}
#: Names a model's weights can be loaded in (``dtype=`` of :meth:`WorldModel.from_pretrained` and the envs).
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
#: ``dtype="auto"``: :func:`auto_dtype` of the device (the envs' default).
AUTO_DTYPE = "auto"


@dataclass
class WorldModelConfig:
    """Everything but the weights."""

    scale: str = "default"
    height: int = DEFAULT_HEIGHT
    width: int = DEFAULT_WIDTH
    cameras: tuple[str, ...] = CAMERAS
    denoiser: DenoiserConfig = field(default_factory=DenoiserConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    #: Memory read at every step: entries of the history buffer (one per step, the last is the current
    #: frame; 0 is the real first frame). Default = training's spacing of one step (4 frames at 5 Hz).
    history_offsets: tuple[int, ...] = (-7, -6, -5, -4, -3, -2)
    #: Cameras decoded relative to the rollout's reference (first real) frame: frame = reference +
    #: D(z) - D(z_reference). For cameras fixed in the scene this keeps whatever the model leaves
    #: unchanged pixel-exact instead of re-rendering it through the autoencoder at every step.
    #: Empty = plain decoding D(z) (Ctrl-World's behaviour).
    reference_cameras: tuple[str, ...] = ()
    #: Per reference camera, the factor by which its reference correction fades per frame (world-model
    #: frames, 0.2 s): frame k after the reference gets ``decay ** k`` of it. For a moving camera (the wrist)
    #: the real frame's detail is right for the next frames only. Cameras not named keep it whole (1.0).
    reference_decay: dict[str, float] = field(default_factory=dict)
    #: Per reference camera, a motion gate on its reference correction: each pixel gets
    #: ``exp(-(|D(z) - D(z_reference)| / tau) ** 2)`` of it (the change averaged over RGB, images in [-1, 1]), so
    #: the real frame's detail stays where the model's frame has not changed and leaves where it has. Not named:
    #: no gate.
    reference_gate: dict[str, float] = field(default_factory=dict)
    #: Per reference camera, a pose gate on its reference correction: a frame gets
    #: ``exp(-(|dxyz| / position) ** 2 - (|drpy| / rotation) ** 2)`` of it, with ``dxyz`` (m) and ``drpy`` (rad) the
    #: change of the commanded end-effector pose since the reference frame (:func:`pose_gate`). For a camera on the
    #: arm (the wrist) the real frame's detail is right while the arm has not moved and wrong once it has.
    #: ``{"wrist_left": {"position": 0.015, "rotation": 0.02}}``; not named: no gate.
    reference_pose_gate: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cameras"], d["history_offsets"] = list(self.cameras), list(self.history_offsets)
        d["reference_cameras"] = list(self.reference_cameras)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WorldModelConfig":
        d = dict(d)
        d["denoiser"] = DenoiserConfig.from_dict(d["denoiser"])
        d["sampler"] = SamplerConfig(**d["sampler"])
        d["cameras"], d["history_offsets"] = tuple(d["cameras"]), tuple(d["history_offsets"])
        d["reference_cameras"] = tuple(d.get("reference_cameras", ()))
        for key in ("reference_decay", "reference_gate"):
            d[key] = {str(k): float(v) for k, v in d.get(key, {}).items()}
        d["reference_pose_gate"] = {str(cam): {str(k): float(v) for k, v in scales.items()}
                                    for cam, scales in d.get("reference_pose_gate", {}).items()}
        return cls(**d)


#: The scales a ``reference_pose_gate`` entry names.
POSE_GATE_SCALES = ("position", "rotation")


def pose_gate(pose_change: torch.Tensor, position_scale: torch.Tensor, rotation_scale: torch.Tensor) -> torch.Tensor:
    """Share of a reference correction kept after the end effector moved by ``pose_change``.

    ``exp(-(|dxyz| / position_scale) ** 2 - (|drpy| / rotation_scale) ** 2)``, with ``dxyz`` the position change
    (m) and ``drpy`` the roll/pitch/yaw change (rad, wrapped to [-pi, pi]).

    Args:
        pose_change: raw pose minus the reference's raw pose, (..., 7) (x, y, z, roll, pitch, yaw, gripper).
        position_scale, rotation_scale: per camera, (V,); a scale of 0 leaves that term out (both 0: no gate).
    Returns: (..., V).
    """
    change = torch.as_tensor(pose_change, dtype=torch.float32)
    position = change[..., :3].norm(dim=-1, keepdim=True)  # (..., 1)
    rotation = torch.remainder(change[..., 3:6] + torch.pi, 2 * torch.pi).sub(torch.pi).norm(dim=-1, keepdim=True)

    def term(distance: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        scale = scale.to(change.device)
        return torch.where(scale > 0, (distance / scale.clamp_min(1e-12)) ** 2, 0.0)

    return torch.exp(-(term(position, position_scale) + term(rotation, rotation_scale)))


def relative_decoding(decoded: torch.Tensor, reference_decoded: torch.Tensor, residual: torch.Tensor,
                      weights: torch.Tensor, gate_tau: torch.Tensor | None = None) -> torch.Tensor:
    """Frames decoded relative to a reference: ``D(z) + w * g * (ref - D(z_ref))``.

    Args:
        decoded: ``D(z)``, float (..., V, 3, H, W) in [-1, 1].
        reference_decoded, residual: ``D(z_ref)`` and ``ref - D(z_ref)``, broadcastable to ``decoded``.
        weights: ``w`` per frame and camera, (..., V) (:meth:`WorldModel.reference_weights`).
        gate_tau: per camera tau of the motion gate ``g = exp(-(mean_rgb |D(z) - D(z_ref)| / tau) ** 2)``
            (V,); 0 or None: ``g = 1``. The gate is not differentiated through.
    """
    w = weights[..., None, None, None]
    if gate_tau is None or not bool((gate_tau > 0).any()):
        return decoded + w * residual
    change = (decoded - reference_decoded).detach().abs().mean(dim=-3, keepdim=True)  # (..., V, 1, H, W)
    tau = gate_tau[:, None, None, None]
    gate = torch.where(tau > 0, torch.exp(-(change / tau.clamp_min(1e-12)) ** 2), torch.ones_like(change))
    return decoded + w * gate * residual


def embedded_model_dir(name: str) -> Path:
    """Folder of a model shipped in the package (``"default"``)."""
    return Path(str(resources.files("persistworld_env").joinpath("assets", EMBEDDED_MODELS[name])))


def model_dir(path_or_name: str | os.PathLike) -> Path:
    """The folder of a model given as a directory or as the name of an embedded model (``"default"``)."""
    name = str(path_or_name)
    return embedded_model_dir(name) if name in EMBEDDED_MODELS else Path(path_or_name)


class WorldModel(nn.Module):
    """The action-conditioned multi-view video world model."""

    def __init__(self, config: WorldModelConfig, autoencoder: nn.Module, normalizer: PoseNormalizer,
                 denoiser: WorldModelDenoiser | None = None, model_card: str = "") -> None:
        super().__init__()
        if any(o > 0 for o in config.history_offsets) or len(config.history_offsets) != config.denoiser.num_history:
            raise ValueError(f"history_offsets must be {config.denoiser.num_history} offsets <= 0, "
                             f"got {config.history_offsets}")
        unknown = set(config.reference_cameras) - set(config.cameras)
        if unknown:
            raise ValueError(f"reference_cameras {sorted(unknown)} are not among the cameras {config.cameras}")
        for cam, decay in config.reference_decay.items():
            if cam not in config.reference_cameras or not 0.0 <= decay <= 1.0:
                raise ValueError(f"reference_decay needs reference cameras and factors in [0, 1], got {cam!r}: {decay}")
        for cam, tau in config.reference_gate.items():
            if cam not in config.reference_cameras or not tau > 0.0:
                raise ValueError(f"reference_gate needs reference cameras and tau > 0, got {cam!r}: {tau}")
        for cam, scales in config.reference_pose_gate.items():
            if (cam not in config.reference_cameras or set(scales) != set(POSE_GATE_SCALES)
                    or not all(v >= 0.0 for v in scales.values()) or not any(v > 0.0 for v in scales.values())):
                raise ValueError(f"reference_pose_gate needs reference cameras and scales {{'position': m, 'rotation': "
                                 f"rad}} >= 0 (not both 0), got {cam!r}: {scales}")
        self.config = config
        self.autoencoder = autoencoder
        # Channels-last convolutions: ~1.2x faster decoding on CPU; not for SVD's temporal (3-D) decoder.
        self.codec = LatentCodec(autoencoder, channels_last=not is_temporal_autoencoder(autoencoder))
        if self.codec.latent_channels != config.denoiser.latent_channels:
            raise ValueError(f"autoencoder has {self.codec.latent_channels} latent channels, "
                             f"denoiser expects {config.denoiser.latent_channels}")
        self.denoiser = denoiser or WorldModelDenoiser(config.denoiser)
        self.normalizer = normalizer
        self.model_card = model_card

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def build(cls, scale: str, normalizer: PoseNormalizer, height: int = DEFAULT_HEIGHT, width: int = DEFAULT_WIDTH,
              autoencoder: nn.Module | None = None, denoiser_overrides: dict[str, Any] | None = None,
              **config_overrides: Any) -> "WorldModel":
        """A randomly initialised model of ``scale`` (``tiny``, ``default``, ``ctrl-world``).

        Pass a trained ``autoencoder`` to train only the denoiser on top of it; ``denoiser_overrides``
        change architecture fields (e.g. a reduced-width ``ctrl-world`` for tests).
        """
        if scale not in DENOISER_SCALES:
            raise ValueError(f"unknown scale {scale!r}; choose one of {sorted(DENOISER_SCALES)}")
        autoencoder = autoencoder if autoencoder is not None else build_autoencoder(scale)
        channels = autoencoder.config.latent_channels
        denoiser_cfg = DenoiserConfig.from_dict({**DENOISER_SCALES[scale].to_dict(), **(denoiser_overrides or {}),
                                                 "latent_channels": channels})
        config_overrides.setdefault("sampler", SamplerConfig(**SAMPLER_SCALES.get(scale, {})))
        config_overrides.setdefault("reference_cameras", REFERENCE_CAMERAS_SCALES.get(scale, ()))
        config = WorldModelConfig(scale=scale, height=height, width=width, denoiser=denoiser_cfg, **config_overrides)
        return cls(config, autoencoder, normalizer)

    @property
    def device(self) -> torch.device:
        return next(self.denoiser.parameters()).device

    # -- decoding --------------------------------------------------------------------------------
    @torch.no_grad()
    def reference_correction(self, frames: np.ndarray, latents: torch.Tensor) -> torch.Tensor | None:
        """What relative decoding needs of the reference frames, or None when no camera decodes relative to one.

        Args:
            frames: uint8 (B, V, H, W, 3), the reference frames (a rollout's real first frame).
            latents: their scaled latents (B, C, V*h, w).
        Returns float (B, 2, V, 3, H, W): the residual ``frames - D(latents)`` and ``D(latents)``.
        """
        if not self.config.reference_cameras:
            return None
        decoded = self.codec.decode_views_float(latents[:, None], len(self.config.cameras))[:, 0]
        return torch.stack([uint8_to_float(frames, device=decoded.device) - decoded, decoded], dim=1)

    def reference_weights(self, frames_after: torch.Tensor | np.ndarray | int,
                          pose_change: torch.Tensor | np.ndarray | None = None) -> torch.Tensor:
        """Share of the reference correction each camera adds to a frame ``frames_after`` frames after its
        reference: ``reference_decay[cam] ** frames_after`` (1 without a decay) times the ``reference_pose_gate``
        of the frame's ``pose_change`` (raw pose minus the reference's, (*frames_after.shape, 7); needed when the
        model has a pose gate) for the ``reference_cameras``, 0 for the others. Float (*frames_after.shape, V)."""
        k = torch.as_tensor(frames_after, dtype=torch.float32)
        cams = self.config.cameras
        decay = torch.tensor([self.config.reference_decay.get(c, 1.0) for c in cams])
        mask = torch.tensor([c in self.config.reference_cameras for c in cams], dtype=torch.float32)
        weights = mask * decay ** k[..., None]
        if not self.config.reference_pose_gate:
            return weights
        if pose_change is None:
            raise ValueError(f"this model gates {sorted(self.config.reference_pose_gate)}'s reference correction by "
                             "the pose change since the reference: pass pose_change (raw pose minus the reference's)")
        change = torch.as_tensor(pose_change, dtype=torch.float32)
        if change.shape != (*k.shape, 7):
            raise ValueError(f"pose_change must have shape {(*k.shape, 7)} (one raw 7-D change per frame), "
                             f"got {tuple(change.shape)}")
        scales = [self.config.reference_pose_gate.get(c, {}) for c in cams]
        return weights * pose_gate(change, torch.tensor([s.get("position", 0.0) for s in scales]),
                                   torch.tensor([s.get("rotation", 0.0) for s in scales]))

    def reference_gate_tau(self) -> torch.Tensor:
        """Per camera, the ``reference_gate`` tau (0: no gate). Float (V,)."""
        return torch.tensor([self.config.reference_gate.get(c, 0.0) for c in self.config.cameras])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, correction: torch.Tensor | None = None,
               first_frame: int | Sequence[int] = 1, pose_change: torch.Tensor | np.ndarray | None = None,
               frame_step: int | Sequence[int] = 1) -> np.ndarray:
        """Latents (B, F, C, V*h, w) -> uint8 frames (B, F, V, H, W, 3).

        ``correction``: the rollouts' :meth:`reference_correction`; latent frame f is ``first_frame + f *
        frame_step`` frames after the reference (each one int, or one per rollout; a clip sampled at a future skip
        s has ``frame_step`` s) and its commanded pose differs from the reference's by ``pose_change`` (raw,
        (B, F, 7); models with a ``reference_pose_gate``), see :func:`relative_decoding`.
        """
        x = self.codec.decode_views_float(latents, len(self.config.cameras))
        if correction is not None:
            first = torch.as_tensor(first_frame).reshape(-1, 1)  # (B or 1, 1)
            step = torch.as_tensor(frame_step).reshape(-1, 1)
            frames_after = (first + step * torch.arange(latents.shape[1])).expand(latents.shape[0], -1)  # (B, F)
            weights = self.reference_weights(frames_after, pose_change)  # (B, F, V)
            correction = correction.to(x.device)[:, None]  # (B, 1, 2, V, 3, H, W)
            x = relative_decoding(x, correction[:, :, 1], correction[:, :, 0], weights.to(x.device),
                                  self.reference_gate_tau().to(x.device))
        return float_to_uint8(x).cpu().numpy()

    # -- save / load ---------------------------------------------------------------------------
    def with_autoencoder(self, autoencoder: nn.Module) -> "WorldModel":
        """This model (the same denoiser, config, normalisation and model card) over ``autoencoder``, which must
        share the latent space (``training.swap_decoder.check_same_latent_space`` checks it)."""
        return WorldModel(self.config, autoencoder, self.normalizer, denoiser=self.denoiser,
                          model_card=self.model_card)

    def save_pretrained(self, directory: str | os.PathLike, model_card: str | None = None) -> Path:
        """Write the model directory (see module docstring); files are replaced atomically one by one."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        write_text_atomic(directory / CONFIG_FILE, json.dumps(self.config.to_dict(), indent=2))
        write_text_atomic(directory / NORMALIZATION_FILE, json.dumps(self.normalizer.to_dict(), indent=2))
        save_safetensors_atomic(self.denoiser, directory / DENOISER_FILE)
        self.autoencoder.save_pretrained(str(directory / AUTOENCODER_DIR))
        card = model_card if model_card is not None else self.model_card
        write_text_atomic(directory / MODEL_CARD, card or f"# PersistWorld world model ({self.config.scale})\n")
        return directory

    @classmethod
    def from_pretrained(cls, path_or_name: str | os.PathLike, device: torch.device | str = "cpu",
                        dtype: torch.dtype | str | None = None) -> "WorldModel":
        """Load a model directory, or an embedded model by name (``"default"``).

        ``dtype``: the precision of the weights (``"float16"``/``"bfloat16"`` halve their memory and speed up GPUs,
        bfloat16 also CPUs with bfloat16 units; ``"auto"``: :func:`auto_dtype`; None keeps float32). Sampling, EDM
        preconditioning and latents stay float32 either way.
        """
        dtype = resolve_dtype(dtype, device)
        directory = model_dir(path_or_name)
        if str(path_or_name) in EMBEDDED_MODELS and not (directory / CONFIG_FILE).is_file():
            raise ModelLoadError(f"the embedded '{path_or_name}' model is missing from this installation "
                                 f"(expected at {directory}); reinstall the package or pass a model directory")
        for name in (CONFIG_FILE, NORMALIZATION_FILE, DENOISER_FILE):
            if not (directory / name).is_file():
                raise ModelLoadError(f"not a PersistWorld model directory: missing {directory / name}")
        config = _parse(WorldModelConfig.from_dict, directory / CONFIG_FILE, "model config")
        normalizer = _parse(PoseNormalizer.from_dict, directory / NORMALIZATION_FILE, "pose normalisation")
        autoencoder = load_autoencoder(directory / AUTOENCODER_DIR)
        try:
            model = cls(config, autoencoder, normalizer)
        except ValueError as e:  # e.g. a config that does not fit its autoencoder
            raise ModelLoadError(f"{directory}: the model config does not fit its parts: {e}") from e
        weights = directory / DENOISER_FILE
        load_safetensors_into(model.denoiser, weights, directory / CONFIG_FILE)
        card = directory / MODEL_CARD
        model.model_card = card.read_text() if card.is_file() else ""
        return model.to(device=device, dtype=dtype).eval()


def auto_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The precision ``dtype="auto"`` picks: bfloat16 where the device has bfloat16 matrix units (a CUDA GPU of
    compute capability 8 or newer; a CPU with AMX tiles, detected by PyTorch), float32 elsewhere.

    On such a CPU bfloat16 makes batched steps 1.3-1.9x cheaper at the same fidelity (a 96-episode replay
    evaluation agrees with float32 to 0.001 dB; docs/benchmarks.md); without the units bfloat16 runs slowly.
    """
    device = torch.device(device)
    if device.type == "cuda":  # bfloat16 tensor cores from compute capability 8 (Ampere); older cards emulate it
        return (torch.bfloat16 if torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8
                else torch.float32)
    if device.type == "cpu":
        has_amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        return torch.bfloat16 if has_amx is not None and has_amx() else torch.float32
    return torch.float32


def is_auto_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` asks for :func:`auto_dtype` (``"auto"``, in any case)."""
    return isinstance(dtype, str) and dtype.lower() == AUTO_DTYPE


def resolve_dtype(dtype: torch.dtype | str | None, device: torch.device | str = "cpu") -> torch.dtype | None:
    """A floating-point ``torch.dtype`` from itself, one of the names in :data:`DTYPES`, or ``"auto"``
    (:func:`auto_dtype` of ``device``); None stays None."""
    if is_auto_dtype(dtype):
        return auto_dtype(device)
    if dtype is None or (isinstance(dtype, torch.dtype) and dtype in DTYPES.values()):
        return dtype
    if isinstance(dtype, str) and dtype.lower().removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.lower().removeprefix("torch.")]
    raise ValueError(f"unsupported model dtype {dtype!r}; choose one of {sorted(DTYPES) + [AUTO_DTYPE]} "
                     "(or the torch dtypes)")


def dtype_name(dtype: torch.dtype | str | None, device: torch.device | str = "cpu") -> str:
    """The :data:`DTYPES` name of ``dtype`` (None: ``"float32"``; ``"auto"``: what it picks on ``device``), as
    recorded in result files."""
    return str(resolve_dtype(dtype, device) or torch.float32).removeprefix("torch.")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


def _parse(from_dict, path: Path, what: str):
    """``from_dict`` of a JSON file, any problem with its content a :class:`ModelLoadError` naming the file."""
    content = _read_json(path)
    try:
        if not isinstance(content, dict):
            raise TypeError(f"expected a JSON object, got {type(content).__name__}")
        return from_dict(content)
    except (KeyError, TypeError, ValueError) as e:
        raise ModelLoadError(f"{path} is not a valid {what} ({type(e).__name__}: {e}); the file is damaged or was "
                             f"written by another version of persistworld_env") from e
