"""Training checkpoints shared by every trainer: atomic, complete (accelerate state + trainer JSON), resumable.

A checkpoint is ``<out>/checkpoints/checkpoint-<step:08d>/``: ``accelerator.save_state`` (models,
optimizers, schedulers, RNG states and every object registered with ``register_for_checkpointing``)
plus ``trainer_state.json`` (step and the run's config). It is written under a ``.tmp`` name and
renamed when complete, so an interrupted save never replaces a good checkpoint.

Also the other pieces every trainer's run shares: :func:`start_run`, :func:`main_process_writer`
(TensorBoard), :func:`all_finite` (the collective NaN/inf guard), :func:`clip_gradients`,
:func:`finite_step` (an optimizer step guarded by it), :func:`warmup_cosine` (an LR factor) and :func:`optimizer_step`.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint folder in ``out_dir/checkpoints`` (None if there is none)."""
    folder = Path(out_dir) / "checkpoints"
    done = sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*")
                  if p.is_dir() and ".tmp" not in p.name and (p / TRAINER_STATE).is_file())
    return done[-1] if done else None


def save_checkpoint(accelerator, out_dir: str | os.PathLike, step: int, trainer_state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Atomically write ``checkpoints/checkpoint-<step>`` and prune all but the ``keep`` newest.

    Every process must call it (accelerate saves sharded state collectively).
    """
    folder = Path(out_dir) / "checkpoints"
    final = folder / f"{CHECKPOINT_PREFIX}{step:08d}"
    tmp = folder / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / TRAINER_STATE).write_text(json.dumps({"step": step, **trainer_state}, indent=2))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted(p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if ".tmp" not in p.name)
        for old in done[:-max(1, keep)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


class ResumeError(RuntimeError):
    """A checkpoint that cannot be resumed by this run (another model or settings, or damaged files)."""


def resume_checkpoint(accelerator, checkpoint: Path, expected: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load an accelerate state saved by :func:`save_checkpoint`; returns its trainer state (with ``step``).

    ``expected``: settings (config field -> value) that change the model's shape; checked against the config the
    checkpoint recorded before anything loads, so a mismatch is named. Raises :class:`ResumeError` naming the
    checkpoint when its state does not fit this run or is damaged."""
    if expected:
        try:
            recorded = json.loads((checkpoint / TRAINER_STATE).read_text()).get("config", {})
        except (OSError, ValueError, AttributeError):
            recorded = {}  # damaged: load_state below names it
        for key, value in expected.items():
            if key in recorded and recorded[key] != value:
                raise ResumeError(f"cannot resume from {checkpoint}: it was written with {key} = {recorded[key]!r}, "
                                  f"this run asks for {value!r}. Resume with the same setting, or start a new --out.")
    try:
        accelerator.load_state(str(checkpoint))
        return json.loads((checkpoint / TRAINER_STATE).read_text())
    except Exception as e:  # torch, safetensors and pickle each raise their own kinds; the cause stays chained
        raise ResumeError(
            f"cannot resume from {checkpoint}: {type(e).__name__}: {str(e)[:500]}\n"
            "It was written for another model or other training settings (the LoRA rank or targets, "
            "--full-finetune; post-training checkpoints from before 2026-12-03 also adapted the cross-attention's "
            "query and key), or its files are damaged. Resume with the settings and version that wrote it, move it "
            "away to resume from the previous checkpoint, or start a new --out.") from e


def check_resume(out_dir: str | os.PathLike, resume: bool) -> Path | None:
    """The checkpoint to resume from; refuse to silently overwrite a run that has checkpoints."""
    found = latest_checkpoint(out_dir)
    if found is not None and not resume:
        raise FileExistsError(f"{out_dir} already holds checkpoints: pass --resume to continue, or another --out")
    return found if resume else None


def start_run(out_dir: str | os.PathLike, resume: bool, mixed_precision: str, seed: int,
              num_threads: int | None = None):
    """Common start of a training run: CPU threads, resume check, Accelerator, seed.

    Returns ``(accelerator, checkpoint to resume from or None)``.
    """
    import torch
    from accelerate import Accelerator

    if num_threads:
        torch.set_num_threads(int(num_threads))
    resume_from = check_resume(out_dir, resume)
    # step_scheduler_with_optimizer=False: LR schedules are per optimizer step, whatever the process count.
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(),
                              step_scheduler_with_optimizer=False)
    torch.manual_seed(seed)
    return accelerator, resume_from


def main_process_writer(accelerator, out_dir: str | os.PathLike):
    """A TensorBoard writer at ``out_dir/logs`` on the main process (creating ``out_dir``); None on the others."""
    if not accelerator.is_main_process:
        return None
    from torch.utils.tensorboard import SummaryWriter

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return SummaryWriter(str(Path(out_dir) / "logs"))


def all_finite(accelerator, *values) -> bool:
    """Whether every value (tensor or number) is finite on every process.

    A collective decision, so all processes skip a bad step together (DDP would hang otherwise).
    """
    import torch

    bad = 0.0 if all(bool(torch.isfinite(torch.as_tensor(v).detach()).all()) for v in values) else 1.0
    # accelerate's reduce has no "min" (it sums instead): the largest "bad" flag is the verdict.
    return accelerator.reduce(torch.tensor([bad], device=accelerator.device), "max").item() == 0


def clip_gradients(accelerator, parameters, grad_clip: float):
    """Clip the gradients of ``parameters`` to the norm ``grad_clip`` (0: off); returns their norm before."""
    import math

    return accelerator.clip_grad_norm_(parameters, grad_clip if grad_clip > 0 else math.inf)


def finite_step(accelerator, optimizer, *values) -> bool:
    """The optimizer's step if every value (loss, gradient norm) is finite on every process, else none (a
    collective decision, :func:`all_finite`); returns whether it stepped.

    Call it after :func:`clip_gradients`: a skipped step still updates fp16's gradient scaler, which unscaled
    the gradients there (it then lowers the loss scale; without the update its next unscale would fail).
    """
    if all_finite(accelerator, *values):
        optimizer.step()
        return True
    if accelerator.scaler is not None:
        accelerator.scaler.update()
    return False


def warmup_cosine(warmup_steps: int, total_steps: int, cosine: bool = True):
    """LR factor of a step: linear warm-up to 1 over ``warmup_steps``, then cosine decay to 0 at
    ``total_steps`` (or constant 1 when ``cosine`` is False). For ``torch.optim.lr_scheduler.LambdaLR``."""
    import math

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        if not cosine:
            return 1.0
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return factor


def optimizer_step(accelerator, loss, parameters, optimizer, scheduler, grad_clip: float) -> None:
    """Backward of ``loss``, gradient-norm clipping of ``parameters`` (``grad_clip`` 0: off), an optimizer and
    a scheduler step, and the gradients zeroed."""
    accelerator.backward(loss)
    if grad_clip and accelerator.sync_gradients:
        accelerator.clip_grad_norm_(parameters, grad_clip)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)


def save_derived_model(model, out: str | os.PathLike, parent) -> Path:
    """Save a world model derived from ``parent`` (a directory or ``'default'``) to ``out``, carrying the
    parent's success detector over (it judges frames, not the world model's weights)."""
    from persistworld_env.success import carry_success_detector

    out = Path(out)
    model.save_pretrained(out)
    carry_success_detector(parent, out)
    return out
