"""Stage 3 on agent tasks: latent RL and token RL over multi-turn episodes.

The same algorithms, KL penalty, optimiser and logging as the math RL stages (`rl.py`); only the
rollout changes. A rollout is an episode in a text environment (`rollout/episodes.py`), its reward
is the episode's score (plus any extra reward functions), and the RL sequences are the whole
episodes with the action mask on the model's own tokens: observation tokens take no action, carry
no log-probability and get no gradient. Training batches are episode records from
`AgentTaskDataModule`; validation runs greedy episodes on its seen and unseen tasks and logs
``agent/{success,score,steps,invalid_actions,truncated_actions}/{seen,unseen}`` (and ``/train``
for the sampled training episodes). Under `ModelParallelStrategy` each rank runs its own
episodes and the ranks leave the turn loop together (`rollout/episodes.py`).
"""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig
from cola_lightning.rewards.registry import CompositeReward, RewardSpec
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.rollout.episodes import (
    EnvironmentPool,
    EpisodeBatch,
    EpisodeConfig,
    run_episodes,
)
from cola_lightning.rollout.rl_maths import ActionBatch
from cola_lightning.stages.optim import OptimizerConfig
from cola_lightning.stages.rl import LatentRLModule, RLConfig, RLStage
from cola_lightning.stages.token_rl import TokenRLModule


def episode_key(record: dict) -> str:
    """What names an episode's task (its random stream is seeded from it)."""
    return f"{record['environment']}/{record['task']}/{record['variation']}"


class AgentRLStage(RLStage):
    """RL on episodes; `LatentAgentRLModule` and `TokenAgentRLModule` say what an action is.

    Args:
        backbone: the pretrained LM.
        init_from: the checkpoint to start from (stage 2 on gold trajectories).
        cola: sizes of the latent-action parts (must match the checkpoint).
        optimizer: optimiser and schedule.
        rl: the algorithm and its settings (GRPO groups are episodes of the same task).
        episodes: turns, context limit, and the text format (as stage 2's data wrote it).
        rewards: extra reward functions added to the episode's score, called as
            ``fn(first prompt, the actions one per line, record)``; the record then also holds
            the episode's ``score``, ``steps`` and ``invalid`` (its invalid actions).
        generation: samplers, and `max_new_tokens`, the per-action token limit.
        fail_on_reward_error: raise on an extra reward that fails, instead of scoring it 0.
        reward_timeout_s: seconds one extra reward call may take.
        sharding: FSDP2 settings, used under `ModelParallelStrategy`.
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        rl: RLConfig | None = None,
        episodes: EpisodeConfig | None = None,
        rewards: list[RewardSpec] | None = None,
        generation: GenerationConfig | None = None,
        fail_on_reward_error: bool = False,
        reward_timeout_s: float = 10.0,
        sharding: ShardingConfig | None = None,
    ) -> None:
        super().__init__(
            backbone,
            init_from,
            cola,
            optimizer,
            rl,
            generation=generation,
            fail_on_reward_error=fail_on_reward_error,
            reward_timeout_s=reward_timeout_s,
            sharding=sharding,
        )
        self.episodes = episodes or EpisodeConfig()
        self.extra_rewards = (
            CompositeReward(rewards, fail_on_reward_error, reward_timeout_s) if rewards else None
        )
        self.pool = EnvironmentPool()
        self._step_episodes: list[EpisodeBatch] = []

    def run(self, records: list[dict], config: GenerationConfig) -> EpisodeBatch:
        """One episode per record, each sampling from its own random stream."""
        streams = self.streams([episode_key(r) for r in records])
        model, tokenizer = self.model, self.tokenizer
        return run_episodes(
            model, tokenizer, config, records, self.episodes, self.mode, streams, self.pool
        )

    def rollout(self, records: list[dict], config: GenerationConfig, keep_states: bool = False):
        """Runs the episodes and scores them: the score, plus the extra rewards if any.

        `keep_states` is not used: an episode's context mixes generated and observation tokens
        over several turns, so the latent update computes the backbone's states once instead.

        Returns:
            The `EpisodeBatch`, the rewards (N,) on this module's device, and the error count.
        """
        batch = self.run(records, config)
        self._step_episodes.append(batch)
        rewards = torch.tensor([e.score for e in batch.episodes], device=self.device)
        errors = 0
        if self.extra_rewards is not None:
            examples = [
                {**e.record, "score": e.score, "steps": len(e.turns), "invalid": e.invalid_actions}
                for e in batch.episodes
            ]
            prompts = [e.prompt for e in batch.episodes]
            texts = [e.actions_text for e in batch.episodes]
            extra, errors = self.extra_rewards(prompts, texts, examples)
            rewards = rewards + extra.to(self.device)
        return batch, rewards, errors

    def actions_of(self, result: EpisodeBatch) -> ActionBatch:
        return result.action_batch(self.latent, self.tokenizer.pad_token_id, self.device)

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        self._step_episodes = []
        super().training_step(batch, batch_idx)
        sampled = self._step_episodes[0]  # ReMax's greedy episodes come second
        self.log_agent_stats(sampled, "train", on_step=True)

    def validation_step(self, batch: list[dict], batch_idx: int, dataloader_idx: int = 0) -> None:
        episodes = self.run(batch, self.greedy_config())
        self.log_agent_stats(episodes, batch[0]["split"], on_step=False)

    def log_agent_stats(self, episodes: EpisodeBatch, split: str, on_step: bool) -> None:
        stats = {f"agent/{name}/{split}": value for name, value in episodes.stats().items()}
        self.log_dict(
            stats,
            on_step=on_step,
            on_epoch=not on_step,
            batch_size=len(episodes.episodes),
            add_dataloader_idx=False,
        )


class LatentAgentRLModule(AgentRLStage, LatentRLModule):
    """CoLA's latent RL on agent episodes: codes are the actions; only the policy learns."""


class TokenAgentRLModule(AgentRLStage, TokenRLModule):
    """The token RL baseline on agent episodes: tokens are the actions; the backbone learns."""
