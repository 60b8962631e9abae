"""Agent tasks as records, and their gold trajectories as text in the episodes' own format.

A record names one episode: ``environment``, ``env_args``, ``task``, ``variation`` and ``split``
(``train``, ``seen`` or ``unseen``). The seen variations of each task are split into training
ones and a few held out for seen validation; unseen validation draws from the environment's
unseen split, which training never sees. A gold trajectory is the episode the environment's gold
actions make, as (text, is_action) pieces: stage 2 trains on the action pieces, the stage-1/1b
corpus is their plain text.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from cola_lightning.envs.base import Environment, make_environment
from cola_lightning.rollout.episodes import EpisodeFormat


@dataclass
class AgentTasks:
    """Which episodes a run uses.

    Args:
        environment: a registered environment (``household``, ``scienceworld``).
        env_args: the environment's constructor arguments.
        tasks: task families; None takes every family the environment has.
        max_train_per_task: cap on training variations per task (None: all seen ones left).
        val_per_task: seen variations per task held out for seen validation, and unseen ones
            drawn for unseen validation.
        seed: seed of the shuffle that picks the held-out and capped variations.
    """

    environment: str = "household"
    env_args: dict = field(default_factory=dict)
    tasks: list[str] | None = None
    max_train_per_task: int | None = None
    val_per_task: int = 4
    seed: int = 0

    def make(self) -> Environment:
        return make_environment(self.environment, **self.env_args)

    def splits(self) -> dict[str, list[dict]]:
        """Records of the ``train``, ``seen`` and ``unseen`` splits (bad task names raise)."""
        env = self.make()
        names = self.tasks or env.task_names()
        result: dict[str, list[dict]] = {"train": [], "seen": [], "unseen": []}
        for task in names:
            seen = self.shuffled(env.variations(task, "seen"), task)
            unseen = self.shuffled(env.variations(task, "unseen"), task)
            held = self.val_per_task
            chosen = {
                "train": seen[held:][: self.max_train_per_task],
                "seen": seen[:held],
                "unseen": unseen[:held],
            }
            for split, variations in chosen.items():
                result[split] += [self.record(task, v, split) for v in variations]
        for name, records in result.items():
            if not records:
                raise ValueError(
                    f"The {name} split of {self.environment} tasks {names} is empty: lower "
                    "val_per_task or add tasks."
                )
        return result

    def shuffled(self, variations: list[int], task: str) -> list[int]:
        variations = list(variations)
        random.Random(f"{self.seed}/{task}").shuffle(variations)
        return variations

    def record(self, task: str, variation: int, split: str) -> dict:
        return {
            "environment": self.environment,
            "env_args": dict(self.env_args),
            "task": task,
            "variation": variation,
            "split": split,
        }


def gold_pieces(env: Environment, record: dict, form: EpisodeFormat) -> list[tuple[str, bool]]:
    """The gold episode of `record` as (text, is_action) pieces, ending with the last action.

    Raises:
        ValueError: the gold actions do not solve the task (a broken environment or record).
    """
    observation = env.reset(record["task"], int(record["variation"]))
    pieces = [(form.prompt(observation), False)]
    for action in env.gold_actions():
        if len(pieces) > 1:
            pieces.append((form.feedback(observation), False))
        pieces.append((action + form.action_end, True))
        observation = env.step(action).observation
    if env.score() < 1.0:
        raise ValueError(
            f"The gold actions of {record['task']!r} variation {record['variation']} reach score "
            f"{env.score()}, not 1."
        )
    return pieces


def gold_trajectories(
    tasks: AgentTasks, split: str, form: EpisodeFormat
) -> list[list[tuple[str, bool]]]:
    """The gold pieces of every record in `split` (``train``, ``seen`` or ``unseen``)."""
    env = tasks.make()
    return [gold_pieces(env, record, form) for record in tasks.splits()[split]]


@dataclass
class AgentCorpus:
    """Gold trajectories of the training tasks as plain documents (stages 1 and 1b).

    Args:
        tasks: which episodes.
        format: how episodes are written (the same as the RL stage's).
    """

    tasks: AgentTasks = field(default_factory=AgentTasks)
    format: EpisodeFormat = field(default_factory=EpisodeFormat)

    def documents(self) -> list[str]:
        trajectories = gold_trajectories(self.tasks, "train", self.format)
        return ["".join(text for text, _ in pieces) for pieces in trajectories]
