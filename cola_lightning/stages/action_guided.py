"""Stage 2, fine-tuning under action guidance: adapt the backbone while the latent actions stay.

The world model must predict each response token from the backbone's state and a code that comes
from the (frozen) inverse dynamics model (FTA-I) or from the (frozen) policy's argmax (FTA-P). Only
the backbone learns: fully, or through LoRA / QLoRA adapters (see `BackboneSpec`). The codes are
read from the current backbone's states without autograd, so the gradient reaches the backbone only
through the world model's prediction. After FTA-I the policy is re-cloned on the same data with
`BehaviorCloningModule` (configs/quickstart/action_guided_reclone.yaml).
"""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.optim import OptimizerConfig

ACTION_SOURCES = ("idm", "policy", "none")


class ActionGuidedFinetuneModule(CoLAStage):
    """Stage 2 of CoLA (DESIGN.md section 2). Starts from a stage-1b checkpoint.

    Args:
        backbone: the pretrained LM, with `lora` / `quantization` for LoRA and QLoRA.
        init_from: the stage-1b checkpoint (inverse dynamics model, codebook, world model, policy).
        actions: ``idm`` (FTA-I: codes from the inverse dynamics model) or ``policy`` (FTA-P);
            ``none`` is no action guidance: the backbone's own next-token loss, the token-level
            baseline's SFT on the same data (what token RL should start from for a fair match).
        cola: sizes of the latent-action parts (must match the checkpoint).
        optimizer: published stage 2: AdamW lr 5e-6, betas (0.9, 0.95).
        sample_tokens: tokens of the first validation text logged with their codes.
        sharding: FSDP2 settings, used under `ModelParallelStrategy`.
    """

    trained_parts = ("backbone",)

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        actions: str = "idm",
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        sample_tokens: int = 48,
        sharding: ShardingConfig | None = None,
    ) -> None:
        if not init_from:
            raise ValueError(
                "ActionGuidedFinetuneModule needs `init_from`: a stage-1b checkpoint whose latent "
                "actions guide the fine-tuning (the quickstart writes "
                "checkpoints/quickstart/behavior_cloning/last.ckpt)."
            )
        if actions not in ACTION_SOURCES:
            raise ValueError(f"Unknown actions {actions!r}; use one of {ACTION_SOURCES}.")
        super().__init__(backbone, cola, optimizer, init_from, sample_tokens, sharding)
        self.actions = actions

    @staticmethod
    def default_optimizer() -> OptimizerConfig:
        return OptimizerConfig(lr=5e-6, min_lr=5e-7, warmup_steps=0, betas=(0.9, 0.95))

    def guiding_codes(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        detached = hidden.detach()
        if self.actions == "idm":
            return self.idm_codes(detached, batch)
        return self.policy_codes(detached, batch)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hidden = self.features(batch)
        if self.actions == "none":
            loss = self.base_nll(hidden, batch)
        else:
            loss = self.world_model_nll(hidden, self.guiding_codes(hidden, batch), batch)
        metrics = {"train/loss": loss, "train/ce": loss}
        self.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=True, sync_dist=True)
        return loss

    def extra_validation_metrics(
        self, hidden: torch.Tensor, codes: torch.Tensor, batch: dict
    ) -> dict[str, torch.Tensor]:
        return {
            "val/wm_nll_policy": self.world_model_nll(
                hidden, self.policy_codes(hidden, batch), batch
            )
        }
