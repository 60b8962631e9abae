"""ScienceWorld through the interface: the real simulator (its jar on the local Java)."""

import pytest

from cola_lightning.envs import make_environment
from cola_lightning.envs.scienceworld import check_scienceworld_installed

# The shortest gold path among ScienceWorld's families: five actions, a few seconds on a CPU.
TASK = "find-non-living-thing"


@pytest.fixture(scope="module")
def env():
    return make_environment("scienceworld", max_steps=20)


def test_gold_trajectory_reaches_the_full_score(env):
    first = env.reset(TASK, 0)
    assert "non-living thing" in first.goal and first.valid_actions
    start = env.score()  # ScienceWorld gives a little score for the start state
    results = [env.step(action) for action in env.gold_actions()]
    assert results[-1].done and env.score() == 1.0
    assert sum(r.reward for r in results) == pytest.approx(1.0 - start)


def test_seen_and_unseen_variations_are_disjoint(env):
    seen, unseen = env.variations(TASK, "seen"), env.variations(TASK, "unseen")
    assert seen and unseen and not set(seen) & set(unseen)


def test_invalid_action_gets_feedback(env):
    env.reset(TASK, 1)
    result = env.step("dance with the moon")
    assert result.info["invalid"] and not result.done and result.reward == 0


def test_bad_input_is_named(env, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="Unknown task 'fly-kite'"):
        env.reset("fly-kite", 0)
    with pytest.raises(ValueError, match="variations 0..299, not 300"):
        env.reset(TASK, 300)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="no `java` is on PATH: apt-get install"):
        check_scienceworld_installed()
