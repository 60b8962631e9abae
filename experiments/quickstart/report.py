"""Summarises quickstart runs from their TensorBoard event files.

    python experiments/quickstart/report.py runs/quickstart/latent_actions/version_0 [...]

Prints one JSON line per run: the last value of each headline metric, the mean tokens/s, and the
wall time between the first and last event (model loading excluded).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

HEADLINE = (
    "val/wm_nll",
    "val/base_nll",
    "val/wm_nll_policy",
    "val/bc_accuracy",
    "codebook/alive",
    "codebook/perplexity",
    "train/ce",
)


def summarise(logdir: Path) -> dict:
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    summary = {"run": str(logdir)}
    for tag in HEADLINE:
        if tag in scalars:
            summary[tag] = round(events.Scalars(tag)[-1].value, 4)
    speed = [e.value for e in events.Scalars("perf/tokens_per_s")]
    summary["tokens_per_s_mean"] = round(statistics.mean(speed), 1)
    times = [e.wall_time for tag in scalars for e in events.Scalars(tag)]
    summary["logged_span_s"] = round(max(times) - min(times), 1)
    return summary


if __name__ == "__main__":
    for argument in sys.argv[1:]:
        print(json.dumps(summarise(Path(argument))))
