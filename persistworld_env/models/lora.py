"""Trained, old and reference weights of one network for RL post-training (LoRA or full fine-tuning).

LoRA mode (default): peft LoRA adapters on the UNet's attention (``to_q, to_k, to_v, to_out.0`` of
``attn1`` and ``attn2``) and feed-forward (``ff``, ``ff_in``) layers, plus modules trained fully (the
action encoder). The **old** policy is a second adapter ``"old"`` (a copy of the trained ``"policy"``
adapter, EMA-updated), so it costs no second model; the fully trained modules keep an EMA shadow copy
that is swapped in while the old policy runs. The **reference** (the model before post-training) is the
network with adapters disabled and the fully trained modules' initial weights swapped in. For long
sampling, ``old(merged=True)`` folds the old adapter into temporary weights (no per-layer adapter cost).

Full mode: every parameter trains; old and reference are shadow copies of all of them.

``merged_state_dict()`` folds the trained adapter into the base weights: a plain state dict of the
network as it was before injection, ready for ``save_pretrained``. With ``average_decay > 0`` a running
average (EMA) of the trained weights is kept as well (``update_average()`` after each optimizer step) and
``merged_state_dict(averaged=True)`` exports it instead: Polyak averaging, which keeps the drift the updates
share and averages out the noise they do not.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

#: peft ``target_modules`` regex: attention projections and feed-forward layers of every transformer block, but
#: not the cross-attention's query and key (inert: one key per query, see ``denoiser.INERT_PARAMETERS``).
LORA_TARGET_MODULES = (r".*transformer_blocks\.\d+\.(attn1\.(to_q|to_k|to_v|to_out\.0)|attn2\.(to_v|to_out\.0))"
                       r"|.*transformer_blocks\.\d+\.(ff|ff_in)\.net\.(0\.proj|2)")
TRAIN_ADAPTER, OLD_ADAPTER = "policy", "old"  # ("train" would clash with nn.Module.train)


class ShadowCopy:
    """Detached copies of some parameters: EMA towards them, or swapped with them in place."""

    def __init__(self, params: Sequence[nn.Parameter]) -> None:
        self.params = list(params)
        self.shadow = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def ema(self, decay: float) -> None:
        """shadow <- decay * shadow + (1 - decay) * param."""
        for p, s in zip(self.params, self.shadow):
            s.mul_(decay).add_(p.detach(), alpha=1 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the parameters' values with the shadow (twice = no change)."""
        for p, s in zip(self.params, self.shadow):
            tmp = p.detach().clone()
            p.copy_(s)
            s.copy_(tmp)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        self.swap()
        try:
            yield
        finally:
            self.swap()

    def state(self) -> list[torch.Tensor]:
        return [s.cpu() for s in self.shadow]

    def load(self, tensors: Sequence[torch.Tensor]) -> None:
        if len(tensors) != len(self.shadow):
            raise ValueError(f"shadow state has {len(tensors)} tensors, expected {len(self.shadow)}")
        for s, t in zip(self.shadow, tensors):
            s.copy_(t)


def _lora_layers(network: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in network.named_modules() if isinstance(m, LoraLayer)]


def merging_is_exact(network: nn.Module) -> bool:
    """Whether folding adapters into the weights keeps the function: float32 weights, no autocast on their device."""
    weight = next(network.parameters())
    return weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)


