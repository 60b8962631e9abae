"""Multi-turn episodes: the model acts in a text environment, one action line per turn.

An episode's context is a list of token ids that only grows (nothing is ever re-tokenised):

    prompt:    instruction + goal + newline + first observation + "\\n> "
    each turn: the model's own tokens (its action, up to `action_end`, a newline), then the
               feedback: the environment's next observation + "\\n> "

Every turn decodes once for all running episodes (batched across episodes, in latent or token
mode). With `cache_turns` (the default) the engine's KV caches live for the whole episode: a turn
runs only its new tokens (the last action's final token and the observation) through the backbone
and the policy, so no position is computed twice; the inject-form world model, whose cache holds
the inverse dynamics model's codes over the context, and `cache_turns: false` prefill the whole
context every turn instead (the same tokens, at more compute). Sharded (FSDP2), every forward is
a collective, so every rank takes the same number of turns: a rank whose episodes are over takes
discarded one-token turns until every rank's are.

The rules:

* **Action**: the generated text up to the first `action_end`, stripped; text after it in the
  same token stays in the context but is not part of the action.
* **Too long**: a turn that reaches the per-action limit (`generation.max_new_tokens`) without
  `action_end` is cut there: the text so far is the action, the turn counts in
  `truncated_actions`, and `action_end` is added to the feedback so the next observation starts
  on its own line. A turn that ends at EOS is handled the same way, without the count.
* **Invalid**: every action, empty or not, goes to the environment; when it answers
  ``info["invalid"]`` the action counts in `invalid_actions` and its feedback ("Nothing
  happens.") is appended like any observation.
* **End**: the environment says done, `max_turns` actions were taken, or the next turn would not
  fit in `max_context_tokens` (prompt plus a full-length action).

Per token the episode records whether the model generated it; codes (latent mode) and
log-probabilities exist for generated tokens only, so observation tokens never carry an action.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from cola_lightning.envs.base import Environment, Observation, make_environment
from cola_lightning.rollout.engine import GenerationConfig, Generator, Rollout, all_ranks_done
from cola_lightning.rollout.rl_maths import ActionBatch, left_pad, position_ids

DEFAULT_INSTRUCTION = "Act in the world to reach the goal. Write one action per line after '> '.\n"


@dataclass
class EpisodeFormat:
    """How observations become context text (stage-2 data and RL episodes must share it).

    Args:
        instruction: text before the goal at the start of every episode.
        show_valid_actions: list the environment's valid actions after each observation.
        action_end: what ends an action (a stop string of the generation).
        action_prompt: what precedes each action.
    """

    instruction: str = DEFAULT_INSTRUCTION
    show_valid_actions: bool = False
    action_end: str = "\n"
    action_prompt: str = "> "

    def prompt(self, observation: Observation) -> str:
        """The episode's first context: instruction, goal, first observation."""
        return f"{self.instruction}{observation.goal}\n{self.feedback(observation)}"

    def feedback(self, observation: Observation) -> str:
        """What follows an action: the observation, then the prompt for the next action."""
        valid = ""
        if self.show_valid_actions and observation.valid_actions:
            valid = "\nValid actions: " + ", ".join(observation.valid_actions) + "."
        return f"{observation.text}{valid}\n{self.action_prompt}"

    def parse(self, generated: str) -> str:
        """The action in a turn's generated text: up to the first `action_end`, stripped."""
        return generated.split(self.action_end, 1)[0].strip()


@dataclass
class EpisodeConfig:
    """How episodes run.

    Args:
        max_turns: most actions per episode (the step limit).
        max_context_tokens: an episode ends when its next turn would not fit in this many tokens.
        format: how observations become context text.
        cache_turns: keep the KV caches across turns (each position computed once); false
            prefills each turn's whole context again (the inject form always does).
    """

    max_turns: int = 10
    max_context_tokens: int = 2048
    format: EpisodeFormat = field(default_factory=EpisodeFormat)
    cache_turns: bool = True

    def __post_init__(self) -> None:
        if self.max_turns < 1:
            raise ValueError(f"max_turns must be >= 1, got {self.max_turns}.")


@dataclass
class Turn:
    """One action and its answer. `start` is where the generated tokens begin in the episode."""

    start: int
    generated: list[int]
    generated_text: str
    action: str
    feedback: str
    feedback_ids: list[int]
    invalid: bool
    truncated: bool
    reward: float


