"""The interface every text environment of an agent task implements, and the registry of them.

An episode is: `reset(task, variation)` gives the first observation (with the goal and, where the
environment offers them, the valid actions); then the agent writes one action text at a time and
`step(action)` answers with the next observation, a reward, and whether the episode is over.
`score()` is the episode's score in [0, 1] (1 = the task is solved). Adding an environment is one
file: subclass `Environment` and decorate it with `register("name")`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

SPLITS = ("seen", "unseen")


@dataclass
class Observation:
    """What the agent reads after a reset or a step.

    Args:
        text: the environment's words (room description, feedback on the last action, ...).
        goal: the task description, the same for the whole episode.
        valid_actions: the actions the environment would accept now, where it says (else empty).
    """

    text: str
    goal: str
    valid_actions: list[str] = field(default_factory=list)


@dataclass
class StepResult:
    """The answer to one action.

    Args:
        observation: what the agent reads next.
        reward: the change of the episode's score this step brought.
        done: the episode is over (solved, failed, or the environment's own limit).
        info: ``invalid`` (the action was not understood or not possible), ``score``, and whatever
            else the environment reports.
    """

    observation: Observation
    reward: float
    done: bool
    info: dict = field(default_factory=dict)


class Environment(ABC):
    """One running episode of a text environment (one instance per parallel episode)."""

    @abstractmethod
    def task_names(self) -> list[str]:
        """The task families this environment offers."""

    @abstractmethod
    def variations(self, task: str, split: str) -> list[int]:
        """The variation ids of `task` in `split` (``seen`` = train, ``unseen`` = held out)."""

    @abstractmethod
    def reset(self, task: str, variation: int) -> Observation:
        """Starts an episode of `task` in `variation` and returns the first observation."""

    @abstractmethod
    def step(self, action: str) -> StepResult:
        """Carries out one action text. Invalid actions get feedback, never an exception."""

    @abstractmethod
    def score(self) -> float:
        """The episode's score so far, in [0, 1]; 1 means solved."""

    @abstractmethod
    def gold_actions(self) -> list[str]:
        """A sequence of actions that solves the current episode from its reset state."""

    def check_task(self, task: str) -> None:
        """Raises a clear error for a task name this environment does not have."""
        names = self.task_names()
        if task not in names:
            raise ValueError(
                f"Unknown task {task!r} for {type(self).__name__}; available: {', '.join(names)}."
            )

    @staticmethod
    def check_split(split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"Unknown split {split!r}; use one of {SPLITS}.")


ENVIRONMENTS: dict[str, type[Environment]] = {}


def register(name: str):
    """Class decorator: makes the environment available to `make_environment(name)`."""

    def decorate(cls: type[Environment]) -> type[Environment]:
        ENVIRONMENTS[name] = cls
        return cls

    return decorate


def make_environment(name: str, **kwargs) -> Environment:
    """A new environment instance by registered name (``household``, ``scienceworld``)."""
    # Importing the package registers the built-in environments.
    import cola_lightning.envs  # noqa: F401

    if name not in ENVIRONMENTS:
        raise ValueError(f"Unknown environment {name!r}; available: {sorted(ENVIRONMENTS)}.")
    return ENVIRONMENTS[name](**kwargs)
