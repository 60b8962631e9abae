"""The stage-checkpoint format: what a stage writes, and loading it into a CoLA model, loudly.

A stage checkpoint holds every latent part (inverse dynamics, codebook, world model, policy). It
holds the backbone only when the backbone cannot be reloaded from its source (it was trained, or
it was random-init from a config). Any missing, unexpected or mis-shaped tensor is an error: a
half-loaded model that trains on silently random weights is the worst failure there is.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
from pathlib import Path

import torch
from torch import nn
from torch.distributed.tensor import DTensor, distribute_tensor

from cola_lightning.models.adapters import is_adapter_key

STATE_PREFIX = "model."  # the attribute under which every stage holds its CoLAModel
BACKBONE_PREFIX = "backbone."
COLA_WEIGHTS = "cola.safetensors"  # the latent parts in an export directory (export.py)
COLA_CONFIG = "cola_config.json"  # the latent parts' sizes in an export directory
STAGE_KEY = "cola_stage"  # the class path of the stage that wrote a checkpoint
# Written beside the shards of a distributed checkpoint by `ModelParallelStrategy`.
SHARDED_METADATA = "meta.pt"


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / COLA_WEIGHTS).is_file()


def read_export_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The latent parts' tensors of an export directory."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / COLA_WEIGHTS))


def is_sharded_checkpoint(path: str | Path) -> bool:
    """Whether `path` is a distributed (per-rank shards) checkpoint directory."""
    return (Path(path) / SHARDED_METADATA).is_file()


def read_checkpoint(path: str | Path) -> dict:
    """Reads a Lightning checkpoint file or sharded directory, or says what is wrong with the path.

    A sharded checkpoint comes back consolidated (full tensors) without its optimiser states.
    """
    path = Path(path).expanduser()
    if is_sharded_checkpoint(path):
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        checkpoint = _load_distributed_checkpoint(path)
        return {k: v for k, v in checkpoint.items() if not k.startswith("optimizer_")}
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint not found: {path}. `init_from` must point at a .ckpt file (or sharded "
            "checkpoint directory) written by an earlier stage (its ModelCheckpoint dirpath)."
        )
    # Our own checkpoints carry hyper-parameter dataclasses, so they are not weights-only.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (it has no 'state_dict').")
    return checkpoint


def stage_class_path(stage: object) -> str:
    """What `STAGE_KEY` holds for a stage: its class's import path."""
    return f"{type(stage).__module__}.{type(stage).__qualname__}"


def load_stage(checkpoint_path: str | Path):
    """The stage module a checkpoint was written by, with its weights."""
    checkpoint = read_checkpoint(checkpoint_path)
    # LightningCLI also records the class path among the hyper-parameters.
    class_path = checkpoint.get(STAGE_KEY) or checkpoint.get("hyper_parameters", {}).get(
        "_class_path"
    )
    if class_path is None:
        raise ValueError(f"{checkpoint_path} was not written by a cola_lightning stage.")
    module_name, class_name = class_path.rsplit(".", 1)
    stage = getattr(importlib.import_module(module_name), class_name)
    # Our own checkpoints carry hyper-parameter dataclasses, so they are not weights-only.
    return stage.load_from_checkpoint(checkpoint_path, map_location="cpu", weights_only=False)


def stage_settings(path: str | Path) -> tuple[dict, dict]:
    """The backbone spec and CoLA sizes (as dicts) a stage checkpoint or export was written with.

    Lets a consumer (evaluation, the atlas) load a checkpoint without restating its backbone:
    a stage-2 checkpoint's LoRA settings, for one, must match the adapters it holds.
    """
    path = Path(path).expanduser()
    if is_export_dir(path):
        return {"source": str(path)}, json.loads((path / COLA_CONFIG).read_text())
    if is_sharded_checkpoint(path):
        raise ValueError(
            f"{path} is sharded: consolidate it first (python -m cola_lightning.export)."
        )
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}.")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    settings = checkpoint.get("hyper_parameters", {})
    if "backbone" not in settings:
        raise ValueError(
            f"{path} records no backbone: it was not written by a cola_lightning stage."
        )
    return (
        dataclass_dict(settings["backbone"]),
        dataclass_dict(settings.get("cola") or {}),
    )


