"""ScienceWorld (Wang et al., 2022) through the environment interface.

PyPI ``scienceworld`` ships the simulator as a jar and runs it offline on a local Java (17 here).
Its task families are elementary-science experiments (boil water, find a living thing, test
conductivity, ...), each with numbered variations that the benchmark splits into train, dev and
test; we call train "seen" and test "unseen". Its score (0..100) divided by 100 is ours, and its
gold action sequences are the demonstrations for stage 2.
"""

from __future__ import annotations

import importlib.util
import shutil

from cola_lightning.envs.base import Environment, Observation, StepResult, register

INSTALL_JAVA = "apt-get install -y openjdk-17-jre-headless (scripts/install.sh does it)"
INSTALL_PACKAGE = "pip install scienceworld==1.2.3 (scripts/install.sh does it)"
# What ScienceWorld answers to a command it cannot parse.
UNKNOWN_ACTION = "No known action matches"


def check_scienceworld_installed() -> None:
    """Raises a clear error naming the install step when Java or the package is missing."""
    if shutil.which("java") is None:
        raise RuntimeError(f"ScienceWorld runs on Java, and no `java` is on PATH: {INSTALL_JAVA}.")
    if importlib.util.find_spec("scienceworld") is None:
        raise ModuleNotFoundError(f"`scienceworld` is not installed: {INSTALL_PACKAGE}.")


@register("scienceworld")
class ScienceWorldEnvironment(Environment):
    """A ScienceWorld simulator (one JVM) running one episode at a time.

    Args:
        max_steps: the episode ends after this many actions.
        simplifications: ScienceWorld's simplification string; ``easy`` is the benchmark's usual
            setting for LLM agents (teleporting, open doors, no electrical actions).
    """

    def __init__(self, max_steps: int = 50, simplifications: str = "easy") -> None:
        check_scienceworld_installed()
        from scienceworld import ScienceWorldEnv

        self.max_steps = max_steps
        self.simplifications = simplifications
        self.env = ScienceWorldEnv("", envStepLimit=max_steps)
        self._names = list(self.env.get_task_names())
        self._task: str | None = None
        self._score = 0.0
        self._goal = ""

    def task_names(self) -> list[str]:
        return self._names

    def variations(self, task: str, split: str) -> list[int]:
        self.check_task(task)
        self.check_split(split)
        self.env.load(task, 0, self.simplifications)
        if split == "seen":
            return list(self.env.get_variations_train())
        return list(self.env.get_variations_test())

    def reset(self, task: str, variation: int) -> Observation:
        self.check_task(task)
        limit = self.env.get_max_variations(task)
        if not 0 <= variation < limit:
            raise ValueError(f"Task {task!r} has variations 0..{limit - 1}, not {variation}.")
        self.env.load(task, variation, self.simplifications, generateGoldPath=True)
        text, info = self.env.reset()
        self._task, self._goal = task, info["taskDesc"]
        self._score = normalized_score(info.get("score", 0))
        return Observation(text, self._goal, list(info["valid"]))

    def step(self, action: str) -> StepResult:
        if self._task is None:
            raise RuntimeError("Call reset(task, variation) before step().")
        text, _, done, raw = self.env.step(action)
        score = normalized_score(raw["score"])
        reward, self._score = score - self._score, score
        info = {"invalid": text.startswith(UNKNOWN_ACTION), "score": score, "steps": raw["moves"]}
        return StepResult(Observation(text, self._goal, list(raw["valid"])), reward, done, info)

    def score(self) -> float:
        return self._score

    def gold_actions(self) -> list[str]:
        return list(self.env.get_gold_action_sequence())


def normalized_score(score: float) -> float:
    """ScienceWorld's 0..100 score in [0, 1]; its -100 for a failed episode counts as 0."""
    return max(float(score), 0.0) / 100
