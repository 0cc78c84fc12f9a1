"""Training checkpoints: atomic save, exact resume, and a clear error for a checkpoint that does not fit."""
from __future__ import annotations

import pytest
import torch

from training.checkpoints import ResumeError, latest_checkpoint, resume_checkpoint, save_checkpoint


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
