"""``persistworld report``: ``docs/results.md`` from the outputs of ``evaluate`` and ``policy-eval``.

One command turns ``metrics.json`` (``--eval DIR``) and ``policy_eval.json`` (``--policy-eval DIR``) into
a Markdown report: the fidelity table in the paper's shape, the per-step curves, paired win rates with
sign-test p-values, Elo ratings, policy-evaluation agreement per model (success rates, Pearson r, MMRV,
scatter plot), and the exact commands and seeds that reproduce every number. Both documents are
validated first; the figures are copied next to the report (``<report name>_files/``) so it is
self-contained. Every number in the report is read from those documents, nothing is typed in.
"""
from __future__ import annotations

import argparse
import re
import shutil
from pathlib import Path
from typing import Any, Sequence


def md_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    """Markdown table lines (numbers are expected already formatted)."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    return lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]


def _p(value: float) -> str:
    """A p-value: 3 decimals, or 2 significant digits in scientific notation below 0.001."""
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.1e}"


def _ci(stat: dict, digits: int = 2) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.{digits}f}"  # noqa: E731
    return f"{fmt(stat['value'])} [{fmt(stat['ci_low'])}, {fmt(stat['ci_high'])}]"


def _copy_figure(src: Path, assets: Path, report: Path, prefix: str) -> str:
    """Copy a figure into the report's assets folder; returns its link relative to the report."""
    assets.mkdir(parents=True, exist_ok=True)
    dest = assets / f"{prefix}{src.name}"
    shutil.copyfile(src, dest)
    return dest.relative_to(report.parent).as_posix()


def training_commands(model_path: str) -> list[str]:
    """The command lines recorded in a model directory's card (``- command: `...```): the first one of each
    ``## Source`` section when the model was made from others (``persistworld average``), then the model's own
    lineage (:func:`training.model_card.card_commands`)."""
    from persistworld_env.models.world_model import model_dir
    from training.model_card import card_commands, first_command

    card = model_dir(model_path) / "README.md"
    if not card.is_file():
        return []
    own, *sources = re.split(r"^## Source \d+: .*$", card.read_text(), flags=re.MULTILINE)
    return [c for c in map(first_command, sources) if c] + card_commands(own)


def fidelity_section(doc: dict, eval_dir: Path, report: Path, assets: Path) -> list[str]:
    from persistworld_env.evaluation.fidelity import fidelity_table

    horizon, seconds = doc["horizon"], doc["horizon"] * doc["step_seconds"]
    lines = ["## Replay fidelity", "",
             f"{len(doc['episodes'])} held-out episodes of `{doc['data']}` ({doc['split']} split), replayed from their "
             f"first frame with the recorded poses for {horizon} steps ({seconds:.1f} s). Per camera and step: PSNR "
             "(data range 1), SSIM (Gaussian window 11, sigma 1.5), LPIPS (AlexNet v0.1); external = mean of the two "
             "exterior cameras. Means over all steps and episodes; Elo from the paired games below.", ""]
    if doc.get("dtype", "float32") != "float32":  # documents written before the field ran float32
        lines += [f"Every model ran with {doc['dtype']} weights (`--dtype`); the sampler and the metrics stay float32.",
                  ""]
    backbone = doc["lpips_backbone"]
    if backbone == "alexnet-random":
        lines += ["**LPIPS here runs on a randomly initialised AlexNet backbone (`--lpips random`): the code path is "
                  "exercised, but the numbers are not a perceptual metric and are not comparable to the paper's.**", ""]
    elif backbone is None:
        lines += ["LPIPS was not computed (`--lpips off`).", ""]
    headers, rows = fidelity_table(doc)
    lines += md_table(headers, rows) + [""]
    for metric, name in doc.get("figures", {}).items():
        src = eval_dir / name
        if src.is_file():
            lines += [f"![{metric} over replay steps]({_copy_figure(src, assets, report, 'eval_')})", ""]
    videos = doc.get("videos", {})
    if videos.get("files"):
        lines += [f"Side-by-side videos ({', '.join(videos['columns'])}, left to right) per episode and camera: "
                  f"`{eval_dir / 'videos'}`.", ""]
    return lines


