"""``persistworld posttrain`` under 2 processes (torchrun, gloo on the CPU): sharded groups, identical parameters."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from persistworld_env.models.world_model import WorldModel
from posttrain_helpers import write_tiny_setup


def test_two_process_cpu_run_holds_identical_parameters(tmp_path):
    data, model = write_tiny_setup(tmp_path)
    torchrun = Path(sys.executable).with_name("torchrun")
    out = tmp_path / "ddp"
    cmd = [str(torchrun), "--nproc_per_node", "2", "-m", "training.cli", "posttrain", "--data", str(data),
           "--out", str(out), "--model", str(model), "--groups", "4", "--candidates", "3",
           "--max-prefix", "1", "--max-clips", "2", "--sampling-steps", "2", "--lpips", "off",
           "--checkpoint-every", "2", "--eval-every", "2", "--eval-steps", "2", "--val-episodes", "3",
           "--num-threads", "1", "--micro-batch", "2"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["groups"] == 4 and summary["step"] == 2
    (a, b) = summary["parameter_sums"]
    assert a == b  # every process holds the same parameters after the updates
    psnr_a, psnr_b = summary["recent_psnr_per_process"]
    assert psnr_a != psnr_b  # each process ran its own groups
    assert (out / "checkpoints" / "checkpoint-00000002" / "random_states_1.pkl").is_file()
    assert list((out / "samples").glob("replay-*.mp4"))
    WorldModel.from_pretrained(out / "model")
