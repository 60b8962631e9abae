"""The built-in household environment: solvable, split cleanly, and forgiving of bad actions."""

import pytest

from cola_lightning.envs import HouseholdEnvironment, make_environment
from cola_lightning.envs.household import generate_task


@pytest.fixture(params=["direct", "search"])
def env(request):
    return HouseholdEnvironment(gold=request.param)


def test_gold_trajectory_solves_every_generated_task(env):
    for family in env.task_names():
        for split in ("seen", "unseen"):
            for variation in env.variations(family, split):
                env.reset(family, variation)
                results = [env.step(action) for action in env.gold_actions()]
                assert not any(r.info["invalid"] for r in results), (family, variation)
                assert results[-1].done and env.score() == 1.0
                assert sum(r.reward for r in results) == 1.0
                assert not any(r.done for r in results[:-1])


def test_search_plans_act_only_on_what_the_agent_has_seen():
    """Until the object is in view, the search plan depends on the goal alone (the target)."""
    env = HouseholdEnvironment(gold="search")
    blind = {}  # target -> the actions taken before the object came into view, per variation
    for variation in env.variations("place", "seen"):
        env.reset("place", variation)
        before = []
        for action in env.gold_actions():
            feedback = env.step(action).observation.text
            before.append(action)
            if f"a {env.task.obj}" in feedback:
                break
        blind.setdefault(env.task.target, []).append(before)
    for target, runs in blind.items():
        longest = max(runs, key=len)
        assert all(run == longest[: len(run)] for run in runs), target  # one fixed search order
    assert max(len(run) for runs in blind.values() for run in runs) > 2


def test_unseen_split_shares_no_task_with_seen(env):
    def tasks(split):
        return {
            (f, t.obj, t.target)
            for f in env.task_names()
            for t in (generate_task(f, v) for v in env.variations(f, split))
        }

    seen, unseen = tasks("seen"), tasks("unseen")
    assert seen and unseen and not seen & unseen
    ids = {v for f in env.task_names() for v in env.variations(f, "seen")}
    assert not ids & {v for f in env.task_names() for v in env.variations(f, "unseen")}


def test_tasks_are_the_same_for_the_same_variation():
    assert generate_task("clean_place", 7) == generate_task("clean_place", 7)
    assert generate_task("clean_place", 7) != generate_task("clean_place", 8)


def test_invalid_actions_get_feedback_and_are_counted(env):
    first = env.reset("heat_place", 3)
    assert first.goal.startswith("Your task is to: put a hot ")
    assert "go to table" in first.valid_actions
    for action in ("fly to the moon", "take mug from nowhere", "put apple on table", ""):
        result = env.step(action)
        assert result.info["invalid"] and result.observation.text == "Nothing happens."
        assert result.reward == 0 and not result.done
    # the treatment matters: placing the untreated object does not solve the task
    task = env.task
    env.reset("heat_place", 3)
    plan = [a for a in env.gold_actions() if not a.startswith("heat") and "microwave" not in a]
    for action in plan:
        env.step(action)
    assert env.state.placement[task.obj] == task.target and env.score() == 0.0


def test_every_valid_action_is_accepted(env):
    env.reset("cool_place", 11)
    gold = env.gold_actions()
    for done in range(len(gold)):
        for candidate in env.valid_actions():
            probe = HouseholdEnvironment()
            probe.reset("cool_place", 11)
            for action in gold[:done]:
                probe.step(action)
            assert not probe.step(candidate).info["invalid"], (gold[:done], candidate)
        env.step(gold[done])


def test_episode_ends_at_the_step_limit():
    env = HouseholdEnvironment(max_steps=3)
    env.reset("place", 0)
    assert [env.step("look").done for _ in range(3)] == [False, False, True]


def test_bad_names_are_named():
    env = make_environment("household")
    with pytest.raises(ValueError, match="Unknown task 'fly'.*place"):
        env.reset("fly", 0)
    with pytest.raises(ValueError, match="Unknown split"):
        env.variations("place", "train")
    with pytest.raises(ValueError, match="Unknown environment 'alfworld'"):
        make_environment("alfworld")
    with pytest.raises(ValueError, match="Unknown gold plan 'oracle'.*'search'"):
        make_environment("household", gold="oracle")
