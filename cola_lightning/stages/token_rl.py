"""The token-level RL baseline: the same algorithms with tokens as actions on the plain backbone.

Shares data, rewards, generation, objectives and logging with `LatentRLModule`, so the comparison
is fair: only what an action is changes. The backbone learns (fully, or through LoRA adapters); the
latent parts of the CoLA model are carried along unused. The reference for the KL penalty is a
frozen copy of the starting backbone.
"""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import Readout
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.rollout.rl_maths import action_logprobs
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.rl import RLStage


class TokenRLModule(RLStage):
    """RL over tokens (the baseline CoLA is compared with). Same arguments as `RLStage`."""

    trained_parts = ("backbone",)
    latent = False

    @staticmethod
    def default_generation() -> GenerationConfig:
        return GenerationConfig(max_new_tokens=64, token=Sampler(temperature=1.0))

    def update_backbone_positions(self, batch) -> int:
        """The backbone per epoch, and its frozen reference where the KL is measured."""
        reference = 0
        if self.reference is not None:  # ppo_gae measures it once, the others every epoch
            reference = 1 if self.rl.algorithm == "ppo_gae" else self.rl.epochs
        return int(batch.attention_mask.sum()) * (self.rl.epochs + reference)

    def action_logprobs(self, batch, with_reference):
        # The vocabulary head runs only where actions are (the responses), not over the prompts.
        args = (batch.input_ids, batch.attention_mask, batch.position_ids)
        columns = batch.action_columns()
        actions = batch.actions[:, columns]
        hidden, _ = self.model.token_states(*args)
        logits = self.model.token_logits(hidden[:, columns])
        logprobs, entropy = action_logprobs(logits, actions, self.temperature)
        reference = None
        if with_reference:
            with torch.no_grad():
                ref_hidden, _ = self.reference(*args)
                ref_logits = self.reference(readout=Readout(ref_hidden[:, columns]))
            reference = batch.widen(
                action_logprobs(ref_logits, actions, self.temperature)[0], columns
            )
        return batch.widen(logprobs, columns), batch.widen(entropy, columns), reference
