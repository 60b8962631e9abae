"""FSDP2 for CoLA: build on the meta device, shard block by block, then fill each rank's shards.

Nothing here holds a full copy of the model: the CoLA model is built on the meta device (no
memory), every decoder block of the backbone, inverse dynamics model and policy, every merge
layer, and each remaining part is made its own `fully_shard` unit, and only then are the weights
materialised, one rank-local shard at a time. The backbone's weights stream tensor by tensor from
its safetensors files; latent parts start from `init_latent_parameters`, which draws every
parameter from its own seeded generator, so a sharded model and a plain one start identical.

Frozen parts (the backbone) and trainable parts (the latent parts) are separate units, so a unit's
parameters are either all trained or all frozen.
"""

from __future__ import annotations

import copy
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from cola_lightning.checkpoints.format import copy_full_tensor
from cola_lightning.models.backbone import (
    DTYPES,
    Backbone,
    BackboneSpec,
    load_causal_lm,
    resolve_source,
)
from cola_lightning.models.cola import LATENT_PARTS, CoLAConfig, CoLAModel

MIXED_PRECISION = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class ShardingConfig:
    """How a stage shards its model under Lightning's `ModelParallelStrategy` (FSDP2).

    Args:
        mixed_precision: ``bf16`` (or ``fp16``) to gather parameters and compute in that dtype
            while gradients are reduced and the optimiser steps in float32; None keeps float32.
        activation_checkpointing: recompute decoder-block activations in the backward pass
            instead of storing them (the backbone's when it is trained, the IDM's and policy's).
        reshard_after_forward: free gathered parameters after each unit's forward (ZeRO-3);
            False keeps them until the backward pass (ZeRO-2: more memory, less communication).
    """

    mixed_precision: str | None = None
    activation_checkpointing: bool = False
    reshard_after_forward: bool = True

    def __post_init__(self) -> None:
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"Unknown sharding.mixed_precision {self.mixed_precision!r}; use one of "
                f"{sorted(MIXED_PRECISION)} or null."
            )


def decoder_blocks(model: CoLAModel) -> list[nn.Module]:
    """Every block-sized piece of the model: the units that hold almost all the weights."""
    return [
        *model.backbone.decoder.layers,
        *model.inverse_dynamics.blocks.layers,
        *model.policy.blocks.layers,
        *model.world_model.layers,
    ]


def shard_cola_model(model: CoLAModel, mesh, config: ShardingConfig) -> CoLAModel:
    """`fully_shard` per block, then per part (frozen and trained apart), then at the root."""
    from torch.distributed.fsdp import fully_shard

    options = shard_options(mesh, config)
    for block in decoder_blocks(model):
        fully_shard(block, **options)
    # What is left of each part (embeddings, norms, heads, the codebook) is one unit per part.
    for part in ("backbone", *LATENT_PARTS):
        fully_shard(getattr(model, part), **options)
    fully_shard(model, **options)
    if config.activation_checkpointing:
        enable_activation_checkpointing(model)
    return model


def frozen_copy(source: nn.Module, meta_copy, mesh, config: ShardingConfig) -> nn.Module:
    """A frozen, eval-mode copy of `source` (the KL reference), sharded like it when it is.

    FSDP2 modules cannot be deep-copied, so a sharded one is rebuilt: `meta_copy()` gives the
    same architecture on the meta device, every submodule that is an FSDP unit in `source`
    becomes one in the copy (innermost first), and each rank copies its own shards.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(source, FSDPModule):
        return copy.deepcopy(source).requires_grad_(False).eval()
    from torch.distributed.fsdp import fully_shard

    options = shard_options(mesh, config)
    target = meta_copy()
    units = dict(target.named_modules())
    for name, module in reversed(list(source.named_modules())):
        if isinstance(module, FSDPModule):
            fully_shard(units[name], **options)
    target.to_empty(device=mesh.device_type)
    reset_rotary_buffers(target)
    targets = target.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, tensor in source.state_dict(keep_vars=True).items():
            local_shard(targets[name]).copy_(local_shard(tensor))
    return target.requires_grad_(False).eval()


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a DTensor, or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def fsdp_mesh(mesh: DeviceMesh) -> DeviceMesh:
    """The one-dimensional mesh FSDP2 shards over: every rank of the strategy's mesh.

    `ModelParallelStrategy`'s mesh is (data_parallel, tensor_parallel), and no tensor-parallel
    plan is applied here, so every rank holds a shard. Given the 2-D mesh itself, `fully_shard`
    would replicate over the first dimension and shard over the second only (HSDP): the paper
    configs' 32 x 1 layout would keep the whole model on every GPU.
    """
    if mesh.ndim == 1:
        return mesh
    return init_device_mesh(mesh.device_type, (mesh.size(),), mesh_dim_names=("fsdp",))


def shard_options(mesh, config: ShardingConfig) -> dict:
    """`fully_shard`'s keyword arguments for `config`."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    compute = MIXED_PRECISION.get(config.mixed_precision)
    return {
        "mesh": mesh,
        "mp_policy": MixedPrecisionPolicy(param_dtype=compute, reduce_dtype=torch.float32),
        "reshard_after_forward": config.reshard_after_forward,
    }