def dataclass_dict(value) -> dict:
    """A hyper-parameter as a plain dict (checkpoints hold dicts or dataclasses)."""
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else dict(value)


def consolidate_checkpoint(sharded: str | Path, out: str | Path) -> Path:
    """Writes a sharded checkpoint as one ordinary .ckpt file (weights and metadata)."""
    out = Path(out)
    if out.exists():
        raise FileExistsError(
            f"{out} exists; choose a new file name for the consolidated checkpoint."
        )
    if not is_sharded_checkpoint(sharded):
        raise ValueError(
            f"{sharded} is not a sharded checkpoint directory (no {SHARDED_METADATA})."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(read_checkpoint(sharded), out)
    return out


def copy_full_tensor(target: torch.Tensor, full: torch.Tensor) -> None:
    """Copies a full tensor into a tensor, or into this rank's shard of a DTensor."""
    with torch.no_grad():
        if isinstance(target, DTensor):
            # Every rank holds `full`, so each slices its own shard: no communication needed.
            shard = distribute_tensor(
                full.to(target.dtype), target.device_mesh, target.placements, src_data_rank=None
            )
            target.to_local().copy_(shard.to_local())
        else:
            target.copy_(full)


def load_full_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Loads full tensors by name into a plain or sharded model (keys are checked by the caller)."""
    targets = model.state_dict(keep_vars=True)
    for name, tensor in state.items():
        if targets[name].shape != tensor.shape:
            raise RuntimeError(
                f"size mismatch for {name}: {tuple(tensor.shape)} in the checkpoint, "
                f"{tuple(targets[name].shape)} in the model. Check that the model config "
                "(backbone, num_codes, layer counts) matches the stage that wrote it."
            )
        copy_full_tensor(targets[name], tensor)


def model_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The CoLAModel tensors of a stage checkpoint, with the stage's attribute prefix removed."""
    return {
        key[len(STATE_PREFIX) :]: value
        for key, value in checkpoint["state_dict"].items()
        if key.startswith(STATE_PREFIX)
    }


def check_state_keys(expected: set[str], found: set[str], optional: set[str], source: str) -> None:
    """Raises if `found` lacks a key of `expected - optional` or has a key outside `expected`."""
    missing = sorted(expected - optional - found)
    unexpected = sorted(found - expected)
    if missing or unexpected:
        raise KeyError(
            f"{source} does not match the model: {len(missing)} missing tensors "
            f"{preview_keys(missing)}, {len(unexpected)} unexpected tensors "
            f"{preview_keys(unexpected)}. "
            "Check that the model config (backbone, num_codes, layer counts) matches the stage "
            "that wrote the checkpoint."
        )


def load_stage_checkpoint(model: nn.Module, path: str | Path) -> dict[str, torch.Tensor]:
    """Loads a stage checkpoint (or an export directory) into a plain CoLAModel.

    The model must not have LoRA adapters or k-bit layers yet: base weights are loaded under
    their plain names (a LoRA layer's ``base_layer`` is dropped from the name), and the adapter
    tensors are returned for the caller to load once the adapters exist. Backbone tensors are
    optional (absent when the backbone was frozen and reloadable from its source, or in an
    export, whose backbone is the `source` itself); every other tensor must be present and match.
    """
    exported = is_export_dir(path)
    state = read_export_state(path) if exported else model_state(read_checkpoint(path))
    adapters = {k: v for k, v in state.items() if is_adapter_key(k)}
    base = {k.replace(".base_layer", ""): v for k, v in state.items() if not is_adapter_key(k)}
    expected = set(model.state_dict())
    backbone_keys = {key for key in expected if key.startswith(BACKBONE_PREFIX)}
    check_state_keys(expected, set(base), optional=backbone_keys, source=str(path))
    load_full_state(model, base)
    return adapters


def load_adapters(model: nn.Module, adapters: dict[str, torch.Tensor], source: str) -> None:
    """Loads LoRA adapter tensors into a model that has the same adapters."""
    expected = {k for k in model.state_dict() if is_adapter_key(k)}
    if not expected:
        raise KeyError(
            f"{source} holds LoRA adapters but this backbone has none: give the backbone the same "
            "`lora` settings as the stage that trained them (or export, which merges them)."
        )
    check_state_keys(expected, set(adapters), set(), source)
    load_full_state(model, adapters)


def preview_keys(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
