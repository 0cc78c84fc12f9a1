"""Training checkpoints: atomic save, exact resume, and a clear error for a checkpoint that does not fit; the
shared step guards (collective finiteness, gradient clipping, skipped steps under fp16)."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch

from training.checkpoints import (ResumeError, all_finite, clip_gradients, finite_step, latest_checkpoint,
                                  resume_checkpoint, save_checkpoint)


@pytest.fixture
def accelerator():
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state(reset_partial_state=True)


def _prepared(accelerator, width: int):
    torch.manual_seed(width)
    model = torch.nn.Linear(width, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(1, width)).sum().backward()
    optimizer.step()
    return model, optimizer


def test_resume_restores_the_state_and_refuses_what_does_not_fit(accelerator, tmp_path):
    model, _ = _prepared(accelerator, 3)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    path = save_checkpoint(accelerator, tmp_path, step=7, trainer_state={"note": "x"})
    assert latest_checkpoint(tmp_path) == path
    with torch.no_grad():
        model.weight.add_(1.0)
    assert resume_checkpoint(accelerator, path) == {"step": 7, "note": "x"}
    assert all(torch.equal(model.state_dict()[k], v) for k, v in saved.items())

    accelerator._models.clear()
    accelerator._optimizers.clear()
    _prepared(accelerator, 5)  # another model: the saved tensors do not fit
    with pytest.raises(ResumeError, match=r"(?s)cannot resume from .*checkpoint-00000007: RuntimeError.*size mismatch.*another model"):
        resume_checkpoint(accelerator, path)


def test_a_damaged_checkpoint_is_a_clear_error(accelerator, tmp_path):
    _prepared(accelerator, 3)
    path = save_checkpoint(accelerator, tmp_path, step=1, trainer_state={})
    weights = sorted(p for p in path.iterdir() if p.name.startswith("model"))
    assert weights
    weights[0].write_bytes(weights[0].read_bytes()[:20])
    with pytest.raises(ResumeError, match="damaged"):
        resume_checkpoint(accelerator, path)


def _all_finite_worker(rank: int, port: int, out: str) -> None:
    """One of 2 CPU processes (gloo): only rank 0 sees a NaN."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=True)
    assert accelerator.num_processes == 2
    bad = torch.tensor([float("nan") if rank == 0 else 1.0, 2.0])
    result = {"one_bad": all_finite(accelerator, bad, 3.0), "all_good": all_finite(accelerator, torch.ones(2), 3.0)}
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    torch.distributed.destroy_process_group()


def test_all_finite_is_false_on_every_process_when_one_process_is_not(tmp_path):
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(_all_finite_worker, args=(port, str(tmp_path)), nprocs=2, start_method="spawn")
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert results == [{"one_bad": False, "all_good": True}] * 2


@pytest.fixture
def fp16_accelerator():
    """An fp16 Accelerator with a gradient scaler, as on a GPU (accelerate has none on the CPU)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    accelerator.native_amp, accelerator.scaler = True, torch.amp.GradScaler("cpu")
    yield accelerator
    AcceleratorState._reset_state(reset_partial_state=True)


def test_a_skipped_fp16_step_still_updates_the_gradient_scaler(fp16_accelerator):
    accelerator = fp16_accelerator
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    scale = accelerator.scaler.get_scale()
    stepped = []
    for x in (torch.full((4, 3), 1e18), torch.randn(4, 3)):  # the first step's scaled gradients overflow
        loss = model(x).pow(2).mean()
        accelerator.backward(loss)
        grad_norm = clip_gradients(accelerator, model.parameters(), 1.0)
        stepped.append(finite_step(accelerator, optimizer, loss, grad_norm))
        optimizer.zero_grad(set_to_none=True)
    assert stepped == [False, True]
    assert accelerator.scaler.get_scale() < scale  # the overflow lowered the loss scale


def test_grad_clip_0_is_off(accelerator):
    import argparse

    from training import posttrain, pretrain

    model, _ = _prepared(accelerator, 3)
    model(torch.ones(1, 3)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    norm = clip_gradients(accelerator, model.parameters(), 0.0)
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), grads))
    assert float(norm) == pytest.approx(float(torch.cat([g.flatten() for g in grads]).norm()))
    clip_gradients(accelerator, model.parameters(), 0.5)
    assert float(torch.cat([p.grad.flatten() for p in model.parameters()]).norm()) == pytest.approx(0.5)
    for module in (pretrain, posttrain):
        grad_clip = next(a for a in module.add_arguments(argparse.ArgumentParser())._actions
                         if a.dest == "grad_clip")
        assert "0 = off" in grad_clip.help