class PolicyWeights:
    """The trained policy, the old (EMA) policy and the frozen reference on one network.

    Args:
        network: the module whose forward is the policy (the denoiser).
        full_finetune: train every parameter (but ``frozen``) instead of LoRA adapters.
        lora_root: the submodule that gets adapters (the UNet); required in LoRA mode.
        fully_trained: submodules trained fully in LoRA mode (the action encoder).
        lora_rank, lora_alpha: adapter rank and scale numerator (alpha / rank; alpha defaults to rank).
        target_modules: peft target regex (default :data:`LORA_TARGET_MODULES`).
        keep_reference: keep what :meth:`reference` needs (an extra copy in full mode).
        average_decay: decay of a running average of the trained weights (0 = none kept).
        frozen: parameters never trained in full mode (the denoiser's ``inert_parameters()``).
    """

    def __init__(self, network: nn.Module, full_finetune: bool = False, lora_root: nn.Module | None = None,
                 fully_trained: Sequence[nn.Module] = (), lora_rank: int = 8, lora_alpha: float | None = None,
                 target_modules: str = LORA_TARGET_MODULES, keep_reference: bool = True,
                 average_decay: float = 0.0, frozen: Sequence[nn.Parameter] = ()) -> None:
        if not 0.0 <= average_decay < 1.0:
            raise ValueError(f"average_decay must be in [0, 1), got {average_decay}")
        self.network = network
        self.full_finetune = bool(full_finetune)
        self._lora_pairs: list[tuple[nn.Parameter, nn.Parameter]] = []
        self._layers: list[tuple[str, nn.Module]] = []  # (name in network, peft LoRA layer)
        if self.full_finetune:
            network.requires_grad_(True)
            for p in frozen:
                p.requires_grad_(False)
            shadowed = [p for p in network.parameters()]
        else:
            if lora_root is None:
                raise ValueError("LoRA mode needs lora_root (the module to put adapters on)")
            if lora_rank < 1:
                raise ValueError(f"lora_rank must be >= 1, got {lora_rank}")
            self._inject(lora_root, lora_rank, lora_alpha if lora_alpha is not None else lora_rank, target_modules)
            shadowed = [p for m in fully_trained for p in m.parameters()]
            for p in shadowed:
                p.requires_grad_(True)
        self._old = ShadowCopy(shadowed)
        self._reference = ShadowCopy(shadowed) if keep_reference else None
        self.average_decay = float(average_decay)
        self._average = ShadowCopy(self.trainable_parameters()) if average_decay > 0 else None

    # -- set-up -------------------------------------------------------------------------------------
    def _inject(self, root: nn.Module, rank: int, alpha: float, target_modules: str) -> None:
        from peft import LoraConfig, inject_adapter_in_model

        self.network.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=target_modules)
        inject_adapter_in_model(config, root, adapter_name=TRAIN_ADAPTER)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config`")  # the second one is wanted
            inject_adapter_in_model(config, root, adapter_name=OLD_ADAPTER)
        self._layers = _lora_layers(self.network)
        if not self._layers:
            raise ValueError(f"no module of {type(root).__name__} matches the LoRA targets {target_modules!r}")
        for _, layer in self._layers:
            for attr in layer.adapter_layer_names:
                adapters = getattr(layer, attr)
                if TRAIN_ADAPTER in adapters:
                    for p_train, p_old in zip(adapters[TRAIN_ADAPTER].parameters(), adapters[OLD_ADAPTER].parameters()):
                        self._lora_pairs.append((p_train, p_old))
        with torch.no_grad():
            for p_train, p_old in self._lora_pairs:
                p_old.copy_(p_train)
        self._set_adapter(TRAIN_ADAPTER)

    def _set_adapter(self, name: str) -> None:
        """Activate one adapter; only the trained adapter's weights ever require gradients."""
        for _, layer in self._layers:
            layer.set_adapter(name, inference_mode=True)
        for p_train, p_old in self._lora_pairs:
            p_train.requires_grad_(True)
            p_old.requires_grad_(False)

    def _enable_adapters(self, enabled: bool) -> None:
        for _, layer in self._layers:
            layer.enable_adapters(enabled)
        self._set_adapter(TRAIN_ADAPTER)

    # -- views ----------------------------------------------------------------------------------------
    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer updates."""
        return [p for p in self.network.parameters() if p.requires_grad]

    @contextmanager
    def old(self, merged: bool = False) -> Iterator[nn.Module]:
        """Run the network as the old policy inside the block (no gradients wanted there).

        ``merged=True`` (LoRA mode) folds the old adapter into temporary copies of the base weights and
        bypasses the adapters: the same function, without the adapters' per-layer cost (~1.5x faster
        forwards here), for a block of many forwards such as sampling. Costs one copy of the adapted
        weights while it lasts; the base weights are restored exactly. Only in float32: under autocast to a
        16-bit type (or with 16-bit weights) the block runs the adapters instead, because rounding the
        merged ``W + delta`` to 16 bits loses most of a small ``delta`` (measured: the merged old policy then
        differed from an identical trained one by 2/3 of the whole adaptation, and post-training under
        ``--mixed-precision bf16`` made the model worse than its base; docs/results_posttrain_bf16.md).
        """
        if self.full_finetune:
            with self._old.swapped():
                yield self.network
            return
        merged = merged and merging_is_exact(self.network)
        if merged:
            originals = self._merge(OLD_ADAPTER)
            self._enable_adapters(False)
        else:
            self._set_adapter(OLD_ADAPTER)
        try:
            with self._old.swapped():
                yield self.network
        finally:
            if merged:
                self._enable_adapters(True)
                for weight, original in originals:
                    weight.data = original
            else:
                self._set_adapter(TRAIN_ADAPTER)

    @torch.no_grad()
    def _merge(self, adapter: str) -> list[tuple[nn.Parameter, torch.Tensor]]:
        """Point every adapted base weight at a merged copy; returns (weight, original tensor) pairs."""
        originals = []
        for _, layer in self._layers:
            weight = layer.get_base_layer().weight
            originals.append((weight, weight.data))
            weight.data = weight.data + layer.get_delta_weight(adapter).to(weight.dtype)
        return originals

    @contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """Run the network as the frozen reference (the model before post-training) inside the block."""
        if self._reference is None:
            raise RuntimeError("this PolicyWeights was built with keep_reference=False")
        if not self.full_finetune:
            self._enable_adapters(False)
        try:
            with self._reference.swapped():
                yield self.network
        finally:
            if not self.full_finetune:
                self._enable_adapters(True)

    @torch.no_grad()
    def update_old(self, decay: float) -> None:
        """old <- decay * old + (1 - decay) * trained, for adapters and fully trained weights alike."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        for p_train, p_old in self._lora_pairs:
            p_old.mul_(decay).add_(p_train.detach(), alpha=1 - decay)
        self._old.ema(decay)

    @torch.no_grad()
    def update_average(self) -> None:
        """average <- average_decay * average + (1 - average_decay) * trained (nothing when no average is kept)."""
        if self._average is not None:
            self._average.ema(self.average_decay)

    # -- checkpoints (accelerate's register_for_checkpointing) -----------------------------------------
    def state_dict(self) -> dict:
        """Shadow copies (old, reference, average); the old adapter is part of the network's own state dict."""
        return {"old": self._old.state(), "reference": self._reference.state() if self._reference else None,
                "average": self._average.state() if self._average else None}

    def load_state_dict(self, state: dict) -> None:
        """Load :meth:`state_dict` output (after the network's weights). A state without an average (written
        with none kept) starts the average at the network's current trained weights."""
        self._old.load(state["old"])
        if self._reference is not None and state.get("reference") is not None:
            self._reference.load(state["reference"])
        if self._average is not None:
            if state.get("average") is not None:
                self._average.load(state["average"])
            else:
                self._average = ShadowCopy(self._average.params)

    # -- export ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def merged_state_dict(self, averaged: bool = False) -> dict[str, torch.Tensor]:
        """The trained policy (``averaged``: its running average) as a plain state dict of the network
        before adapters (adapter merged in)."""
        if averaged:
            if self._average is None:
                raise RuntimeError("no running average is kept (build PolicyWeights with average_decay > 0)")
            with self._average.swapped():
                return self.merged_state_dict()
        state = self.network.state_dict()
        if self.full_finetune:
            return {k: v.detach().clone() for k, v in state.items()}
        deltas = {f"{name}.weight": layer.get_delta_weight(TRAIN_ADAPTER) for name, layer in self._layers}
        merged = {}
        for key, value in state.items():
            if ".lora_" in key:
                continue
            key = key.replace(".base_layer.", ".")
            merged[key] = (value + deltas[key].to(value.dtype)) if key in deltas else value.detach().clone()
        return merged
