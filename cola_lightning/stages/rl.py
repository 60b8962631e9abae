"""Stage 3, RL with verifiable rewards: GRPO, ReMax or PPO-clip, over latent actions or tokens.

Every training step generates rollouts with the generation engine, scores them with the reward
registry, and updates the trained part on the log-probabilities of the actions taken, with a KL
penalty to a frozen copy of the starting policy. `LatentRLModule` (here) takes codes as actions and
trains only the policy, with greedy tokens, so all exploration is in the K codes. `TokenRLModule`
(token_rl.py) takes tokens as actions on the plain backbone: the baseline, sharing everything else.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass

import torch
from torchmetrics import MeanMetric

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig
from cola_lightning.rewards.registry import CompositeReward, RewardSpec
from cola_lightning.rollout.engine import GenerationConfig, Generator, Rollout, left_pad
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages import rl_objectives as objectives
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.optim import OptimizerConfig


@dataclass
class RLConfig:
    """The RL algorithm. Defaults: GRPO as published for math (group 4, KL 1e-3, clip 0.2).

    Args:
        algorithm: ``grpo`` (group-normalised rewards), ``remax`` (reward minus the greedy
            rollout's) or ``ppo`` (critic-free PPO-clip: batch-normalised rewards, several epochs).
        group_size: rollouts per prompt (GRPO, PPO); ReMax uses one sampled and one greedy.
        kl_coef: weight of KL(pi || pi_ref) on the taken actions; 0 drops the reference copy.
        clip_eps: PPO clipping epsilon (the ratio is 1 on a first pass, so it bites from epoch 2).
        epochs: passes over each rollout batch.
        minibatches: minibatches per pass. Each minibatch is one optimiser step, and the
            Trainer's `max_steps` and `global_step` count optimiser steps.
        max_grad_norm: gradient clipping.
    """

    algorithm: str = "grpo"
    group_size: int = 4
    kl_coef: float = 1e-3
    clip_eps: float = 0.2
    epochs: int = 1
    minibatches: int = 1
    max_grad_norm: float = 1.0

    def __post_init__(self) -> None:
        if self.algorithm not in objectives.ALGORITHMS:
            raise ValueError(
                f"Unknown RL algorithm {self.algorithm!r}; use {objectives.ALGORITHMS}."
            )
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (advantages are relative to the group).")


@dataclass
class ActionBatch:
    """Rollouts as full sequences, with the action taken at each position that took one."""

    input_ids: torch.Tensor  # (N, L), left-padded prompt + response
    attention_mask: torch.Tensor  # (N, L)
    position_ids: torch.Tensor  # (N, L)
    actions: torch.Tensor  # (N, L) code or token chosen at that position (0 elsewhere)
    action_mask: torch.Tensor  # (N, L) bool
    old_logprobs: torch.Tensor  # (N, L) log-prob of the action when it was sampled

    def select(self, rows: torch.Tensor) -> ActionBatch:
        return ActionBatch(*(getattr(self, f.name)[rows] for f in dataclasses.fields(self)))


def action_batch(rollout: Rollout, latent: bool, pad_id: int, device) -> ActionBatch:
    """Aligns a rollout's actions with positions: the action at position p made token p + 1."""
    sequences = [p + t for p, t in zip(rollout.prompt_ids, rollout.token_ids, strict=True)]
    ids, mask = left_pad(sequences, pad_id)
    actions = torch.zeros_like(ids)
    old = torch.zeros(ids.shape, dtype=torch.float32)
    taken = torch.zeros(ids.shape, dtype=torch.bool)
    chosen = rollout.codes if latent else rollout.token_ids
    logprobs = rollout.code_logprobs if latent else rollout.token_logprobs
    width = ids.shape[1]
    for row, (acts, lps) in enumerate(zip(chosen, logprobs, strict=True)):
        start = width - len(acts) - 1
        actions[row, start : width - 1] = torch.tensor(acts)
        old[row, start : width - 1] = torch.tensor(lps)
        taken[row, start : width - 1] = True
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    tensors = (ids, mask, positions, actions, taken, old)
    return ActionBatch(*(t.to(device) for t in tensors))


def gather_logprobs(
    logits: torch.Tensor, actions: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probabilities of `actions` and the entropy, at every position, at `temperature`."""
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logprobs.gather(-1, actions[..., None])[..., 0], entropy


class RLStage(CoLAStage):
    """What latent and token RL share; subclasses say what an action is.

    Args:
        backbone: the pretrained LM.
        init_from: the checkpoint to start from.
        cola: sizes of the latent-action parts (must match the checkpoint).
        optimizer: optimiser and schedule.
        rl: the algorithm and its settings.
        rewards: rewards (registry names or ``module:function``) with weights.
        accuracy_reward: the reward that decides validation accuracy (score >= 0.5 is correct).
        generation: lengths and samplers of the rollouts (validation is greedy throughout).
        fail_on_reward_error: raise on a reward that raises or times out, instead of scoring 0.
        reward_timeout_s: seconds one reward call may take.
        sharding: FSDP2 settings, used under `ModelParallelStrategy`.
    """

    latent: bool = True

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        rl: RLConfig | None = None,
        rewards: list[RewardSpec] | None = None,
        accuracy_reward: str = "math",
        generation: GenerationConfig | None = None,
        fail_on_reward_error: bool = False,
        reward_timeout_s: float = 10.0,
        sharding: ShardingConfig | None = None,
    ) -> None:
        super().__init__(backbone, cola, optimizer, init_from, sharding=sharding)
        self.automatic_optimization = False
        self.rl = rl or RLConfig()
        specs = rewards or [RewardSpec(accuracy_reward)]
        self.reward = CompositeReward(specs, fail_on_reward_error, reward_timeout_s)
        self.accuracy = CompositeReward([RewardSpec(accuracy_reward)], False, reward_timeout_s)
        self.generation = generation or self.default_generation()
        self.val_accuracy = MeanMetric()
        self.reference: torch.nn.Module | None = None
        self._step_tokens = 0

    @staticmethod
    def default_generation() -> GenerationConfig:
        return GenerationConfig(max_new_tokens=64)

    @property
    def temperature(self) -> float:
        return (
            self.generation.code.temperature if self.latent else self.generation.token.temperature
        )

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        if self.rl.kl_coef > 0:
            part = getattr(self.model, self.trained_parts[0])
            self.reference = copy.deepcopy(part).requires_grad_(False).eval()

    def action_logprobs(
        self, batch: ActionBatch, with_reference: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log pi(action), entropy, log pi_ref(action) or None) at every position (N, L)."""
        raise NotImplementedError  # each RL stage says what its actions are

    def greedy_config(self) -> GenerationConfig:
        return dataclasses.replace(
            self.generation, code=Sampler(greedy=True), token=Sampler(greedy=True)
        )

    def rollout(self, records: list[dict], config: GenerationConfig):
        """Generates one completion per record and scores it.

        Returns:
            The `Rollout`, the rewards (N,) on this module's device, and the reward error count.
        """
        engine = Generator(self.model, self.tokenizer, config)
        result = engine.generate(
            [r["prompt"] for r in records], "latent" if self.latent else "token"
        )
        rewards, errors = self.reward([r["prompt"] for r in records], result.texts, records)
        return result, rewards.to(self.device), errors

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        started = time.perf_counter()
        group = 1 if self.rl.algorithm == "remax" else self.rl.group_size
        records = [r for r in batch for _ in range(group)]
        result, rewards, errors = self.rollout(records, self.generation)
        if self.rl.algorithm == "remax":
            _, greedy_rewards, greedy_errors = self.rollout(batch, self.greedy_config())
            errors += greedy_errors
            advantages = objectives.remax_advantages(rewards, greedy_rewards)
        elif self.rl.algorithm == "grpo":
            advantages = objectives.group_advantages(rewards, group)
        else:
            advantages = objectives.batch_advantages(rewards)
        rolled = time.perf_counter()
        actions = action_batch(result, self.latent, self.tokenizer.pad_token_id, self.device)
        stats = self.update(actions, advantages)
        updated = time.perf_counter()
        self._step_tokens = sum(len(t) for t in result.token_ids)
        self.log_dict(
            {
                "rl/reward_mean": rewards.mean(),
                "rl/reward_std": rewards.std(unbiased=False),
                "rl/reward_errors": float(errors),
                "rl/response_tokens": self._step_tokens / len(records),
                "timing/rollout_s": rolled - started,
                "timing/update_s": updated - rolled,
                **stats,
            },
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=len(records),
        )

    def update(self, batch: ActionBatch, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """`epochs` passes of `minibatches` clipped policy-gradient steps; the last stats."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        rows = batch.input_ids.shape[0]
        for _ in range(self.rl.epochs):
            order = torch.randperm(rows) if self.rl.minibatches > 1 else torch.arange(rows)
            for chunk in order.chunk(self.rl.minibatches):
                stats = self.policy_step(
                    batch.select(chunk), advantages[chunk.to(advantages.device)]
                )
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(stats.pop("loss"))
                self.clip_gradients(optimizer, gradient_clip_val=self.rl.max_grad_norm)
                optimizer.step()
        scheduler.step()
        return stats

    def policy_step(self, batch: ActionBatch, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of one minibatch, with what to log about it."""
        with_reference = self.reference is not None
        logprobs, entropy, reference = self.action_logprobs(batch, with_reference)
        loss, clip_frac = objectives.clipped_policy_loss(
            logprobs, batch.old_logprobs, advantages, batch.action_mask, self.rl.clip_eps
        )
        stats = {
            "rl/policy_loss": loss.detach(),
            "rl/clip_frac": clip_frac,
            "rl/policy_entropy": objectives.sequence_mean(entropy.detach(), batch.action_mask),
        }
        if with_reference:
            kl = objectives.kl_to_reference(logprobs, reference, batch.action_mask)
            loss = loss + self.rl.kl_coef * kl
            stats["rl/kl"] = kl.detach()
        stats["loss"] = loss
        return stats

    def batch_tokens(self, batch) -> int:
        return self._step_tokens

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        engine = Generator(self.model, self.tokenizer, self.greedy_config())
        result = engine.generate([r["prompt"] for r in batch], "latent" if self.latent else "token")
        scores, _ = self.accuracy([r["prompt"] for r in batch], result.texts, batch)
        self.val_accuracy.update((scores >= 0.5).float())
        self.log(
            "val/accuracy", self.val_accuracy, on_step=False, on_epoch=True, batch_size=len(batch)
        )


class LatentRLModule(RLStage):
    """Stage 3 of CoLA: RL over the K latent actions; only the policy learns."""

    trained_parts = ("policy",)
    latent = True

    @staticmethod
    def default_optimizer() -> OptimizerConfig:
        return OptimizerConfig(lr=5e-7, min_lr=5e-7, warmup_steps=0)

    def action_logprobs(self, batch, with_reference):
        hidden, _ = self.model.hidden_states(
            batch.input_ids, batch.attention_mask, batch.position_ids
        )
        logits, _ = self.model.policy(hidden, batch.attention_mask, batch.position_ids)
        logprobs, entropy = gather_logprobs(logits, batch.actions, self.temperature)
        reference = None
        if with_reference:
            with torch.no_grad():
                ref_logits, _ = self.reference(hidden, batch.attention_mask, batch.position_ids)
            reference, _ = gather_logprobs(ref_logits, batch.actions, self.temperature)
        return logprobs, entropy, reference