def paired_section(doc: dict) -> list[str]:
    if not doc["paired"]:
        return []
    rows = [[p["model_a"], p["model_b"], {"exterior": "external"}.get(p["group"], p["group"]), p["metric"].upper(),
             f"{p['wins']} / {p['n']}", f"{p['win_rate']:.1%}", p["ties"], _p(p["p_value"])] for p in doc["paired"]]
    lines = ["## Paired per-episode comparisons", "",
             "A beats B on an episode when its mean over the steps (and the group's cameras) is better (higher PSNR "
             "and SSIM, lower LPIPS). Ties are dropped; p is the two-sided exact sign (binomial) test.", ""]
    return lines + md_table(["A", "B", "cameras", "metric", "A wins / n", "win rate", "ties", "p"], rows) + [""]


def summary_lines(doc: dict, alpha: float = 0.05) -> list[str]:
    """One plain sentence per model pair, camera group and metric: who is better, by how much, how sure."""
    units = {"psnr": " dB", "ssim": "", "lpips": ""}
    lines = []
    for p in doc["paired"]:
        a, b, group, metric = p["model_a"], p["model_b"], p["group"], p["metric"]
        mean_a, mean_b = (doc["models"][m][group][metric]["mean"] for m in (a, b))
        higher = doc["higher_is_better"][metric]
        winner, loser = (a, b) if (mean_a > mean_b) == higher else (b, a)
        wins = p["wins"] if winner == a else p["losses"]
        verdict = "significant" if p["p_value"] < alpha else "not significant"
        where = {"exterior": "external cameras"}.get(group, f"{group} camera")
        lines.append(f"- {where}, {metric.upper()}: **{winner}** over {loser} by {abs(mean_a - mean_b):.3f}"
                     f"{units.get(metric, '')} ({mean_a:.3f} vs {mean_b:.3f} for {a} vs {b}); {winner} is better on "
                     f"{wins} of {p['n']} episodes, p = {_p(p['p_value'])} ({verdict} at {alpha}).")
    return lines


def summary_section(doc: dict) -> list[str]:
    if not doc["paired"]:
        return []
    return ["## Summary", "", "Means over all replay steps and episodes; p from the paired sign test below.", ""] + \
        summary_lines(doc) + [""]


def elo_section(doc: dict) -> list[str]:
    elo = doc["elo"]
    rows = sorted(([name, f"{r['elo']:.0f}", f"[{r['ci_low']:.0f}, {r['ci_high']:.0f}]"]
                   for name, r in elo["ratings"].items()), key=lambda r: -float(r[1]))
    return ["## Elo (Bradley-Terry)", "",
            f"Bradley-Terry fit over all paired games ({elo['comparisons']}), on the Elo scale (mean 1000, "
            f"400 points = 10:1 odds); {elo['confidence']:.0%} intervals from {elo['bootstrap']} bootstrap "
            "resamples of the episodes.",
            ""] + md_table(["model", "Elo", f"{elo['confidence']:.0%} interval"], rows) + [""]


def policy_section(doc: dict, policy_dir: Path, report: Path, assets: Path) -> list[str]:
    models = doc["models"]
    lines = ["## Policy evaluation", "",
             f"{len(doc['policies'])} policies, {len(doc['seeds'])} episodes each of at most {doc['max_steps']} steps "
             f"(seeds {doc['seeds'][0]}..{doc['seeds'][-1]}), from the same reset seeds in `MiniDROID-Sim-v0` "
             "(success: "
             f"{doc['real']['success_source']}) and in each world model (success: "
             f"{next(iter(models.values()))['success_source'] if models else 'n/a'}). MMRV as defined by SIMPLER "
             "(lower is better); intervals: bootstrap over seeds.", ""]
    headers = ["policy", "kind", "MiniDROID-Sim-v0"] + list(models)
    kinds = {p["name"]: p["kind"] for p in doc["policies"]}
    rows = [[p, kinds[p], f"{doc['real']['rate'][p]:.2f}"] + [f"{e['rate'][p]:.2f}" for e in models.values()]
            for p in doc["real"]["rate"]]
    lines += md_table(headers, rows) + [""]
    conf = f"{doc['confidence']:.0%}"
    lines += md_table(["model", f"Pearson r [{conf}]", f"MMRV [{conf}]"],
                      [[m, _ci(e["pearson"]), _ci(e["mmrv"], 3)] for m, e in models.items()]) + [""]
    scatter = doc.get("figures", {}).get("scatter")
    if scatter and (policy_dir / scatter).is_file():
        link = _copy_figure(policy_dir / scatter, assets, report, "policy_")
        lines += [f"![policy success: simulator vs model]({link})", ""]
    described = [[p["name"], p["kind"], ", ".join(f"{k}={v}" for k, v in p["config"].items()
                                                   if k in ("action_std", "grasp_offset_std", "speed", "give_up_prob",
                                                            "steps", "episodes", "final_loss", "step", "p_close"))]
                 for p in doc["policies"]]
    return lines + ["The policy zoo:", ""] + md_table(["policy", "kind", "settings"], described) + [""]


