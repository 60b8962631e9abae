"""Does RL learn? Latent GRPO and token GRPO learning curves on the quickstart chain (issue 12).

    # one run per call, each on its own core (1 thread: two runs side by side, no oversubscription)
    python experiments/rl/learning.py run --kind latent --seed 0 --lr 1e-5 --core 0
    python experiments/rl/learning.py run --kind token --seed 0 --lr 1e-4 --core 1 --minutes 45
    python experiments/rl/learning.py report    # learning.json and the PNGs, from the logs

Needs the quickstart chain (bash experiments/quickstart_chain.sh). The workload: unseen procedural
arithmetic (seed 2; 200 held-out problems validated greedily at the start, every `--val-every`
steps and at the end), 4 prompts x group 8 per step, up to 96 new tokens, KL 1e-3, constant lr.
`--minutes` stops a run by wall time (Lightning's max_time): the token runs get the latent runs'
time budget. Logs go to runs/quickstart/rlx_<kind>_lr<lr>_s<seed>/, checkpoints beside the
quickstart's. Hardware: one CPU core per run: about 45 s per latent step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

OUT = Path("experiments/rl")
LOGS = Path("runs/quickstart")
PROMPTS, ROLLOUTS = 4, 32  # per step, the workload's defaults (`--prompts`, `--prompts x --group`)


# Where each run starts: the quickstart's CoLA model, or (token RL only) the token baseline's SFT.
STARTS = {
    "reclone": "checkpoints/quickstart/action_guided_reclone/last.ckpt",
    "token_sft": "checkpoints/quickstart/token_sft/last.ckpt",
}


def label(args: argparse.Namespace) -> str:
    """The method, and its start when that is not the default (`token-sft`)."""
    return args.kind if args.start == "reclone" else f"{args.kind}-sft"


def run_name(args: argparse.Namespace) -> str:
    return f"rlx_{label(args)}_lr{args.lr}_s{args.seed}"


def run_key(run: dict) -> str:
    """The run's log name, from a learning.json entry."""
    return f"rlx_{run['kind']}_lr{run['lr']}_s{run['seed']}"


def overrides(args: argparse.Namespace) -> list[str]:
    """The workload, as command-line overrides of configs/quickstart/<kind>_rl.yaml."""
    name = run_name(args)
    checkpoint = {
        "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
        "init_args": {"dirpath": f"checkpoints/quickstart/{name}", "save_last": True},
    }
    optimizer = {"lr": float(args.lr), "min_lr": float(args.lr), "warmup_steps": 0}
    optimizer |= {"weight_decay": 0.0, "betas": [0.9, 0.95]}
    time_limit = [f"--trainer.max_time=00:00:{args.minutes:02d}:00"] if args.minutes else []
    if args.micro_batch:  # token RL's update over 32 rollouts needs ~20 GB in one pass
        time_limit.append(f"--model.init_args.rl.micro_batch_size={args.micro_batch}")
    return [
        f"--seed_everything={args.seed}",
        f"--trainer.max_steps={args.steps}",
        f"--trainer.val_check_interval={args.val_every}",
        "--trainer.limit_val_batches=null",
        "--trainer.enable_progress_bar=false",
        f"--trainer.logger.init_args.name={name}",
        f"--trainer.callbacks=[{json.dumps(checkpoint)}]",
        f"--model.init_args.optimizer={json.dumps(optimizer)}",
        f"--model.init_args.rl.group_size={args.group}",
        f"--data.init_args.batch_size={args.prompts}",
        f"--data.init_args.val_size={args.val_size}",
        "--data.init_args.val_batch_size=50",
        f"--model.init_args.init_from={STARTS[args.start]}",
        *time_limit,
    ]


def run(args: argparse.Namespace) -> None:
    """Greedy accuracy before training (once per kind: it does not depend on the seed), then fit."""
    config = f"configs/quickstart/{args.kind}_rl.yaml"
    workload = overrides(args)
    before = f"rlx_{label(args)}_before"
    commands = [["fit", "--config", config, *workload]]
    if not (LOGS / before).exists():
        validate = [a for a in workload if not a.startswith("--trainer.logger")]
        validate += [f"--trainer.logger.init_args.name={before}"]
        commands.insert(0, ["validate", "--config", config, *validate])
    for command in commands:
        command = [sys.executable, "-m", "cola_lightning", *command]
        if args.core is not None:
            command = ["taskset", "-c", str(args.core), *command]
        print(" ".join(command), flush=True)
        subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})