@dataclass
class Episode:
    """One episode: the whole context, which tokens the model wrote, and how it went.

    `generated[i]` says whether token i is the model's; `codes` (latent mode), `code_logprobs`
    and `token_logprobs` hold one entry per generated token, in order. `end` is ``done``,
    ``turns`` or ``context``.
    """

    record: dict
    prompt: str
    token_ids: list[int]
    generated: list[bool]
    codes: list[int] | None
    code_logprobs: list[float] | None
    token_logprobs: list[float] = field(default_factory=list)
    turns: list[Turn] = field(default_factory=list)
    score: float = 0.0
    end: str | None = None

    @property
    def done(self) -> bool:
        return self.end is not None

    @property
    def success(self) -> bool:
        return self.score >= 1.0

    @property
    def invalid_actions(self) -> int:
        return sum(t.invalid for t in self.turns)

    @property
    def truncated_actions(self) -> int:
        return sum(t.truncated for t in self.turns)

    @property
    def generated_ids(self) -> list[int]:
        """The tokens the model generated, in order (observation tokens left out)."""
        return [t for t, mine in zip(self.token_ids, self.generated, strict=True) if mine]

    @property
    def actions_text(self) -> str:
        """The parsed actions, one per line (what extra reward functions read)."""
        return "\n".join(t.action for t in self.turns)


@dataclass
class EpisodeBatch:
    """The episodes of one `run_episodes` call, and the positions its turns ran through the
    backbone."""

    episodes: list[Episode]
    positions: int = 0

    def backbone_positions(self) -> int:
        return self.positions

    @property
    def token_ids(self) -> list[list[int]]:
        """Per episode, the tokens the model generated (observation tokens left out)."""
        return [e.generated_ids for e in self.episodes]

    def stats(self) -> dict[str, float]:
        """Means over episodes: ``success``, ``score``, ``steps``, ``invalid_actions``, and
        ``truncated_actions``."""
        count = max(len(self.episodes), 1)
        totals = {
            "success": sum(e.success for e in self.episodes),
            "score": sum(e.score for e in self.episodes),
            "steps": sum(len(e.turns) for e in self.episodes),
            "invalid_actions": sum(e.invalid_actions for e in self.episodes),
            "truncated_actions": sum(e.truncated_actions for e in self.episodes),
        }
        return {name: float(total) / count for name, total in totals.items()}

    def action_batch(self, latent: bool, pad_id: int, device) -> ActionBatch:
        """The episodes as RL sequences: the action at position p made token p + 1, for the
        model's own tokens only (observation positions have mask False, action 0, log-prob 0)."""
        ids, mask = left_pad([e.token_ids for e in self.episodes], pad_id)
        actions = torch.zeros_like(ids)
        old = torch.zeros(ids.shape, dtype=torch.float32)
        taken = torch.zeros(ids.shape, dtype=torch.bool)
        for row, episode in enumerate(self.episodes):
            offset = ids.shape[1] - len(episode.token_ids)
            made = torch.tensor(episode.generated[1:], dtype=torch.bool)
            span = slice(offset, ids.shape[1] - 1)
            chosen = episode.codes if latent else episode.generated_ids
            logprobs = episode.code_logprobs if latent else episode.token_logprobs
            taken[row, span] = made
            actions[row, span][made] = torch.tensor(chosen, dtype=torch.long)
            old[row, span][made] = torch.tensor(logprobs, dtype=torch.float32)
        tensors = (ids, mask, position_ids(mask), actions, taken, old)
        return ActionBatch(*(t.to(device) for t in tensors))


class EnvironmentPool:
    """Environment instances kept between calls (a ScienceWorld one holds a JVM), by name and
    constructor arguments. One instance serves one running episode at a time."""

    def __init__(self) -> None:
        self.free: dict[tuple, list[Environment]] = {}

    @staticmethod
    def key(record: dict) -> tuple:
        return record["environment"], tuple(sorted(record.get("env_args", {}).items()))

    def acquire(self, record: dict) -> Environment:
        free = self.free.setdefault(self.key(record), [])
        if free:
            return free.pop()
        return make_environment(record["environment"], **record.get("env_args", {}))

    def release(self, record: dict, environment: Environment) -> None:
        self.free[self.key(record)].append(environment)


