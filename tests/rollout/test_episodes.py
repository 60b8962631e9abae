"""Multi-turn episodes: the context is the turns, only generated tokens are actions, the cache
across turns changes nothing, and the rules for long, invalid and unknown input."""

import pytest
import torch

from cola_lightning.data.agents import tokenize_pieces
from cola_lightning.data.trajectories import AgentTasks, gold_pieces
from cola_lightning.envs import make_environment
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout import rl_maths
from cola_lightning.rollout.engine import GenerationConfig, Generator, Rollout
from cola_lightning.rollout.episodes import (
    Episode,
    EpisodeConfig,
    EpisodeFormat,
    run_episodes,
    start_episode,
    take_turn,
)
from cola_lightning.rollout.reference import generate_without_cache
from cola_lightning.rollout.sampling import Sampler
from tests.conftest import tiny_model

FORMAT = EpisodeFormat(instruction="")
RECORDS = [
    {"environment": "household", "task": "place", "variation": 3},
    {"environment": "household", "task": "heat_place", "variation": 10_001},
]
TURNS = 2


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model().eval()


def episodes(model, mode="latent", greedy=False, max_new_tokens=4, records=RECORDS):
    generation = GenerationConfig(
        max_new_tokens=max_new_tokens,
        code=Sampler(greedy=greedy),
        token=Sampler(greedy=mode == "latent" or greedy),
    )
    streams = [torch.Generator().manual_seed(i) for i in range(len(records))]
    config = EpisodeConfig(max_turns=TURNS, format=FORMAT)
    return run_episodes(model, byte_tokenizer(), generation, records, config, mode, streams)


def as_bytes(ids: list[int]) -> bytes:
    """The byte tokenizer's ids as the bytes they stand for (specials, ids >= 256, dropped)."""
    return bytes(i for i in ids if i < 256)


@pytest.mark.parametrize("mode", ["latent", "token"])
def test_observation_tokens_carry_no_action_logprob_or_gradient(model, mode):
    batch = episodes(model, mode)
    latent = mode == "latent"
    actions = batch.action_batch(latent, 256, "cpu")
    for row, episode in enumerate(batch.episodes):
        offset = actions.input_ids.shape[1] - len(episode.token_ids)
        made = torch.tensor(episode.generated[1:])
        assert torch.equal(actions.action_mask[row, offset:-1], made)
        assert not actions.action_mask[row, :offset].any() and not actions.action_mask[row, -1]
        recorded = episode.code_logprobs if latent else episode.token_logprobs
        assert len(recorded) == sum(episode.generated) == made.sum()
    off = ~actions.action_mask
    assert not actions.actions[off].any() and not actions.old_logprobs[off].any()
    # teacher-forced over the whole episodes: at ratio 1 on every action, gradient on actions only
    hidden, _ = model.hidden_states(actions.input_ids, actions.attention_mask, actions.position_ids)
    if latent:
        logits = model.policy(hidden, actions.attention_mask, actions.position_ids)[0]
    else:
        logits = model.base_logits(hidden)
    logits = logits.detach().requires_grad_(True)
    logprobs, _ = rl_maths.action_logprobs(logits, actions.actions, 1.0)
    torch.testing.assert_close(
        logprobs[actions.action_mask], actions.old_logprobs[actions.action_mask], atol=1e-4, rtol=0
    )
    loss, _ = rl_maths.clipped_policy_loss(
        logprobs, actions.old_logprobs, torch.tensor([1.0, -0.5]), actions.action_mask
    )
    (grad,) = torch.autograd.grad(loss, logits)
    assert not grad[off].any() and grad[actions.action_mask].abs().sum(-1).gt(0).all()


def test_episode_text_is_the_concatenation_of_turns(model):
    batch = episodes(model)
    tokenizer = byte_tokenizer()
    for episode in batch.episodes:
        expected_ids = tokenizer(episode.prompt, add_special_tokens=False).input_ids
        expected_text = episode.prompt.encode()
        for turn in episode.turns:
            assert turn.start == len(expected_ids)
            expected_ids += turn.generated + turn.feedback_ids
            expected_text += as_bytes(turn.generated) + turn.feedback.encode()
            assert turn.feedback.endswith("Nothing happens.\n> ") and turn.invalid
        assert episode.token_ids == expected_ids
        assert as_bytes(episode.token_ids) == expected_text
        assert episode.end == "turns" and len(episode.turns) == TURNS
    assert batch.stats()["invalid_actions"] == TURNS and batch.stats()["success"] == 0.0


def test_cached_episode_equals_uncached_replay(model):
    """Every turn's cached generation (a prefill of the context, then the KV cache) equals
    recomputing every step from the full episode so far."""
    greedy = Sampler(greedy=True)
    for episode in episodes(model, greedy=True, records=RECORDS[1:]).episodes:
        done = 0
        for turn in episode.turns:
            context = episode.token_ids[: turn.start]
            replay = generate_without_cache(
                model, [context], len(turn.generated), greedy, greedy, pad_id=256
            )
            count = len(turn.generated)
            assert replay["tokens"][0].tolist() == turn.generated
            assert replay["codes"][0].tolist() == episode.codes[done : done + count]
            torch.testing.assert_close(
                replay["code_logprobs"][0],
                torch.tensor(episode.code_logprobs[done : done + count]),
                atol=1e-5,
                rtol=0,
            )
            done += count


