"""What every CoLA stage shares: building the model, freezing, hand-off, optimiser, logging.

A stage names the parts it trains (`trained_parts`); everything else is frozen. The model is built
in `configure_model`, so sharded strategies can build it where they want it. Checkpoints leave out
the backbone when it is frozen and reloadable from its `source` (it is the bulk of the model), and
loading refuses any checkpoint with a missing or unexpected tensor.
"""

from __future__ import annotations

import random
import time

import lightning as L
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from cola_lightning.checkpoints.format import (
    BACKBONE_PREFIX,
    STAGE_KEY,
    STATE_PREFIX,
    check_state_keys,
    load_adapters,
    load_stage_checkpoint,
    stage_class_path,
)
from cola_lightning.data.feature_cache import FeatureCacheConfig
from cola_lightning.models.adapters import is_adapter_key
from cola_lightning.models.backbone import (
    DTYPES,
    Backbone,
    BackboneSpec,
    load_causal_lm,
    load_tokenizer,
)
from cola_lightning.models.cola import CoLAConfig, CoLAModel
from cola_lightning.models.sharding import (
    ShardingConfig,
    build_sharded_cola_model,
    fsdp_mesh,
    init_latent_parameters,
    meta_causal_lm,
)
from cola_lightning.models.steps import at_steps, next_token_pairs
from cola_lightning.stages.feature_cache import attach_feature_cache
from cola_lightning.stages.losses import masked_cross_entropy, target_mask
from cola_lightning.stages.optim import OptimizerConfig, build_optimizer, build_scheduler

FROZEN_BACKBONE_KEYS = STATE_PREFIX + BACKBONE_PREFIX
RNG_STATES = "rng_states"  # the random generators' states, for an exact resume