def read_events(logdir: Path) -> EventAccumulator:
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return events


def latest(name: str) -> Path:
    return max((LOGS / name).glob("version_*"), key=lambda p: p.stat().st_mtime)


def curves(logdir: Path, prompt_tokens: float) -> dict:
    """Per step: wall time, cumulative backbone tokens, reward; validation points likewise.

    Runs logged before `rl/backbone_tokens` existed get it estimated as the latent rollout's
    count: `prompt_tokens` per prompt plus every generated token but the last.
    """
    events = read_events(logdir)
    tags = set(events.Tags()["scalars"])
    scalars = lambda tag: events.Scalars(tag) if tag in tags else []  # noqa: E731
    steps = scalars("rl/reward_mean")
    first = scalars("timing/rollout_s")[0].value + scalars("timing/update_s")[0].value
    start = steps[0].wall_time - first
    if "rl/backbone_tokens" in tags:
        per_step = {e.step: e.value for e in scalars("rl/backbone_tokens")}
    else:
        per_step = {
            e.step: PROMPTS * prompt_tokens + ROLLOUTS * (e.value - 1)
            for e in scalars("rl/response_tokens")
        }
    spent = {step: sum(v for s, v in per_step.items() if s <= step) for step in per_step}
    point = lambda e, **kv: {"step": e.step, "seconds": round(e.wall_time - start, 1), **kv}  # noqa: E731
    validation = [
        point(e, accuracy=round(e.value, 4), backbone_tokens=spent.get(e.step, 0))
        for e in scalars("val/accuracy")
    ]
    rewards = [e.value for e in steps]
    return {
        "reward": [point(e, reward=round(e.value, 4)) for e in steps],
        "validation": validation,
        "steps": len(steps),
        "reward_first_10": round(statistics.mean(rewards[:10]), 4),
        "reward_last_10": round(statistics.mean(rewards[-10:]), 4),
        "signal_frac_mean": mean_of(scalars("rl/signal_frac")),
        "kl_last": round(scalars("rl/kl")[-1].value, 5),
        "backbone_tokens": sum(per_step.values()),
        "backbone_tokens_estimated": "rl/backbone_tokens" not in tags,
        "rollout_s_mean": mean_of(scalars("timing/rollout_s")),
        "update_s_mean": mean_of(scalars("timing/update_s")),
    }


def mean_of(events: list) -> float | None:
    return round(statistics.mean(e.value for e in events), 4) if events else None


def measured_prompt_tokens(logdirs: list[Path]) -> float:
    """Mean prompt length, from latent runs that logged both the rollout count and lengths."""
    values = []
    for logdir in logdirs:
        events = read_events(logdir)
        if "rl/backbone_tokens" in events.Tags()["scalars"] and "_latent_" in str(logdir):
            lengths = events.Scalars("rl/response_tokens")
            for total, length in zip(events.Scalars("rl/backbone_tokens"), lengths, strict=True):
                values.append((total.value - ROLLOUTS * (length.value - 1)) / PROMPTS)
    return statistics.mean(values)


def sampled_actions(logdir: Path) -> bool:
    """Whether the run sampled the actions it trains, read from its own saved settings."""
    import yaml

    generation = yaml.safe_load((logdir / "hparams.yaml").read_text())["generation"]
    return not generation["code" if "_latent_" in logdir.parent.name else "token"]["greedy"]


