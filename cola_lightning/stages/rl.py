"""Stage 3, RL with verifiable rewards: GRPO, ReMax or PPO-clip, over latent actions or tokens.

Every training step generates rollouts with the generation engine, scores them with the reward
registry, and updates the trained part on the log-probabilities of the actions taken, with a KL
penalty to a frozen copy of the starting policy. `LatentRLModule` (here) takes codes as actions and
trains only the policy, with greedy tokens, so all exploration is in the K codes. `TokenRLModule`
(token_rl.py) takes tokens as actions on the plain backbone: the baseline, sharing everything else.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torchmetrics import MeanMetric

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig, frozen_copy
from cola_lightning.rewards.registry import CompositeReward, RewardSpec
from cola_lightning.rollout import rl_maths
from cola_lightning.rollout.engine import GenerationConfig, Generator, require_sampled_actions
from cola_lightning.rollout.rl_maths import ActionBatch, action_batch
from cola_lightning.rollout.sampling import Sampler, prompt_streams
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.optim import OptimizerConfig


@dataclass
class RLConfig:
    """The RL algorithm. Defaults: GRPO as published for math (group 4, KL 1e-3, clip 0.2).

    Args:
        algorithm: ``grpo`` (group-normalised rewards), ``remax`` (reward minus the greedy
            rollout's), ``ppo`` (critic-free PPO-clip: batch-normalised rewards, several epochs)
            or ``ppo_gae`` (the reference code's PPO, DESIGN.md section 8: per-action reward
            -kl_coef * KL_t plus the clipped sequence reward at the end, GAE with V = 0,
            gamma 1, `gae_lambda`, advantages whitened over the rollout buffer).
        group_size: rollouts per prompt (GRPO, PPO); ReMax uses one sampled and one greedy.
        kl_coef: weight of KL(pi || pi_ref) on the taken actions (in the loss; in the shaped
            reward for ``ppo_gae``); 0 drops the reference copy.
        clip_eps: PPO clipping epsilon (the ratio is 1 on a first pass, so it bites from epoch 2).
        epochs: passes over each rollout batch.
        minibatches: minibatches per pass. Each minibatch is one optimiser step, and the
            Trainer's `max_steps` and `global_step` count optimiser steps.
        micro_batch_size: rows per forward and backward within one optimiser step (gradient
            accumulation: the same step in less memory); None does a minibatch at once.
        max_grad_norm: gradient clipping.
        gae_lambda: GAE's lambda (``ppo_gae``).
        backbone_states: where latent RL's update gets the frozen backbone's states: ``rollout``
            (kept from the rollout, which computed them already, so an update is the policy's
            forward and backward only) or ``recompute`` (one no-grad backbone pass per rollout
            batch, for when the kept states would not fit in memory). Token RL trains the
            backbone and always recomputes.
        skip_no_signal: skip the update of a step whose rollouts carry no reward signal (every
            advantage zero on every rank, e.g. every group tied under a sparse reward). Such a
            step would move the policy by the KL term and by AdamW's momentum from earlier
            steps only, with nothing to learn from (agent token GRPO drifted so,
            experiments/agents/). A skipped step is no optimiser step, so `max_steps` counts
            updates. Logged as `rl/skipped`. Off by default: the published recipe steps.
    """

    algorithm: str = "grpo"
    group_size: int = 4
    kl_coef: float = 1e-3
    clip_eps: float = 0.2
    epochs: int = 1
    minibatches: int = 1
    micro_batch_size: int | None = None
    max_grad_norm: float = 1.0
    gae_lambda: float = 0.95
    backbone_states: str = "rollout"
    skip_no_signal: bool = False

    def __post_init__(self) -> None:
        if self.backbone_states not in ("rollout", "recompute"):
            raise ValueError(
                f"Unknown rl.backbone_states {self.backbone_states!r}; use rollout or recompute."
            )
        if self.algorithm not in rl_maths.ALGORITHMS:
            raise ValueError(f"Unknown RL algorithm {self.algorithm!r}; use {rl_maths.ALGORITHMS}.")
        if self.micro_batch_size is not None and self.micro_batch_size < 1:
            raise ValueError(
                f"rl.micro_batch_size must be >= 1 or null; got {self.micro_batch_size}."
            )
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (advantages are relative to the group).")


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
        # Greedy actions make every rollout of a prompt alike: every group ties, nothing learns.
        require_sampled_actions(
            self.generation, self.mode, "every rollout of a prompt would be the same"
        )
        self.val_accuracy = MeanMetric()
        self.reference: torch.nn.Module | None = None
        self._step_tokens = 0

    @staticmethod
    def default_optimizer() -> OptimizerConfig:
        """The published RL lr (5e-7, constant) with the reference's betas and no weight decay."""
        return OptimizerConfig(
            lr=5e-7, min_lr=5e-7, warmup_steps=0, weight_decay=0.0, betas=(0.9, 0.95)
        )

    @staticmethod
    def default_generation() -> GenerationConfig:
        return GenerationConfig(max_new_tokens=64)

    @property
    def mode(self) -> str:
        """The generation mode of the rollouts: what RL trains chooses the actions."""
        return "latent" if self.latent else "token"

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
            # Built and sharded like the trained part (a sharded module cannot be deep-copied).
            part = self.trained_parts[0]
            self.reference = frozen_copy(
                getattr(self.model, part),
                lambda: getattr(self.meta_model(), part),
                self.sharding_mesh,
                self.sharding_config,
            )

    def set_training_modes(self) -> None:
        super().set_training_modes()
        if self.reference is not None:
            self.reference.eval()

    def action_logprobs(
        self, batch: ActionBatch, with_reference: bool
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(log pi(action), entropy, log pi_ref(action) or None) at every position (N, L)."""
        raise NotImplementedError  # each RL stage says what its actions are

    def reference_logprobs(self, batch: ActionBatch) -> torch.Tensor:
        """log pi_ref(action) at every position (N, L)."""
        return self.action_logprobs(batch, with_reference=True)[2]

    def greedy_config(self) -> GenerationConfig:
        return dataclasses.replace(
            self.generation, code=Sampler(greedy=True), token=Sampler(greedy=True)
        )

    def rollout(self, records: list[dict], config: GenerationConfig, keep_states: bool = False):
        """Generates one completion per record and scores it (`keep_states`: see `Rollout`).

        Returns:
            The `Rollout`, the rewards (N,) on this module's device, and the reward error count.
        """
        engine = Generator(self.model, self.tokenizer, config)
        prompts = [r["prompt"] for r in records]
        result = engine.generate(
            prompts, self.mode, generator=self.streams(prompts), keep_states=keep_states
        )
        rewards, errors = self.reward([r["prompt"] for r in records], result.texts, records)
        return result, rewards.to(self.device), errors

    def actions_of(self, result) -> ActionBatch:
        """The rollouts' actions aligned with positions (the agent stages pass episodes)."""
        return action_batch(result, self.latent, self.tokenizer.pad_token_id, self.device)

    def streams(self, prompts: list[str]) -> list[torch.Generator]:
        """One random stream per rollout, seeded by (seed, step, copy of the prompt, prompt)."""
        return prompt_streams(prompts, self.device, self._seed, self.global_step)

    def training_step(self, batch: list[dict], batch_idx: int) -> None:
        started = time.perf_counter()
        group = 1 if self.rl.algorithm == "remax" else self.rl.group_size
        records = [r for r in batch for _ in range(group)]
        keep = self.latent and self.rl.backbone_states == "rollout"
        result, rewards, errors = self.rollout(records, self.generation, keep_states=keep)
        positions = result.backbone_positions()
        if self.rl.algorithm == "remax":
            greedy, greedy_rewards, greedy_errors = self.rollout(batch, self.greedy_config())
            errors += greedy_errors
            positions += greedy.backbone_positions()
            advantages = rl_maths.remax_advantages(rewards, greedy_rewards)
        elif self.rl.algorithm == "grpo":
            advantages = rl_maths.group_advantages(rewards, group)
        else:
            advantages = rl_maths.batch_advantages(rewards)
        # the rollouts that move the policy at all: with a sparse reward most groups tie
        moving = advantages.abs() > 1e-6
        skipped = self.rl.skip_no_signal and not self.any_rank(moving.any())
        rolled = time.perf_counter()
        updated_positions, stats = (0, {}) if skipped else self.learn(result, rewards, advantages)
        positions += updated_positions
        updated = time.perf_counter()
        self._step_tokens = sum(len(t) for t in result.token_ids)
        self.log_dict(
            {
                "rl/reward_mean": rewards.mean(),
                "rl/reward_std": rewards.std(unbiased=False),
                "rl/reward_errors": float(errors),
                "rl/response_tokens": self._step_tokens / len(records),
                "rl/backbone_tokens": float(positions),
                "rl/signal_frac": moving.float().mean(),
                "rl/skipped": float(skipped),
                "timing/rollout_s": rolled - started,
                "timing/update_s": updated - rolled,
                **stats,
            },
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=len(records),
        )

    def learn(
        self, result, rewards: torch.Tensor, advantages: torch.Tensor
    ) -> tuple[int, dict[str, torch.Tensor]]:
        """The update on one step's rollouts: the backbone positions it ran, and its stats."""
        actions = self.actions_of(result)
        positions = self.update_backbone_positions(actions)
        actions = self.with_states(actions)
        if self.rl.algorithm == "ppo_gae":
            advantages = self.gae_advantages(actions, rewards)
        return positions, self.update(actions, advantages)

    def any_rank(self, flag: torch.Tensor) -> bool:
        """Whether `flag` holds on any rank: sharded ranks must update together or not at all."""
        return bool(self.all_gather(flag.float()).max() > 0)

    def with_states(self, batch: ActionBatch) -> ActionBatch:
        """The batch with the backbone's states wherever this stage's update reads them."""
        return batch

    def update_backbone_positions(self, batch: ActionBatch) -> int:
        """Positions the update will run through a backbone (the compute RL is compared by)."""
        raise NotImplementedError  # each RL stage says what its update reads

    def update(self, batch: ActionBatch, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """`epochs` passes of `minibatches` clipped policy-gradient steps; the last stats."""
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        rows = batch.input_ids.shape[0]
        for _ in range(self.rl.epochs):
            order = torch.randperm(rows) if self.rl.minibatches > 1 else torch.arange(rows)
            for chunk in order.chunk(self.rl.minibatches):
                optimizer.zero_grad(set_to_none=True)
                stats = self.accumulate(batch, advantages, chunk)
                self.clip_gradients(optimizer, gradient_clip_val=self.rl.max_grad_norm)
                optimizer.step()
                scheduler.step()  # per optimiser step, as `max_steps` counts them
        return stats

    def accumulate(
        self, batch: ActionBatch, advantages: torch.Tensor, rows: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """Backward of the minibatch `rows` in micro-batches; its stats, as if in one pass.

        Every loss term is a mean over sequences, so weighting each micro-batch by its share of
        the rows gives the minibatch's gradient exactly.
        """
        totals: dict[str, torch.Tensor] = {}
        for micro in rows.split(self.rl.micro_batch_size or len(rows)):
            stats = self.policy_step(batch.select(micro), advantages[micro.to(advantages.device)])
            weight = len(micro) / len(rows)
            self.manual_backward(stats.pop("loss") * weight)
            for name, value in stats.items():
                totals[name] = totals.get(name, 0.0) + value * weight
        return totals

    def gae_advantages(self, batch: ActionBatch, rewards: torch.Tensor) -> torch.Tensor:
        """``ppo_gae``'s per-action advantages, the KL measured on the rollout's own log-probs."""
        if self.reference is None:
            reference = batch.old_logprobs  # kl_coef 0: no KL term in the reward
        else:
            with torch.no_grad():
                reference = self.reference_logprobs(batch)
        return rl_maths.ppo_gae_advantages(
            rewards,
            batch.old_logprobs,
            reference,
            batch.action_mask,
            self.rl.kl_coef,
            self.rl.gae_lambda,
        )

    def policy_step(self, batch: ActionBatch, advantages: torch.Tensor) -> dict[str, torch.Tensor]:
        """The loss of one minibatch, with what to log about it."""
        # ppo_gae has its KL in the shaped reward; the others add it to the loss.
        with_reference = self.reference is not None and self.rl.algorithm != "ppo_gae"
        logprobs, entropy, reference = self.action_logprobs(batch, with_reference)
        loss, clip_frac = rl_maths.clipped_policy_loss(
            logprobs, batch.old_logprobs, advantages, batch.action_mask, self.rl.clip_eps
        )
        stats = {
            "rl/policy_loss": loss.detach(),
            "rl/clip_frac": clip_frac,
            "rl/policy_entropy": rl_maths.sequence_mean(entropy.detach(), batch.action_mask),
        }
        if with_reference:
            kl = rl_maths.kl_to_reference(logprobs, reference, batch.action_mask)
            loss = loss + self.rl.kl_coef * kl
            stats["rl/kl"] = kl.detach()
        stats["loss"] = loss
        return stats

    def batch_tokens(self, batch) -> int:
        return self._step_tokens

    def validation_step(self, batch: list[dict], batch_idx: int) -> None:
        engine = Generator(self.model, self.tokenizer, self.greedy_config())
        result = engine.generate([r["prompt"] for r in batch], self.mode)
        scores, _ = self.accuracy([r["prompt"] for r in batch], result.texts, batch)
        self.val_accuracy.update((scores >= 0.5).float())
        self.log(
            "val/accuracy", self.val_accuracy, on_step=False, on_epoch=True, batch_size=len(batch)
        )


class LatentRLModule(RLStage):
    """Stage 3 of CoLA: RL over the K latent actions; only the policy learns."""

    trained_parts = ("policy",)
    latent = True

    def update_backbone_positions(self, batch: ActionBatch) -> int:
        """None with the rollout's states kept; else one no-grad pass (`with_states`)."""
        return 0 if batch.states is not None else int(batch.attention_mask.sum())

    def with_states(self, batch: ActionBatch) -> ActionBatch:
        """Kept from the rollout, or computed here once for every epoch and minibatch."""
        if batch.states is None:
            with torch.no_grad():
                batch.states, _ = self.model.hidden_states(
                    batch.input_ids, batch.attention_mask, batch.position_ids
                )
        return batch

    def action_logprobs(self, batch, with_reference):
        hidden = self.with_states(batch).states
        logits, _ = self.model.policy(hidden, batch.attention_mask, batch.position_ids)
        logprobs, entropy = rl_maths.action_logprobs(logits, batch.actions, self.temperature)
        reference = None
        if with_reference:
            with torch.no_grad():
                ref_logits, _ = self.reference(hidden, batch.attention_mask, batch.position_ids)
            reference, _ = rl_maths.action_logprobs(ref_logits, batch.actions, self.temperature)
        return logprobs, entropy, reference