def reproduce_section(metrics: dict | None, policy: dict | None, command: str) -> list[str]:
    lines = ["## Reproduce", "", "Every number above comes from these commands (run in this order):", "", "```bash"]
    trained: dict[str, list[str]] = {}
    for doc in (metrics, policy):
        for name, entry in (doc or {}).get("models", {}).items():
            found = training_commands(entry["path"])
            if found:
                trained.setdefault(name, found)
    for name, commands in trained.items():
        lines.append(f"# model {name}\n" + "\n".join(commands))
    if metrics:
        lines.append(metrics["command"])
    if policy:
        lines.append(policy["command"])
    lines += [command, "```", ""]
    if metrics:
        lines += [f"- replay fidelity: base seed {metrics['seed']}; episode e replays with sampling seed "
                  f"`SeedSequence([{metrics['seed']}, e]).generate_state(1)[0]`, the same for every model; episodes "
                  f"{metrics['episodes']}; sampler overrides {metrics['sampler'] or 'none (each model its own)'}."]
    if policy:
        lines += [f"- policy evaluation: reset seeds {policy['seeds']} in both worlds; behaviour cloning and bootstrap "
                  f"seed {policy['seed']}."]
    return lines + [""]


def build_report(eval_dir: str | None, policy_dir: str | None, out: str, command: str | None = None,
                 notes: str | None = None) -> str:
    """Write the report to ``out`` (figures to ``<out stem>_files/``) and return its text.

    ``notes``: a Markdown file of the authors' reading of the numbers, included verbatim under *Notes*
    (everything else is generated).
    """
    from persistworld_env.evaluation.fidelity import load_metrics
    from persistworld_env.evaluation.policy_agreement import load_policy_eval

    if eval_dir is None and policy_dir is None:
        raise ValueError("give --eval and/or --policy-eval")
    if notes is not None and not Path(notes).is_file():
        raise FileNotFoundError(f"--notes: no such file {notes}")
    report = Path(out)
    assets = report.parent / f"{report.stem}_files"
    metrics = load_metrics(eval_dir) if eval_dir else None
    policy = load_policy_eval(policy_dir) if policy_dir else None
    if command is None:
        from training.cli import command_line

        command = command_line()
    lines = ["# PersistWorld results", "",
             f"Generated by `{command}`; do not edit by hand, rerun the commands under *Reproduce*.", ""]
    if metrics:
        eval_path = Path(eval_dir)
        eval_path = eval_path if eval_path.is_dir() else eval_path.parent
        lines += summary_section(metrics) + fidelity_section(metrics, eval_path, report, assets)
        lines += paired_section(metrics) + elo_section(metrics)
    if policy:
        policy_path = Path(policy_dir)
        policy_path = policy_path if policy_path.is_dir() else policy_path.parent
        lines += policy_section(policy, policy_path, report, assets)
    if notes is not None:
        lines += ["## Notes", "", Path(notes).read_text().strip(), ""]
    lines += reproduce_section(metrics, policy, command)
    text = "\n".join(lines)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text)
    return text


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--eval", dest="eval_dir", default=None, help="output folder of persistworld evaluate "
                        "(or its metrics.json)")
    parser.add_argument("--policy-eval", dest="policy_dir", default=None, help="output folder of persistworld "
                        "policy-eval (or its policy_eval.json)")
    parser.add_argument("--out", default="docs/results.md", help="the Markdown report (default: docs/results.md)")
    parser.add_argument("--notes", default=None, help="a Markdown file of notes on the numbers, included verbatim")
    return parser


def main(args: argparse.Namespace) -> int:
    build_report(args.eval_dir, args.policy_dir, args.out, command=getattr(args, "command_line", None),
                 notes=args.notes)
    print(f"wrote {args.out}")
    return 0
