"""Stage 1b, behaviour cloning: teach the policy to predict the inverse dynamics model's codes.

The policy sees only x_1..x_t and learns pi(a_t | x_1..x_t) with cross-entropy against the argmax
code the (frozen) inverse dynamics model assigns to step t, which saw x_{t+1} too.
"""

from __future__ import annotations

import torch

from cola_lightning.data.feature_cache import FeatureCacheConfig
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig
from cola_lightning.models.steps import at_steps
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.losses import masked_accuracy, masked_cross_entropy, target_mask
from cola_lightning.stages.optim import OptimizerConfig


class BehaviorCloningModule(CoLAStage):
    """Stage 1b of CoLA (DESIGN.md section 2). Starts from a stage-1 checkpoint.

    Args:
        backbone: where the pretrained LM comes from (frozen here).
        init_from: the stage-1 checkpoint holding the inverse dynamics model, codebook and world
            model (required: cloning a random labeller teaches nothing).
        cola: sizes of the latent-action parts (must match the checkpoint).
        optimizer: optimiser and schedule (published: as stage 1).
        sample_tokens: tokens of the first validation text logged with their codes.
        sharding: FSDP2 settings, used under `ModelParallelStrategy`.
        feature_cache: train from the backbone's states cached on disk (see `FeatureCacheConfig`).
    """

    trained_parts = ("policy",)

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        sample_tokens: int = 48,
        sharding: ShardingConfig | None = None,
        feature_cache: FeatureCacheConfig | None = None,
    ) -> None:
        if not init_from:
            raise ValueError(
                "BehaviorCloningModule needs `init_from`: the stage-1 checkpoint whose inverse "
                "dynamics model labels the codes to clone (e.g. the quickstart writes "
                "checkpoints/quickstart/latent_actions/last.ckpt)."
            )
        super().__init__(
            backbone, cola, optimizer, init_from, sample_tokens, sharding, feature_cache
        )

    def policy_logits(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """Policy logits for steps 0..T-2 (B, T-1, K)."""
        logits, _ = self.model.policy_logits(hidden, batch["attention_mask"])
        return at_steps(logits)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hidden = self.features(batch)
        targets = self.idm_codes(hidden, batch)
        logits = self.policy_logits(hidden, batch)
        mask = target_mask(batch)
        loss = masked_cross_entropy(logits, targets, mask)
        metrics = {
            "train/loss": loss,
            "train/ce": loss,
            "bc/accuracy": masked_accuracy(logits, targets, mask),
        }
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        return loss

    def extra_validation_metrics(
        self, hidden: torch.Tensor, codes: torch.Tensor, batch: dict
    ) -> dict[str, torch.Tensor]:
        logits = self.policy_logits(hidden, batch)
        return {
            "val/bc_accuracy": masked_accuracy(logits, codes, target_mask(batch)),
            "val/wm_nll_policy": self.world_model_nll(hidden, logits.argmax(-1), batch),
        }
