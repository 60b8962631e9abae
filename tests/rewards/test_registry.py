"""Reward lookup by name and the weighted, failure-tolerant composite reward."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import torch

from cola_lightning.rewards.registry import (
    BUILTIN_REWARDS,
    CompositeReward,
    RewardSpec,
    resolve_reward,
)

MATH_EXAMPLE = {"answer": "\\frac{1}{2}"}
HERE = "tests.rewards.test_registry"


def always_half(prompt: str, response: str, example: dict) -> float:
    return 0.5


def explode(prompt: str, response: str, example: dict) -> float:
    raise ZeroDivisionError("boom")


def explode_on_b(prompt: str, response: str, example: dict) -> float:
    if response == "b":
        raise KeyError("no b")
    return 1.0


def nan_reward(prompt: str, response: str, example: dict) -> float:
    return float("nan")


def sleepy(prompt: str, response: str, example: dict) -> float:
    if response == "slow":
        time.sleep(2.0)
    return 1.0


def thread_name(prompt: str, response: str, example: dict) -> float:
    return 0.0 if threading.current_thread() is threading.main_thread() else 1.0


NOT_CALLABLE = 3


def _call(reward: CompositeReward, responses: list[str], example: dict | None = None):
    example = example or MATH_EXAMPLE
    return reward(["p"] * len(responses), responses, [example] * len(responses))


def test_builtins_resolve():
    assert set(BUILTIN_REWARDS) == {"math", "format", "countdown", "arithmetic"}
    assert resolve_reward("math")("p", "\\boxed{0.5}", MATH_EXAMPLE) == 1.0
    assert resolve_reward("math")("p", "\\boxed{2}", MATH_EXAMPLE) == 0.0
    assert resolve_reward("math")("p", "\\boxed{2}", {"answer": None}) == 0.0
    assert resolve_reward("format")("p", "The answer is 2.", {"answer": None}) == 1.0
    assert resolve_reward("arithmetic")("p", "The answer is 42.", {"answer": 42}) == 1.0
    countdown = resolve_reward("countdown")
    assert countdown("p", "Answer: 50 + 25 - 3", {"answer": "72", "numbers": [3, 50, 25]}) == 1.0


def test_module_path_resolves():
    assert resolve_reward("tests.rewards.test_registry:always_half") is always_half


@pytest.mark.parametrize(
    "name, error, message",
    [
        ("maths", ValueError, r"Unknown reward 'maths'.*'arithmetic', 'countdown', 'format'"),
        ("no_such_pkg.mod:fn", ValueError, r"module 'no_such_pkg.mod' not found"),
        ("tests.rewards.test_registry:missing", ValueError, r"no attribute 'missing'"),
        ("tests.rewards.test_registry:NOT_CALLABLE", TypeError, r"not a function"),
    ],
)
def test_bad_names_are_clear(name, error, message):
    with pytest.raises(error, match=message):
        resolve_reward(name)
    with pytest.raises(error, match=message):
        CompositeReward([RewardSpec(name)])


def test_weights_combine():
    reward = CompositeReward(
        [RewardSpec("math", 2.0), RewardSpec("format", 0.5), RewardSpec(f"{HERE}:always_half", 0.5)]
    )
    assert reward.names == ["math", "format", f"{HERE}:always_half"]
    rewards, errors = _call(reward, ["The answer is 1/2.", "\\boxed{3}", "maybe 0.5"])
    assert rewards.dtype == torch.float32
    # math 2.0 + format 0.5 + 0.5 * 0.5; then format only; then math only (last number).
    assert rewards.tolist() == [2.75, 0.75, 2.25]
    assert errors == 0


def test_a_raising_reward_scores_zero_and_is_counted(caplog):
    reward = CompositeReward([RewardSpec("math"), RewardSpec(f"{HERE}:explode_on_b", 3.0)])
    with caplog.at_level(logging.WARNING, logger="cola_lightning.rewards.registry"):
        rewards, errors = _call(reward, ["\\boxed{0.5}", "b", "\\boxed{0.5}"])
    assert rewards.tolist() == [4.0, 0.0, 4.0]
    assert errors == 1
    assert "explode_on_b" in caplog.text and "no b" in caplog.text and "response 1" in caplog.text


def test_every_failure_is_counted():
    reward = CompositeReward([RewardSpec(f"{HERE}:explode"), RewardSpec(f"{HERE}:nan_reward")])
    rewards, errors = _call(reward, ["x", "y"])
    assert rewards.tolist() == [0.0, 0.0]
    assert errors == 4


def test_a_missing_field_is_an_error():
    reward = CompositeReward([RewardSpec("countdown")])
    assert _call(reward, ["Answer: 1 + 1"], {"answer": "2"})[1] == 1


def test_fail_fast_raises_with_the_name_and_index():
    reward = CompositeReward([RewardSpec(f"{HERE}:explode_on_b")], fail_fast=True)
    with pytest.raises(RuntimeError, match=r"explode_on_b.*response 1") as info:
        _call(reward, ["a", "b"])
    assert isinstance(info.value.__cause__, KeyError)


def test_a_slow_reward_times_out_and_later_calls_do_not_wait():
    reward = CompositeReward([RewardSpec(f"{HERE}:sleepy")], timeout_s=0.3)
    start = time.perf_counter()
    rewards, errors = _call(reward, ["fast", "slow", "fast", "fast"])
    elapsed = time.perf_counter() - start
    assert rewards.tolist() == [1.0, 0.0, 1.0, 1.0]
    assert errors == 1
    # The fresh worker serves the fast calls while the slow one still sleeps.
    assert elapsed < 1.5
    reward.close()


def test_timeout_with_fail_fast_raises():
    reward = CompositeReward([RewardSpec(f"{HERE}:sleepy")], fail_fast=True, timeout_s=0.1)
    with pytest.raises(RuntimeError, match=r"sleepy.*response 0") as info:
        _call(reward, ["slow"])
    assert isinstance(info.value.__cause__, TimeoutError)


def test_rewards_run_off_the_main_thread_unless_the_timeout_is_off():
    assert _call(CompositeReward([RewardSpec(f"{HERE}:thread_name")]), ["x"])[0].item() == 1.0
    inline = CompositeReward([RewardSpec(f"{HERE}:thread_name")], timeout_s=None)
    assert _call(inline, ["x"])[0].item() == 0.0


def test_math_reward_works_under_the_timeout_thread():
    reward = CompositeReward([RewardSpec("math")], fail_fast=True, timeout_s=30.0)
    rewards, errors = _call(reward, ["\\boxed{\\dfrac{2}{4}}", "\\boxed{(1, 2]}"])
    assert rewards.tolist() == [1.0, 0.0]
    assert errors == 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        CompositeReward([])
    with pytest.raises(ValueError, match="timeout_s"):
        CompositeReward([RewardSpec("math")], timeout_s=0)
    with pytest.raises(ValueError, match="2 prompts, 1 responses"):
        CompositeReward([RewardSpec("math")])(["a", "b"], ["x"], [MATH_EXAMPLE])