def run_episodes(
    model,
    tokenizer,
    generation: GenerationConfig,
    records: list[dict],
    config: EpisodeConfig,
    mode: str = "latent",
    streams: list[torch.Generator] | None = None,
    pool: EnvironmentPool | None = None,
) -> EpisodeBatch:
    """Runs one episode per record, all turns batched across the episodes still running.

    Args:
        model: the CoLA model.
        tokenizer: its tokenizer.
        generation: samplers and the per-action limit (`max_new_tokens`); `action_end` is
            added to its stop strings.
        records: ``environment``, ``env_args`` (optional), ``task`` and ``variation`` each.
        config: turns, context limit, text format.
        mode: ``latent`` or ``token``.
        streams: one random generator per record (kept across the episode's turns).
        pool: where environment instances come from and go back to.
    """
    if streams is not None and len(streams) != len(records):
        raise ValueError(f"Got {len(streams)} random streams for {len(records)} episodes.")
    pool = pool or EnvironmentPool()
    stops = [*generation.stop_strings, config.format.action_end]
    engine = Generator(model, tokenizer, dataclasses.replace(generation, stop_strings=stops))
    environments = [pool.acquire(r) for r in records]
    cache_turns = config.cache_turns and model.world_model_cache() is None
    positions, state, previous = 0, None, []
    try:
        episodes = [
            start_episode(engine, env, r, config, mode == "latent")
            for env, r in zip(environments, records, strict=True)
        ]
        running = [i for i, e in enumerate(episodes) if not fits_or_ends(e, engine, config)]
        while not all_ranks_done(torch.tensor([not running], device=engine.device), engine.sharded):
            generator = None if streams is None else [streams[i] for i in running]
            if not running:  # this rank's episodes are over: a discarded turn, for the collectives
                result = engine.generate([episodes[0].token_ids[:1]], mode)
            elif state is None or not cache_turns:
                result, state = engine.begin_turns(
                    [episodes[i].token_ids for i in running], mode, generator
                )
            else:
                rows = [previous.index(i) for i in running]
                feedback = [episodes[i].turns[-1].feedback_ids for i in running]
                result = engine.next_turn(state, rows, feedback, generator)
            positions += result.backbone_positions()
            for row, i in enumerate(running):
                take_turn(episodes[i], environments[i], result, row, engine, config)
            previous = running
            running = [i for i in running if not fits_or_ends(episodes[i], engine, config)]
    finally:
        for env, record in zip(environments, records, strict=True):
            pool.release(record, env)
    return EpisodeBatch(episodes, positions)


def encode(engine: Generator, text: str) -> list[int]:
    return engine.tokenizer(text, add_special_tokens=False).input_ids


def start_episode(
    engine: Generator, env: Environment, record: dict, config: EpisodeConfig, latent: bool
) -> Episode:
    observation = env.reset(record["task"], int(record["variation"]))
    prompt = config.format.prompt(observation)
    ids = encode(engine, prompt)
    return Episode(
        record, prompt, ids, [False] * len(ids), [] if latent else None, [] if latent else None
    )


def fits_or_ends(episode: Episode, engine: Generator, config: EpisodeConfig) -> bool:
    """Whether the episode is over; ends it when its next turn would break a limit."""
    if episode.done:
        return True
    if len(episode.turns) >= config.max_turns:
        episode.end = "turns"
    elif len(episode.token_ids) + engine.config.max_new_tokens > config.max_context_tokens:
        episode.end = "context"
    return episode.done


def take_turn(
    episode: Episode,
    env: Environment,
    result: Rollout,
    row: int,
    engine: Generator,
    config: EpisodeConfig,
) -> None:
    """Appends one generated action and the environment's answer to the episode."""
    form = config.format
    generated = result.token_ids[row]
    text = engine.tokenizer.decode(generated, skip_special_tokens=True)
    ended = form.action_end in text
    action = form.parse(text)
    step = env.step(action)
    feedback = ("" if ended else form.action_end) + form.feedback(step.observation)
    feedback_ids = encode(engine, feedback)
    start = len(episode.token_ids)
    episode.token_ids += generated + feedback_ids
    episode.generated += [True] * len(generated) + [False] * len(feedback_ids)
    episode.token_logprobs += result.token_logprobs[row]
    if episode.codes is not None:
        episode.codes += result.codes[row]
        episode.code_logprobs += result.code_logprobs[row]
    invalid = bool(step.info.get("invalid", False))
    truncated = result.finish[row] == "length"
    answer = (feedback, feedback_ids, invalid, truncated, step.reward)
    episode.turns.append(Turn(start, generated, text, action, *answer))
    episode.score = env.score()
    if step.done:
        episode.end = "done"