class CoLAStage(L.LightningModule):
    """Base class of the stage modules.

    Args:
        backbone: where the pretrained LM comes from.
        cola: sizes of the latent-action parts.
        optimizer: optimiser and learning-rate schedule.
        init_from: a previous stage's checkpoint to start from.
        sample_tokens: how many tokens of the first validation sequence to log with their codes.
        sharding: FSDP2 settings, used when the trainer's strategy is `ModelParallelStrategy`
            (the model is then built on the meta device and sharded before any weight loads).
        feature_cache: compute the frozen backbone's states for the corpus once, store them and
            train from them (stages that freeze the backbone only); None runs the backbone.
    """

    trained_parts: tuple[str, ...] = ()

    def __init__(
        self,
        backbone: BackboneSpec,
        cola: CoLAConfig | None = None,
        optimizer: OptimizerConfig | None = None,
        init_from: str | None = None,
        sample_tokens: int = 48,
        sharding: ShardingConfig | None = None,
        feature_cache: FeatureCacheConfig | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        # Checkpoints store these as plain dicts; `load_from_checkpoint` hands them back so.
        self.backbone_spec = _as(BackboneSpec, backbone)
        self.cola_config = _as(CoLAConfig, cola) or CoLAConfig()
        self.optimizer_config = _as(OptimizerConfig, optimizer) or self.default_optimizer()
        self.sharding_config = _as(ShardingConfig, sharding) or ShardingConfig()
        self.feature_cache_config = _as(FeatureCacheConfig, feature_cache)
        if self.feature_cache_config is not None and self.trains_backbone:
            raise ValueError(
                f"{type(self).__name__} trains the backbone, so its states change every step and "
                "cannot be cached: drop `feature_cache` (it serves stages 1 and 1b)."
            )
        self.init_from = init_from
        self.sample_tokens = sample_tokens
        self.tokenizer = load_tokenizer(self.backbone_spec.tokenizer_name)
        self.model: CoLAModel | None = None
        # Lightning's own strict check cannot know that a frozen backbone is left out on purpose;
        # `on_load_checkpoint` checks instead, and just as strictly.
        self.strict_loading = False
        self._step_started = 0.0
        self._rng_states_to_restore: dict | None = None
        self._seed = 0
        self._generator: torch.Generator | None = None
        self._fsdp_mesh = None

    # -- model ---------------------------------------------------------------------------------

    @staticmethod
    def default_optimizer() -> OptimizerConfig:
        """The stage's published optimiser settings (stage 1's unless a stage says otherwise)."""
        return OptimizerConfig()

    @property
    def trains_backbone(self) -> bool:
        return "backbone" in self.trained_parts

    def configure_model(self) -> None:
        if self.model is not None:
            return
        spec = self.backbone_spec
        if self.trains_backbone and spec.quantization is not None and spec.lora is None:
            raise ValueError(
                f"Quantised ({spec.quantization}) base weights cannot be trained directly: add "
                "`lora` to the backbone (QLoRA) or drop `quantization`."
            )
        self.model = self.build_model(spec)
        adapters = load_stage_checkpoint(self.model, self.init_from) if self.init_from else {}
        self.model.backbone.adapt(spec)
        if adapters:
            load_adapters(self.model, adapters, self.init_from)
        self.model.requires_grad_(False)
        for part in self.trained_parts:
            getattr(self.model, part).requires_grad_(True)

    def meta_model(self) -> CoLAModel:
        """This stage's CoLA model on the meta device (an architecture without weights)."""
        with torch.device("meta"):
            return CoLAModel(Backbone(meta_causal_lm(self.backbone_spec)), self.cola_config)

    @property
    def sharding_mesh(self):
        """The mesh FSDP2 shards over under `ModelParallelStrategy` (every rank), else None."""
        if self._device_mesh is None:
            return None
        if self._fsdp_mesh is None:
            self._fsdp_mesh = fsdp_mesh(self._device_mesh)
        return self._fsdp_mesh

    def build_model(self, spec: BackboneSpec) -> CoLAModel:
        """The CoLA model with the backbone's weights and freshly initialised latent parts.

        Under `ModelParallelStrategy` it is built on the meta device and sharded (FSDP2) first.
        """
        self._seed = seed = self.shared_seed()
        if self.sharding_mesh is not None:
            return build_sharded_cola_model(
                spec, self.cola_config, self.sharding_mesh, self.sharding_config, seed
            )
        model = CoLAModel(Backbone(load_causal_lm(spec)), self.cola_config)
        init_latent_parameters(model, seed)
        return model

    def shared_seed(self) -> int:
        """The seed of the latent parts' initialisation: this process's, rank 0's when sharded."""
        seed = [torch.initial_seed() % 2**31]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast_object_list(seed, src=0)
        return seed[0]

    def generator(self, device: torch.device) -> torch.Generator:
        """The stage's own random stream (e.g. Gumbel noise), checkpointed with the run.

        Seeded with the shared seed and drawn from by nothing else, so a stage's noise does not
        depend on what loading the model or iterating the data drew from torch's global stream.
        """
        if self._generator is None:
            self._generator = torch.Generator(device).manual_seed(self._seed)
        return self._generator

    def left_out_of_checkpoint(self, key: str) -> bool:
        """Frozen backbone weights that can be reloaded from the source are not stored.

        That is every backbone weight in stages that freeze it, and the base weights under LoRA;
        adapters and fully fine-tuned weights are always stored.
        """
        if not key.startswith(FROZEN_BACKBONE_KEYS) or self.backbone_spec.source is None:
            return False
        if is_adapter_key(key):
            return False
        return not self.trains_backbone or self.backbone_spec.lora is not None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint[STAGE_KEY] = stage_class_path(self)
        checkpoint[RNG_STATES] = rng_states()
        if self._generator is not None:
            checkpoint[RNG_STATES]["stage"] = self._generator.get_state()
        state = checkpoint["state_dict"]
        if self.sharding_mesh is not None:
            return  # a sharded checkpoint must hold every tensor it is asked to restore
        for key in [k for k in state if self.left_out_of_checkpoint(k)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # Restored just before the next training step, so that nothing between loading and
        # that step (a new data iterator draws a seed, for one) shifts the random stream.
        self._rng_states_to_restore = checkpoint.get(RNG_STATES)
        if "state_dict" not in checkpoint:
            return  # sharded: the strategy has already loaded every tensor, strictly
        self.configure_model()
        expected = set(self.state_dict())
        optional = {k for k in expected if self.left_out_of_checkpoint(k)}
        check_state_keys(expected, set(checkpoint["state_dict"]), optional, "The checkpoint")

    # -- optimisation --------------------------------------------------------------------------

    def optimized_module(self) -> torch.nn.Module:
        """The module whose trainable parameters the optimiser updates (stages may narrow it)."""
        return self.model

    def configure_optimizers(self):
        optimizer = build_optimizer(self.optimized_module(), self.optimizer_config)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = build_scheduler(optimizer, total, self.optimizer_config)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def on_fit_start(self) -> None:
        if self.feature_cache_config is not None:
            attach_feature_cache(self)

    def on_train_batch_start(self, batch: dict, batch_idx: int) -> None:
        if self._rng_states_to_restore is not None:
            set_rng_states(self._rng_states_to_restore)
            if "stage" in self._rng_states_to_restore:
                self.generator(self.device).set_state(self._rng_states_to_restore["stage"])
            self._rng_states_to_restore = None
        self.set_training_modes()
        self._step_started = time.perf_counter()

    def set_training_modes(self) -> None:
        """Trained parts in train mode, frozen ones in eval mode (no dropout, LoRA's included).

        Lightning puts the whole module in train mode; a frozen part with dropout would then
        give noisy features, different from the same part's at generation or evaluation.
        """
        self.model.eval()
        for part in self.trained_parts:
            getattr(self.model, part).train()

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        elapsed = time.perf_counter() - self._step_started
        tokens = self.batch_tokens(batch)
        self.log("perf/tokens_per_s", tokens / max(elapsed, 1e-9), on_step=True, on_epoch=False)

    def batch_tokens(self, batch) -> int:
        """Tokens a training step processed, for `perf/tokens_per_s`."""
        return int(batch["attention_mask"].sum())

    # -- shared pieces of the steps -------------------------------------------------------------

    def features(self, batch: dict) -> torch.Tensor:
        """The backbone's states h (B, T, d), without autograd where the backbone is frozen.

        Batches served by a feature cache carry them already (as ``hidden``, maybe in bf16).
        """
        if "hidden" in batch:
            return batch["hidden"].to(DTYPES[self.backbone_spec.dtype])
        hidden, _ = self.model.hidden_states(batch["input_ids"], batch["attention_mask"])
        return hidden

    def idm_codes(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """The inverse dynamics model's argmax codes (B, T-1), without autograd."""
        with torch.no_grad():
            return self.model.inverse_dynamics.code_logits(hidden, batch["attention_mask"]).argmax(
                -1
            )

    def policy_codes(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """The policy's argmax codes (B, T-1), without autograd."""
        with torch.no_grad():
            logits, _ = self.model.policy_logits(hidden, batch["attention_mask"])
        return at_steps(logits).argmax(-1)

    def world_model_nll(
        self, hidden: torch.Tensor, codes: torch.Tensor, batch: dict
    ) -> torch.Tensor:
        states, targets = next_token_pairs(hidden, batch["input_ids"])
        logits = self.model.world_model_logits(states, codes, at_steps(batch["attention_mask"]))
        return masked_cross_entropy(logits, targets, target_mask(batch))

    def base_nll(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        """The backbone's own next-token loss on the target tokens (no latent action)."""
        states, targets = next_token_pairs(hidden, batch["input_ids"])
        logits = self.model.base_logits(states, at_steps(batch["attention_mask"]))
        return masked_cross_entropy(logits, targets, target_mask(batch))

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        hidden = self.features(batch)
        codes = self.idm_codes(hidden, batch)
        metrics = {
            "val/wm_nll": self.world_model_nll(hidden, codes, batch),
            "val/base_nll": self.base_nll(hidden, batch),
        }
        metrics.update(self.extra_validation_metrics(hidden, codes, batch))
        self.log_dict(metrics, batch_size=batch["input_ids"].shape[0], sync_dist=True)
        if batch_idx == 0:
            self.log_code_samples("samples/idm_codes", batch["input_ids"][0], codes[0])

    def extra_validation_metrics(
        self, hidden: torch.Tensor, codes: torch.Tensor, batch: dict
    ) -> dict[str, torch.Tensor]:
        """Stage-specific validation metrics on top of the world model's and backbone's NLL."""
        return {}

    # -- TensorBoard extras ----------------------------------------------------------------------

    @property
    def tensorboard(self):
        """The SummaryWriter on rank 0 when logging to TensorBoard, else None."""
        if isinstance(self.logger, TensorBoardLogger) and self.trainer.is_global_zero:
            return self.logger.experiment
        return None

    def log_code_samples(self, tag: str, token_ids: torch.Tensor, codes: torch.Tensor) -> None:
        """Logs one text as `token⟨code⟩` pairs: each token with the code of the step making it."""
        writer = self.tensorboard
        if writer is None:
            return
        count = min(self.sample_tokens, codes.shape[0])
        pieces = [self.tokenizer.decode(token_ids[:1])]
        for step in range(count):
            token = self.tokenizer.decode(token_ids[step + 1 : step + 2])
            pieces.append(f"{token}⟨{int(codes[step])}⟩")
        writer.add_text(tag, "".join(pieces).replace("\n", "  \n"), self.global_step)


def _as(cls, value):
    """`value` as a `cls` dataclass when it is a dict (as checkpoints store it), else as is."""
    return cls(**value) if isinstance(value, dict) else value


def rng_states() -> dict:
    """The states of torch's, Python's and NumPy's generators, as weights-only-loadable types."""
    kind, keys, position, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss),
    }


def set_rng_states(states: dict) -> None:
    kind, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