@pytest.mark.parametrize("mode", ["latent", "token"])
def test_turn_cache_equals_prefilling_every_turn_and_computes_each_position_once(model, mode):
    """Kept caches across turns give the episodes that prefilling each whole context gives,
    with rows that stop early inside a turn (sampled bytes hit one of many stop strings) and an
    episode that ends (context limit) while the other goes on."""
    generation = GenerationConfig(
        max_new_tokens=6,
        code=Sampler(),
        token=Sampler(temperature=2.0),
        stop_strings=list("aeiou0123456789"),
    )

    def run(cache_turns: bool, max_context_tokens: int = 4096):
        streams = [torch.Generator().manual_seed(i) for i in range(len(RECORDS))]
        config = EpisodeConfig(3, max_context_tokens, FORMAT, cache_turns)
        return run_episodes(model, byte_tokenizer(), generation, RECORDS, config, mode, streams)

    first = [len(e.token_ids[: e.turns[1].start]) for e in run(False).episodes]
    assert first[0] != first[1]
    limit = max(first) + generation.max_new_tokens - 1  # the longer episode ends after a turn
    cached, prefilled = run(True, limit), run(False, limit)
    ended, went_on = sorted(len(e.turns) for e in cached.episodes)
    assert ended == 1 and went_on >= 2
    turns = [t for e in cached.episodes for t in e.turns]
    assert any(len(t.generated) < 6 for t in turns) and any(len(t.generated) == 6 for t in turns)
    for ours, reference in zip(cached.episodes, prefilled.episodes, strict=True):
        assert ours.token_ids == reference.token_ids and ours.codes == reference.codes
        logprobs = ours.code_logprobs if mode == "latent" else ours.token_logprobs
        expected = reference.code_logprobs if mode == "latent" else reference.token_logprobs
        torch.testing.assert_close(
            torch.tensor(logprobs), torch.tensor(expected), atol=1e-4, rtol=0
        )
    once = sum(len(e.token_ids) - len(e.turns[-1].feedback_ids) - 1 for e in cached.episodes)
    again = sum(t.start + len(t.generated) - 1 for e in prefilled.episodes for t in e.turns)
    assert cached.backbone_positions() == once < again == prefilled.backbone_positions()


def scripted_turn(model, generated_text: str, finish: str, episode: Episode, env):
    """One turn whose generated text is given (as a rollout of the engine would return it)."""
    tokenizer = byte_tokenizer()
    ids = tokenizer(generated_text, add_special_tokens=False).input_ids
    n = len(ids)
    rollout = Rollout(
        [episode.token_ids], [ids], [generated_text], [[0.0] * n], None, None, [finish]
    )
    engine = Generator(model, tokenizer, GenerationConfig(max_new_tokens=n))
    take_turn(episode, env, rollout, 0, engine, EpisodeConfig(format=FORMAT))
    return episode.turns[-1]


def test_action_rules_newline_ends_and_a_long_action_is_cut_and_counted(model):
    env = make_environment("household")
    engine = Generator(model, byte_tokenizer(), GenerationConfig())
    episode = start_episode(engine, env, RECORDS[0], EpisodeConfig(format=FORMAT), latent=False)
    ended = scripted_turn(model, "  go to table\nand more", "stop", episode, env)
    assert ended.action == "go to table" and not ended.invalid and not ended.truncated
    assert ended.feedback.startswith("You arrive at the table.")
    cut = scripted_turn(model, "go to the shelf and then", "length", episode, env)
    assert cut.action == "go to the shelf and then" and cut.truncated and cut.invalid
    assert cut.feedback == "\nNothing happens.\n> "  # the cut action's line is closed
    assert episode.truncated_actions == 1 and episode.invalid_actions == 1
    # from the model, with a limit of 2 tokens: a turn without a newline is cut at the limit
    for episode in episodes(model, max_new_tokens=2, records=RECORDS[:1]).episodes:
        assert all(len(t.generated) <= 2 for t in episode.turns)
        assert episode.truncated_actions == sum("\n" not in t.generated_text for t in episode.turns)


def test_gold_trajectory_data_is_the_episode_the_gold_actions_make(model):
    """Stage 2's rows are exactly the RL context the gold actions build, loss on actions only."""
    tokenizer, env = byte_tokenizer(), make_environment("household")
    record = RECORDS[1]
    row = tokenize_pieces(tokenizer, gold_pieces(env, record, FORMAT), 4096)
    engine = Generator(model, tokenizer, GenerationConfig())
    episode = start_episode(engine, env, record, EpisodeConfig(format=FORMAT), latent=False)
    gold = env.gold_actions()
    for action in gold:
        scripted_turn(model, action + "\n", "stop", episode, env)
    assert episode.score == 1.0 and episode.end == "done" and episode.invalid_actions == 0
    last = episode.turns[-1]
    assert row["input_ids"] == episode.token_ids[: last.start + len(last.generated)]
    masked = bytes(t for t, m in zip(row["input_ids"], row["loss_mask"], strict=True) if m)
    assert masked.decode() == "".join(a + "\n" for a in gold)


def test_unknown_task_and_environment_names_fail_clearly(model):
    with pytest.raises(ValueError, match="Unknown task 'fly_place'.*available: place"):
        episodes(model, records=[{"environment": "household", "task": "fly_place", "variation": 0}])
    with pytest.raises(ValueError, match="Unknown task 'fly_place'"):
        AgentTasks(tasks=["fly_place"]).splits()
    with pytest.raises(ValueError, match="Unknown environment 'kitchen'"):
        AgentTasks(environment="kitchen").splits()