def report() -> None:
    """learning.json (every run, and per method the mean and spread over seeds) and the PNG.

    Runs whose logs this machine lacks are kept as the previous learning.json has them; a run
    that is in both is replaced by its logs.
    """
    output_file = OUT / "learning.json"
    previous = json.loads(output_file.read_text()) if output_file.exists() else {"runs": []}
    logdirs = {d.name: latest(d.name) for d in sorted(LOGS.glob("rlx_*_s*"))}
    latent_logs = [d for d in logdirs.values() if "_latent_" in str(d)]
    prompt_tokens = (
        measured_prompt_tokens(latent_logs) if latent_logs else previous["prompt_tokens_mean"]
    )
    runs = [r for r in previous["runs"] if run_key(r) not in logdirs]
    for name, logdir in logdirs.items():
        kind, lr, seed = name.removeprefix("rlx_").split("_")
        before = read_events(latest(f"rlx_{kind}_before")).Scalars("val/accuracy")[-1].value
        result = {
            "kind": kind,
            "lr": lr[2:],
            "seed": int(seed[1:]),
            "sampled_actions": sampled_actions(logdir),
            **curves(logdir, prompt_tokens),
        }
        start = {"step": 0, "seconds": 0.0, "accuracy": round(before, 4), "backbone_tokens": 0}
        result["validation"].insert(0, start)
        runs.append(result)
    summary = {}
    for kind, lr in sorted({(r["kind"], r["lr"]) for r in runs}):
        finals = [
            r["validation"][-1]["accuracy"] for r in runs if (r["kind"], r["lr"]) == (kind, lr)
        ]
        summary[f"{kind} lr {lr}"] = {
            "seeds": len(finals),
            "accuracy_before": [r for r in runs if r["kind"] == kind][0]["validation"][0][
                "accuracy"
            ],
            "accuracy_after_mean": round(statistics.mean(finals), 4),
            "accuracy_after_spread": round(max(finals) - min(finals), 4),
        }
    output = {"prompt_tokens_mean": round(prompt_tokens, 1), "summary": summary, "runs": runs}
    output_file.write_text(json.dumps(output, indent=1))
    plot(runs)


def plot(runs: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [
        ("reward", "seconds", "training reward (mean of 32 rollouts, 8-step average)"),
        ("validation", "seconds", "held-out accuracy (200 problems, greedy)"),
        ("validation", "backbone_tokens", "held-out accuracy (200 problems, greedy)"),
    ]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for axis, (series, x, ylabel) in zip(axes, panels, strict=True):
        for run in runs:
            points = run[series]
            ys = [p["reward" if series == "reward" else "accuracy"] for p in points]
            if series == "reward":  # one step's 32 rollouts are noisy: a running mean of 8 steps
                ys = [
                    sum(ys[max(0, i - 7) : i + 1]) / len(ys[max(0, i - 7) : i + 1])
                    for i in range(len(ys))
                ]
            style = "-" if run["kind"] == "latent" else "--"
            name = f"{run['kind']} GRPO lr {run['lr']} seed {run['seed']}"
            if not run["sampled_actions"]:
                name += " (greedy rollouts: config bug)"
            axis.plot(
                [p[x] for p in points],
                ys,
                style,
                marker="o" if series != "reward" else None,
                label=name,
            )
        axis.set_xlabel("wall time (s, one CPU core)" if x == "seconds" else "backbone tokens")
        axis.set_ylabel(ylabel)
    axes[0].legend(fontsize=7)
    figure.suptitle("GRPO on unseen procedural arithmetic, quickstart CoLA model (SmolLM2-135M)")
    figure.tight_layout()
    figure.savefig(OUT / "learning_curves.png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    start = sub.add_parser("run")
    start.add_argument("--kind", choices=("latent", "token"), required=True)
    start.add_argument("--seed", type=int, default=0)
    start.add_argument("--lr", default="1e-5")
    start.add_argument("--steps", type=int, default=60)
    start.add_argument("--val-every", type=int, default=20)
    start.add_argument("--group", type=int, default=8)
    start.add_argument("--prompts", type=int, default=4)
    start.add_argument("--val-size", type=int, default=200)
    start.add_argument("--minutes", type=int, default=0, help="wall-time limit; 0: none")
    start.add_argument("--core", type=int, default=None, help="pin to this CPU core")
    start.add_argument("--start", choices=sorted(STARTS), default="reclone")
    start.add_argument("--micro-batch", type=int, default=0, help="rl.micro_batch_size; 0: none")
    sub.add_parser("report")
    args = parser.parse_args()
    run(args) if args.command == "run" else report()


if __name__ == "__main__":
    main()
