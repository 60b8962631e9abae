"""The stage side of the feature cache: what identifies a frozen backbone's states; writing them.

A stage given `feature_cache` computes its backbone's states for the data module's splits once
(or finds them already written, e.g. by stage 1 for stage 1b on the same corpus) and hands the
cache to the data module, whose batches then carry the states under ``hidden``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from functools import partial

import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.distributed.tensor import DTensor

from cola_lightning.data.feature_cache import FeatureCacheSupport, load_or_build, scan_rows
from cola_lightning.data.feature_cache_files import CacheJob, RankGroup
from cola_lightning.data.tokenizer import datamodule_tokenizer

SAMPLED_VALUES = 4096  # per tensor: enough that any fine-tuning or other weights change the hash
UNSTABLE_CONFIG_KEYS = ("_name_or_path", "transformers_version")  # say nothing about the states


def weights_fingerprint(module: nn.Module) -> str:
    """sha256 of every parameter's and buffer's name, shape, dtype and evenly strided values.

    Sharded (DTensor) weights are gathered one tensor at a time, a collective every rank makes.
    """
    digest = hashlib.sha256()
    for name, tensor in itertools.chain(module.named_parameters(), module.named_buffers()):
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        flat = full.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // SAMPLED_VALUES)][:SAMPLED_VALUES]
        digest.update(f"{name}:{tuple(full.shape)}:{full.dtype}".encode())
        digest.update(sample.cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def backbone_identity(stage) -> dict:
    """The backbone's name and a fingerprint of its config, weights and compute precision."""
    spec, backbone = stage.backbone_spec, stage.model.backbone
    config = {k: v for k, v in backbone.config.to_dict().items() if k not in UNSTABLE_CONFIG_KEYS}
    mixed = stage.sharding_config.mixed_precision if stage._device_mesh is not None else None
    precision = {
        "dtype": spec.dtype,
        "quantization": spec.quantization,
        "trainer": str(stage.trainer.precision),
        "sharded_mixed_precision": mixed,
    }
    digest = hashlib.sha256(json.dumps([config, precision], sort_keys=True, default=str).encode())
    digest.update(weights_fingerprint(backbone).encode())
    source = spec.source or f"inline {spec.config['model_type']} config"
    details = ", ".join(str(v) for v in precision.values() if v is not None)
    lora = ", LoRA" if spec.lora is not None else ""
    return {"name": f"{source} ({details}{lora})", "fingerprint": digest.hexdigest()}


def tokenizer_identity(name: str, tokenizer) -> dict:
    """The tokenizer's name and a fingerprint of its full definition (vocabulary, merges, rules)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        definition = backend.to_str()
    else:
        definition = json.dumps(sorted(tokenizer.get_vocab().items()))
    specials = json.dumps(tokenizer.special_tokens_map, sort_keys=True, default=str)
    fingerprint = hashlib.sha256((definition + specials).encode()).hexdigest()
    return {"name": name, "fingerprint": fingerprint}


def compute_states(stage, batch: dict) -> torch.Tensor:
    """The frozen backbone's states for a batch, as a training step would compute them."""
    with torch.no_grad(), stage.trainer.precision_plugin.forward_context():
        hidden, _ = stage.model.hidden_states(
            batch["input_ids"].to(stage.device), batch["attention_mask"].to(stage.device)
        )
    return hidden


def attach_feature_cache(stage) -> bool:
    """Opens (or first writes) the stage's feature cache and gives it to the data module.

    Returns:
        Whether the cache was written in this call (False: a matching one was read).
    """
    config, trainer = stage.feature_cache_config, stage.trainer
    datamodule = trainer.datamodule
    if not isinstance(datamodule, FeatureCacheSupport):
        raise TypeError(
            "`feature_cache` needs a data module that can serve cached states "
            "(TextCorpusDataModule or PromptResponseDataModule), got "
            f"{type(datamodule).__name__}. Drop `feature_cache` or use one of those."
        )
    splits = datamodule.cache_splits()
    scanned = {name: scan_rows(rows) for name, rows in splits.items()}
    tokenizer_name = datamodule.tokenizer_name or stage.backbone_spec.tokenizer_name
    tokenizer = datamodule_tokenizer(datamodule, datamodule.tokenizer_name)
    identity = {
        "backbone": backbone_identity(stage),
        "tokenizer": tokenizer_identity(tokenizer_name, tokenizer),
        "seq_len": datamodule.sequence_length,
        "corpus": {name: {"sha": sha, "rows": len(n)} for name, (sha, n) in scanned.items()},
        "dtype": config.dtype,
    }
    job = CacheJob(
        splits=splits,
        lengths={name: lengths for name, (_, lengths) in scanned.items()},
        collate=datamodule.collate_rows,
        compute=partial(compute_states, stage),
        hidden_size=stage.model.backbone.hidden_size,
        batch_size=config.batch_size or datamodule.batch_size,
    )
    group = RankGroup(trainer.global_rank, trainer.world_size, trainer.strategy.barrier)
    stage.set_training_modes()  # the frozen backbone in eval mode, as in training steps
    cache, written = load_or_build(config, identity, job, group)
    datamodule.feature_cache = cache
    rank_zero_info(f"Feature cache: {'wrote' if written else 'reading'} {cache.directory}")
    return written
