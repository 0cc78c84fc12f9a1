"""``persistworld report``: docs/results.md from evaluate / policy-eval outputs (synthetic and tiny real ones)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from persistworld_env.constants import CAMERAS
from persistworld_env.evaluation.fidelity import ModelSpec, ReplayRun, build_metrics_document
from persistworld_env.evaluation.policy_agreement import build_policy_eval_document
from training.cli import main as cli_main
from training.report import build_report

from evaluation_helpers import tiny_dataset, tiny_world_model


def _write_synthetic_outputs(root):
    rng = np.random.default_rng(0)
    runs = {}
    for name, shift in (("base", 0.0), ("persistworld", 1.0)):
        noise = lambda std: rng.normal(0, std, (10, 4, 3))  # noqa: E731
        scores = {"psnr": 20 + shift + noise(0.3), "ssim": 0.7 + 0.05 * shift + noise(0.01),
                  "lpips": 0.2 - 0.02 * shift + noise(0.005)}
        runs[name] = (ModelSpec(name, str(root / name)), ReplayRun(scores, 2.0))
    metrics = build_metrics_document(runs, cameras=CAMERAS, episodes=list(range(99, 1099, 100)), horizon=4,
                                     lpips_backbone="alexnet", seed=3, data="/data/minidroid", bootstrap=50,
                                     command="persistworld evaluate --model base=B --model persistworld=P --seed 3")
    metrics["figures"] = {"psnr": "fidelity_psnr.png"}
    (root / "eval").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(root / "eval" / "fidelity_psnr.png")
    (root / "eval" / "metrics.json").write_text(json.dumps(metrics))
    names = ["expert-careful", "bc-1000", "random"]
    real = {"expert-careful": [True] * 8 + [False] * 2, "bc-1000": [True] * 4 + [False] * 6, "random": [False] * 10}
    model = {"expert-careful": [True] * 7 + [False] * 3, "bc-1000": [True] * 5 + [False] * 5, "random": [False] * 10}
    policy = build_policy_eval_document([{"name": p, "kind": p.split("-")[0], "config": {}} for p in names],
                                        list(range(10)), real, {"persistworld": {"path": "P", "success": model}},
                                        max_steps=20, bootstrap=50,
                                        command="persistworld policy-eval --model persistworld=P")
    (root / "pe").mkdir()
    (root / "pe" / "policy_eval.json").write_text(json.dumps(policy))
    # A model card with its training command, as pretraining writes it.
    (root / "persistworld").mkdir()
    (root / "persistworld" / "README.md").write_text("# model\n\n- command: `persistworld posttrain --seed 1`\n")
    return metrics, policy


def test_report_numbers_come_from_the_documents(tmp_path):
    metrics, policy = _write_synthetic_outputs(tmp_path)
    out = tmp_path / "docs" / "results.md"
    assert cli_main(["report", "--eval", str(tmp_path / "eval"), "--policy-eval", str(tmp_path / "pe"),
                     "--out", str(out)]) == 0
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| persistworld |"))
    pw = metrics["models"]["persistworld"]
    for value in (f"{pw['exterior']['ssim']['mean']:.3f}", f"{pw['exterior']['psnr']['mean']:.2f}",
                  f"{pw['wrist']['lpips']['mean']:.3f}", f"{metrics['elo']['ratings']['persistworld']['elo']:.0f}"):
        assert value in row
    pair = next(p for p in metrics["paired"] if p["group"] == "wrist" and p["metric"] == "psnr")
    assert f"| base | persistworld | wrist | PSNR | {pair['wins']} / {pair['n']} |" in text
    agreement = policy["models"]["persistworld"]
    assert f"{agreement['pearson']['value']:.2f}" in text and f"{agreement['mmrv']['value']:.3f}" in text
    assert "| bc-1000 | bc | 0.40 | 0.50 |" in text
    # figures copied next to the report, linked relatively
    assert "](results_files/eval_fidelity_psnr.png)" in text
    assert (tmp_path / "docs" / "results_files" / "eval_fidelity_psnr.png").is_file()
    # the commands and seeds that reproduce every number
    for command in ("persistworld posttrain --seed 1", metrics["command"], policy["command"], "persistworld report"):
        assert command in text
    assert "SeedSequence([3, e])" in text and "random backbone" not in text


def test_report_flags_a_random_lpips_backbone_and_half_precision_and_needs_an_input(tmp_path):
    metrics, _ = _write_synthetic_outputs(tmp_path)
    metrics["lpips_backbone"] = "alexnet-random"
    for entry in metrics["models"].values():
        entry["lpips_backbone"] = "alexnet-random"
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    text = build_report(str(tmp_path / "eval"), None, str(tmp_path / "r.md"), command="persistworld report")
    assert "randomly initialised AlexNet" in text and "Policy evaluation" not in text
    assert "weights (`--dtype`)" not in text  # float32 (and documents older than the field) say nothing
    metrics["dtype"] = "bfloat16"
    (tmp_path / "eval" / "metrics.json").write_text(json.dumps(metrics))
    text = build_report(str(tmp_path / "eval"), None, str(tmp_path / "r.md"), command="persistworld report")
    assert "Every model ran with bfloat16 weights (`--dtype`)" in text
    with pytest.raises(ValueError, match="--eval"):
        build_report(None, None, str(tmp_path / "r.md"))
    with pytest.raises(FileNotFoundError, match="evaluate"):
        build_report(str(tmp_path / "nothing"), None, str(tmp_path / "r.md"))


def test_report_end_to_end_on_tiny_models(tmp_path):
    """evaluate -> policy-eval -> report through the console-script entry point, on tiny outputs."""
    tiny_dataset(tmp_path / "ds", episodes=2)
    model = tiny_world_model(tmp_path / "wm")
    assert cli_main(["evaluate", "--model", f"tiny={model}", "--data", str(tmp_path / "ds"), "--out",
                     str(tmp_path / "eval"), "--episodes", "2", "--horizon", "1", "--lpips", "off", "--split", "all",
                     "--sampling-steps", "1", "--videos", "0", "--bootstrap", "10"]) == 0
    assert cli_main(["policy-eval", "--model", f"tiny={model}", "--out", str(tmp_path / "pe"), "--episodes", "1",
                     "--max-steps", "1", "--bc-budgets", "--experts", "careful", "--sampling-steps", "1",
                     "--bootstrap", "10"]) == 0
    out = tmp_path / "results.md"
    assert cli_main(["report", "--eval", str(tmp_path / "eval"), "--policy-eval", str(tmp_path / "pe"),
                     "--out", str(out)]) == 0
    text = out.read_text()
    assert "| tiny |" in text and "LPIPS was not computed" in text and "expert-careful" in text
    assert "persistworld evaluate --model" in text and "persistworld policy-eval --model" in text


def test_summary_names_the_better_model_by_hand_computed_margins_and_includes_notes(tmp_path):
    metrics, _ = _write_synthetic_outputs(tmp_path)
    notes = tmp_path / "notes.md"
    notes.write_text("Post-training did not help the wrist camera.\n")
    text = build_report(str(tmp_path / "eval"), None, str(tmp_path / "r.md"), command="persistworld report",
                        notes=str(notes))
    base, pw = metrics["models"]["base"], metrics["models"]["persistworld"]
    # persistworld is shifted up in PSNR (+1 dB) and down in LPIPS: it is the better model on both.
    psnr_gap = pw["exterior"]["psnr"]["mean"] - base["exterior"]["psnr"]["mean"]
    pair = next(p for p in metrics["paired"] if p["group"] == "exterior" and p["metric"] == "psnr")
    wins = pair["losses"] if pair["model_a"] == "base" else pair["wins"]
    assert (f"- external cameras, PSNR: **persistworld** over base by {psnr_gap:.3f} dB" in text
            and f"persistworld is better on {wins} of {pair['n']} episodes" in text)
    lpips_gap = base["wrist"]["lpips"]["mean"] - pw["wrist"]["lpips"]["mean"]
    assert lpips_gap > 0 and f"- wrist camera, LPIPS: **persistworld** over base by {lpips_gap:.3f}" in text
    assert "## Notes\n\nPost-training did not help the wrist camera." in text
    with pytest.raises(FileNotFoundError, match="notes"):
        build_report(str(tmp_path / "eval"), None, str(tmp_path / "r.md"), notes=str(tmp_path / "missing.md"))
