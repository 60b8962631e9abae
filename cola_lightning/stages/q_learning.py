"""The Q-model's stage: offline Double-DQN on recorded CoLA solutions (DESIGN.md section 6).

    python -m cola_lightning fit --config configs/quickstart/q_learning.yaml

Only the Q-model trains; the CoLA model (from `init_from`) supplies the frozen backbone states.
Target: r_t + gamma * Q_target(s_{t+1}, argmax_a Q(s_{t+1}, a)), reward only at the last
response step, MSE over response steps; the target network is a second Q-model built from the
same config and hard-copied from the online one every `sync_every` steps.
"""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import LATENT_DTYPE, CoLAConfig
from cola_lightning.search.q_model import QModel, QModelConfig, td_targets
from cola_lightning.stages.base import CoLAStage, _as
from cola_lightning.stages.optim import OptimizerConfig


class QLearningModule(CoLAStage):
    """Trains Q(s, a) over the K latent actions.

    Args:
        backbone: where the pretrained LM comes from.
        init_from: the CoLA checkpoint whose solutions the data holds (its states feed Q).
        cola: sizes of the latent-action parts (must match the checkpoint).
        q: the Q-model's sizes and gamma.
        optimizer: the reference uses lr 5e-6; tiny runs use more.
        sync_every: steps between hard copies into the target network (50 in the reference).
    """

    def __init__(
        self,
        backbone: BackboneSpec,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        q: QModelConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        sync_every: int = 50,
    ) -> None:
        super().__init__(backbone, cola, optimizer, init_from=init_from)
        if sync_every < 1:
            raise ValueError(f"sync_every must be >= 1, got {sync_every}.")
        self.q_config = _as(QModelConfig, q) or QModelConfig()
        self.sync_every = sync_every
        self.q_model: QModel | None = None
        self.q_target: QModel | None = None

    @staticmethod
    def default_optimizer() -> OptimizerConfig:
        return OptimizerConfig(lr=5e-6, min_lr=5e-6, warmup_steps=0)

    def configure_model(self) -> None:
        if self.q_model is not None:
            return
        super().configure_model()
        lm_config, k = self.model.backbone.config, self.model.num_codes
        self.q_model = QModel(lm_config, self.q_config, k, LATENT_DTYPE)
        self.q_target = QModel(lm_config, self.q_config, k, LATENT_DTYPE)
        self.q_target.load_state_dict(self.q_model.state_dict())
        self.q_target.requires_grad_(False)

    def optimized_module(self) -> torch.nn.Module:
        return self.q_model

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        synced = self.global_step % self.sync_every == 0
        if synced:
            self.q_target.load_state_dict(self.q_model.state_dict())
        self.log("q/target_sync", float(synced), on_step=True, on_epoch=False)

    def td_loss(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The masked MSE to the Double-DQN targets, and the mean Q(s, a) over response steps."""
        hidden = self.features(batch)
        mask = batch["attention_mask"]
        q, _ = self.q_model(hidden, mask)
        q_sa = q.gather(-1, batch["actions"][..., None])[..., 0].float()
        with torch.no_grad():
            q_target, _ = self.q_target(hidden, mask)
            # state i+1 follows state i; the last position has no successor (padded with 0)
            online_next = torch.nn.functional.pad(q[:, 1:].detach(), (0, 0, 0, 1))
            target_next = torch.nn.functional.pad(q_target[:, 1:], (0, 0, 0, 1))
            targets = td_targets(
                online_next.float(),
                target_next.float(),
                batch["rewards"],
                batch["last"],
                self.q_config.gamma,
            )
        steps = batch["steps"].float()
        count = steps.sum().clamp_min(1)
        loss = ((q_sa - targets) ** 2 * steps).sum() / count
        return loss, (q_sa.detach() * steps).sum() / count

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss, value = self.td_loss(batch)
        size = batch["input_ids"].shape[0]
        self.log_dict(
            {"q/td_loss": loss, "q/value_mean": value},
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=size,
        )
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        loss, value = self.td_loss(batch)
        size = batch["input_ids"].shape[0]
        self.log_dict({"val/td_loss": loss, "val/q_value_mean": value}, batch_size=size)

    def batch_tokens(self, batch) -> int:
        return int(batch["attention_mask"].sum())
