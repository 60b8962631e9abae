"""Stage 1, latent action construction: train the inverse dynamics model, codebook and world model.

The frozen backbone gives states h; the inverse dynamics model labels each step with a code drawn
by Gumbel-softmax (tau = 2) and passed on as a straight-through one-hot; the world model must then
predict the next token from h_t and that code. An entropy bonus (0.001 * sum_k y_k log y_k on the
soft sample y) keeps the labelling from collapsing early.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cola_lightning.data.feature_cache import FeatureCacheConfig
from cola_lightning.metrics.codebook import CodebookUsage
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.sharding import ShardingConfig
from cola_lightning.models.steps import at_steps, next_token_pairs
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.losses import masked_cross_entropy, masked_mean, target_mask
from cola_lightning.stages.optim import OptimizerConfig


def straight_through_one_hot(soft: torch.Tensor) -> torch.Tensor:
    """The one-hot of argmax(soft) in the forward pass, with the gradient of `soft` backward."""
    hard = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
    return hard - soft.detach() + soft


class LatentActionModule(CoLAStage):
    """Stage 1 of CoLA (DESIGN.md section 2).

    Args:
        backbone: where the pretrained LM comes from (frozen here).
        cola: sizes of the latent-action parts.
        optimizer: optimiser and schedule (published: AdamW 1e-4, warm-up 100, cosine to 4e-5).
        init_from: a checkpoint to start from.
        gumbel_tau: Gumbel-softmax temperature for the inverse dynamics model's codes.
        entropy_coef: weight of sum_k y_k log y_k in the loss (an entropy bonus).
        usage_window: training steps over which `codebook/alive` and `codebook/perplexity` count.
        sample_tokens: tokens of the first validation text logged with their codes.
        sharding: FSDP2 settings, used under `ModelParallelStrategy`.
        feature_cache: train from the backbone's states cached on disk (see `FeatureCacheConfig`).
    """

    trained_parts = ("inverse_dynamics", "codebook", "world_model")

    def __init__(
        self,
        backbone: BackboneSpec,
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        init_from: str | None = None,
        gumbel_tau: float = 2.0,
        entropy_coef: float = 1e-3,
        usage_window: int = 100,
        sample_tokens: int = 48,
        sharding: ShardingConfig | None = None,
        feature_cache: FeatureCacheConfig | None = None,
    ) -> None:
        super().__init__(
            backbone, cola, optimizer, init_from, sample_tokens, sharding, feature_cache
        )
        self.gumbel_tau = gumbel_tau
        self.entropy_coef = entropy_coef
        self.usage = CodebookUsage(self.cola_config.num_codes, usage_window)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hidden = self.features(batch)
        mask = target_mask(batch)
        logits = self.model.inverse_dynamics.code_logits(hidden, batch["attention_mask"])
        soft = self.gumbel_softmax(logits.float())
        codes = straight_through_one_hot(soft).to(hidden.dtype)
        states, targets = next_token_pairs(hidden, batch["input_ids"])
        logits = self.model.world_model_logits(states, codes, at_steps(batch["attention_mask"]))
        ce = masked_cross_entropy(logits, targets, mask)
        negative_entropy = masked_mean((soft * soft.clamp_min(1e-12).log()).sum(-1), mask)
        loss = ce + self.entropy_coef * negative_entropy
        self._log_training(loss, ce, -negative_entropy, soft.argmax(-1)[mask])
        return loss

    def gumbel_softmax(self, logits: torch.Tensor) -> torch.Tensor:
        """softmax((logits + g) / tau) with Gumbel noise g drawn for the whole global batch.

        Every rank draws the noise of all ranks' rows and keeps its own (a DistributedSampler
        deals rank r the global rows r, r + W, ...), so a sample gets the same noise however
        many ranks share the batch, and a sharded run follows the single-process run exactly.
        """
        world, rank = (
            (self.trainer.world_size, self.trainer.global_rank) if self._trainer else (1, 0)
        )
        shape = (logits.shape[0] * world, *logits.shape[1:])
        generator = self.generator(logits.device)
        exponential = torch.empty(shape, dtype=logits.dtype, device=logits.device)
        exponential.exponential_(generator=generator)
        gumbel = -exponential[rank::world].log()
        return ((logits + gumbel) / self.gumbel_tau).softmax(-1)

    def _log_training(
        self, loss: torch.Tensor, ce: torch.Tensor, entropy: torch.Tensor, codes: torch.Tensor
    ) -> None:
        self.usage.update(codes)
        perplexity, alive = self.usage.compute()
        self.log_dict(
            {
                "train/loss": loss,
                "train/ce": ce,
                "train/entropy": entropy,
                "codebook/perplexity": perplexity,
                "codebook/alive": alive.float(),
            },
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            sync_dist=True,
        )
        writer = self.tensorboard
        if writer is not None and self.global_step % self.trainer.log_every_n_steps == 0:
            writer.add_histogram(
                "codebook/usage", codes, self.global_step, bins=self.model.num_codes
            )
