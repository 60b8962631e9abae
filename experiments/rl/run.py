"""Latent GRPO against token GRPO on the quickstart: accuracy before/after, time per step, plot.

    python experiments/rl/run.py [--steps 20] [--out experiments/rl]

Needs the quickstart chain (stages 1, 1b, 2 and the policy re-clone) under checkpoints/quickstart/.
Runs, for each of configs/quickstart/{latent,token}_rl.yaml: `validate` (accuracy before), then
`fit` (validating every `--val-every` steps). Same prompts, same group size, same generation length;
both stop after `--steps` steps. Reads the TensorBoard logs back and writes results.json and
accuracy_vs_time.png into `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

KINDS = ("latent", "token")


def cli(*args: str) -> str:
    command = [sys.executable, "-m", "cola_lightning", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def latest_logdir(name: str) -> Path:
    versions = Path("runs/quickstart", name).glob("version_*")
    return max(versions, key=lambda p: p.stat().st_mtime)


def read_events(logdir: Path) -> EventAccumulator:
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return events


def accuracy_before(kind: str) -> float:
    """Greedy validation accuracy of the starting model (the `validate` subcommand)."""
    name = f"{kind}_rl_before"
    config = f"configs/quickstart/{kind}_rl.yaml"
    cli("validate", "--config", config, f"--trainer.logger.init_args.name={name}")
    return read_events(latest_logdir(name)).Scalars("val/accuracy")[-1].value


def train(kind: str, steps: int, val_every: int) -> Path:
    name = f"{kind}_rl_experiment"
    cli(
        "fit",
        "--config",
        f"configs/quickstart/{kind}_rl.yaml",
        f"--trainer.max_steps={steps}",
        f"--trainer.val_check_interval={val_every}",
        f"--trainer.logger.init_args.name={name}",
    )
    return latest_logdir(name)


def summarise(kind: str, logdir: Path, before: float) -> dict:
    events = read_events(logdir)
    start = min(e.wall_time for e in events.Scalars("timing/rollout_s"))
    rollout = [e.value for e in events.Scalars("timing/rollout_s")]
    update = [e.value for e in events.Scalars("timing/update_s")]
    curve = [(0.0, before)] + [
        (e.wall_time - start, e.value) for e in events.Scalars("val/accuracy")
    ]
    return {
        "kind": kind,
        "accuracy_before": before,
        "accuracy_after": curve[-1][1],
        "steps": len(rollout),
        "step_s_mean": round(
            statistics.mean(r + u for r, u in zip(rollout, update, strict=True)), 2
        ),
        "rollout_s_mean": round(statistics.mean(rollout), 2),
        "update_s_mean": round(statistics.mean(update), 2),
        "reward_mean_first_5": round(
            statistics.mean(e.value for e in events.Scalars("rl/reward_mean")[:5]), 3
        ),
        "reward_mean_last_5": round(
            statistics.mean(e.value for e in events.Scalars("rl/reward_mean")[-5:]), 3
        ),
        "accuracy_vs_seconds": [(round(t, 1), round(a, 4)) for t, a in curve],
    }


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for result in results:
        times, accuracy = zip(*result["accuracy_vs_seconds"], strict=True)
        axes.plot(times, accuracy, marker="o", label=f"{result['kind']} GRPO")
    axes.set_xlabel("wall time of training (s, 2-core CPU)")
    axes.set_ylabel("validation accuracy (greedy)")
    axes.set_title("GRPO on procedural arithmetic, SmolLM2-135M")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--val-every", type=int, default=10)
    parser.add_argument("--out", default="experiments/rl")
    args = parser.parse_args()
    out = Path(args.out)
    results = []
    for kind in KINDS:
        before = accuracy_before(kind)
        logdir = train(kind, args.steps, args.val_every)
        results.append(summarise(kind, logdir, before))
        print(json.dumps(results[-1]), flush=True)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot(results, out / "accuracy_vs_time.png")


if __name__ == "__main__":
    main()
