"""Reward functions by name, and a weighted sum of several that survives a failing one.

A reward function is `fn(prompt: str, response: str, example: dict) -> float`, where `example`
holds the task's fields: at least `"answer"` (the gold final answer, a string or None), and for
Countdown also `"numbers"`.
"""

from __future__ import annotations

import concurrent.futures
import functools
import importlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from cola_lightning.rewards import countdown
from cola_lightning.rewards import format as format_reward
from cola_lightning.rewards import math as math_reward

log = logging.getLogger(__name__)

RewardFn = Callable[[str, str, dict], float]


def _math(prompt: str, response: str, example: dict) -> float:
    return math_reward.score(response, example["answer"])


def _arithmetic(prompt: str, response: str, example: dict) -> float:
    # The procedural word problems keep an int answer; grade it like any other number.
    answer = example["answer"]
    return math_reward.score(response, None if answer is None else str(answer))


def _format(prompt: str, response: str, example: dict) -> float:
    return format_reward.score(response)


def _countdown(prompt: str, response: str, example: dict) -> float:
    return countdown.score(response, str(example["answer"]), example["numbers"])


BUILTIN_REWARDS: dict[str, RewardFn] = {
    "math": _math,
    "format": _format,
    "countdown": _countdown,
    "arithmetic": _arithmetic,
}


def resolve_reward(name: str) -> RewardFn:
    """A built-in reward by name, or a function by `"package.module:function"` path.

    Raises:
        ValueError: an unknown name, a module that cannot be imported, or a missing attribute.
        TypeError: the path names something that is not callable.
    """
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        raise ValueError(
            f"Unknown reward {name!r}: built-ins are {sorted(BUILTIN_REWARDS)}, or give a "
            "'package.module:function' path."
        )
    module_name, _, attribute = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"Reward {name!r}: module {module_name!r} not found ({error}).") from error
    try:
        fn = functools.reduce(getattr, attribute.split("."), module)
    except AttributeError as error:
        raise ValueError(
            f"Reward {name!r}: module {module_name!r} has no attribute {attribute!r}."
        ) from error
    if not callable(fn):
        raise TypeError(f"Reward {name!r} is a {type(fn).__name__}, not a function.")
    return fn


@dataclass
class RewardSpec:
    """One reward in a sum: a registry name or `module:function` path, and its weight."""

    name: str
    weight: float = 1.0


class CompositeReward:
    """The weighted sum of several rewards per response, robust to rewards that fail.

    A reward that raises, returns a non-finite value or runs past `timeout_s` scores 0 for that
    response; it is logged and counted, or with `fail_fast` raises a `RuntimeError`.

    Timeouts run each call on a worker thread and stop waiting after `timeout_s`. Python cannot
    kill a thread: a timed-out call keeps running in the background until it returns (and the
    interpreter waits for it at exit). The worker is then abandoned and a fresh one takes the
    later calls, so they do not queue behind it. Rewards therefore must work off the main thread.

    Args:
        rewards: the rewards and their weights.
        fail_fast: raise on the first failing reward instead of scoring it 0.
        timeout_s: seconds one reward call may take; None runs calls inline, with no timeout.
    """

    def __init__(
        self, rewards: list[RewardSpec], fail_fast: bool = False, timeout_s: float | None = 10.0
    ) -> None:
        if not rewards:
            raise ValueError("CompositeReward needs at least one reward.")
        if timeout_s is not None and timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive or None, got {timeout_s}.")
        self.rewards = list(rewards)
        self.fail_fast = fail_fast
        self.timeout_s = timeout_s
        self._fns = [resolve_reward(spec.name) for spec in self.rewards]
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    @property
    def names(self) -> list[str]:
        """The reward names, in order."""
        return [spec.name for spec in self.rewards]

    def __call__(
        self, prompts: list[str], responses: list[str], examples: list[dict]
    ) -> tuple[torch.Tensor, int]:
        """Score every response.

        Returns:
            The float32 rewards (N,) and the number of failed reward calls.
        """
        if not len(prompts) == len(responses) == len(examples):
            raise ValueError(
                f"Got {len(prompts)} prompts, {len(responses)} responses, {len(examples)} examples."
            )
        totals, errors = [], 0
        for index, call in enumerate(zip(prompts, responses, examples, strict=True)):
            total = 0.0
            for spec, fn in zip(self.rewards, self._fns, strict=True):
                try:
                    total += spec.weight * self._score(fn, *call)
                except Exception as error:
                    self._failed(spec.name, index, error)
                    errors += 1
            totals.append(total)
        return torch.tensor(totals, dtype=torch.float32), errors

    def _failed(self, name: str, index: int, error: Exception) -> None:
        """Raise with `fail_fast`, else log: the caller scores the call 0 and counts it."""
        if self.fail_fast:
            raise RuntimeError(f"Reward {name!r} failed on response {index}: {error!r}") from error
        log.warning("Reward %r failed on response %d, scored 0: %r", name, index, error)

    def _score(self, fn: RewardFn, prompt: str, response: str, example: dict) -> float:
        """One call, under the timeout; a finite float or an exception."""
        value = float(self._run(fn, prompt, response, example))
        if not math.isfinite(value):
            # A NaN would poison the advantages of the whole batch.
            raise ValueError(f"non-finite reward {value}")
        return value

    def _run(self, fn: RewardFn, *args: Any) -> Any:
        """`fn(*args)` on the worker thread, or a `TimeoutError` after `timeout_s`."""
        if self.timeout_s is None:
            return fn(*args)
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reward")
        future = self._executor.submit(fn, *args)
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            if future.done():  # the reward itself raised a TimeoutError
                raise
            # The stuck call cannot be stopped: let its thread finish alone, start a new one.
            self._executor.shutdown(wait=False)
            self._executor = None
            raise TimeoutError(f"timed out after {self.timeout_s} s") from None

    def close(self) -> None:
        """Let the worker thread exit (without waiting for a call still running)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