def enable_activation_checkpointing(model: CoLAModel) -> None:
    """Recomputes the Hugging Face decoder blocks' activations in backward (non-reentrant)."""
    kwargs = {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    for stack in (model.backbone.lm, model.inverse_dynamics.blocks, model.policy.blocks):
        stack.gradient_checkpointing_enable(**kwargs)


def build_sharded_cola_model(
    spec: BackboneSpec, cola: CoLAConfig, mesh, config: ShardingConfig, seed: int
) -> CoLAModel:
    """A CoLA model whose every parameter is a DTensor shard, never materialised in full.

    The backbone comes from `spec` (its weights streamed from safetensors where the source is a
    directory of them, else loaded whole and copied in: fine for small models only).
    """
    if spec.quantization is not None or spec.lora is not None:
        raise ValueError(
            "Sharding (FSDP2) is for full-precision backbones: drop `quantization` and `lora` "
            "from the backbone, or train on one device without a sharded strategy."
        )
    with torch.device("meta"):
        model = CoLAModel(Backbone(meta_causal_lm(spec)), cola)
    shard_cola_model(model, mesh, config)
    model.to_empty(device=mesh.device_type)
    reset_rotary_buffers(model)
    load_backbone_weights(model.backbone, spec)
    init_latent_parameters(model, seed)
    return model


def meta_causal_lm(spec: BackboneSpec) -> nn.Module:
    dtype = DTYPES[spec.dtype]
    if spec.config is not None:
        config = AutoConfig.for_model(**spec.config)
    else:
        where, gguf_file = resolve_source(spec.source)
        config = AutoConfig.from_pretrained(where, gguf_file=gguf_file)
    return AutoModelForCausalLM.from_config(config, dtype=dtype)


def reset_rotary_buffers(model: nn.Module) -> None:
    """Recomputes the rotary embeddings' frequency buffers, which `to_empty` leaves as garbage."""
    for module in model.modules():
        if hasattr(module, "inv_freq") and hasattr(module, "config"):
            fresh = type(module)(module.config)
            for name, buffer in fresh.named_buffers(recurse=False):
                getattr(module, name).copy_(buffer)


def init_latent_parameters(model: CoLAModel, seed: int) -> None:
    """Initialises the latent parts, each parameter from a generator seeded by (seed, its name).

    Linear weights are normal with the backbone's initializer range, norm weights one, biases
    zero; the inject form's layer copies then take the backbone's weights (so the backbone must
    be loaded first). Being independent of construction order and of sharding, a model built on
    the meta device and sharded over N ranks starts exactly where a plain single-process one does.
    """
    std = getattr(model.backbone.config, "initializer_range", 0.02)
    for part in LATENT_PARTS:
        for name, parameter in getattr(model, part).named_parameters():
            full_name = f"{part}.{name}"
            generator = torch.Generator().manual_seed(
                seed * 1_000_003 + zlib.crc32(full_name.encode())
            )
            if name.endswith("bias"):
                full = torch.zeros(parameter.shape)
            elif parameter.dim() == 1:
                full = torch.ones(parameter.shape)
            else:
                full = torch.randn(parameter.shape, generator=generator) * std
            copy_full_tensor(parameter, full)
    if model.inject_layer is not None:
        # The inject form's layers start as copies of the backbone's layers L..end.
        model.world_model.copy_backbone_layers(model.backbone)


def load_backbone_weights(backbone: Backbone, spec: BackboneSpec) -> None:
    """Fills the backbone's (sharded) parameters from `spec`, one tensor at a time where it can."""
    files = _safetensors_files(spec)
    parameters = backbone.lm.state_dict(keep_vars=True)
    if not files:
        # A GGUF file, a hub id or an inline config: load whole, then copy shard by shard.
        for name, tensor in load_causal_lm(spec).state_dict().items():
            copy_full_tensor(parameters[name], tensor)
        return
    loaded = set()
    for path in files:
        with safe_open(str(path), framework="pt") as tensors:
            names = [name for name in tensors.keys() if name in parameters]  # noqa: SIM118
        for name in names:
            # One opening per tensor: the file's pages are unmapped again right after, so
            # they never add up to a full copy in this process's memory.
            with safe_open(str(path), framework="pt") as tensors:
                copy_full_tensor(parameters[name], tensors.get_tensor(name))
            loaded.add(name)
    tied = {"lm_head.weight"} if backbone.config.tie_word_embeddings else set()
    missing = sorted(set(parameters) - loaded - tied)
    if missing:
        raise KeyError(
            f"The safetensors files of {spec.source} lack {len(missing)} backbone tensors "
            f"(first: {missing[:3]}). Is this the directory of the model its config.json names?"
        )


def _safetensors_files(spec: BackboneSpec) -> list[Path]:
    if spec.source is None:
        return []
    where, gguf_file = resolve_source(spec.source)
    if gguf_file is not None or not Path(where).is_dir():
        return []
    return sorted(Path(where).glob("*.safetensors"))
