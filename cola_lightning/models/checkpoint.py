"""Hand-off between stages: load a previous stage's checkpoint into a CoLA model, loudly.

A stage checkpoint holds every latent part (inverse dynamics, codebook, world model, policy). It
holds the backbone only when the backbone cannot be reloaded from its source (it was trained, or
it was random-init from a config). Any missing, unexpected or mis-shaped tensor is an error: a
half-loaded model that trains on silently random weights is the worst failure there is.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cola_lightning.models.adapters import is_adapter_key

STATE_PREFIX = "model."  # the attribute under which every stage holds its CoLAModel
BACKBONE_PREFIX = "backbone."
COLA_WEIGHTS = "cola.safetensors"  # the latent parts in an export directory (models/export.py)


def is_export_dir(path: str | Path) -> bool:
    return (Path(path) / COLA_WEIGHTS).is_file()


def read_export_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The latent parts' tensors of an export directory."""
    from safetensors.torch import load_file

    return load_file(str(Path(path) / COLA_WEIGHTS))


def read_checkpoint(path: str | Path) -> dict:
    """Reads a Lightning checkpoint file, or says what is wrong with the path."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Checkpoint not found: {path}. `init_from` must point at a .ckpt file written by an "
            "earlier stage (its ModelCheckpoint dirpath in that stage's config)."
        )
    # Our own checkpoints carry hyper-parameter dataclasses, so they are not weights-only.
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" not in checkpoint:
        raise ValueError(f"{path} is not a Lightning checkpoint (it has no 'state_dict').")
    return checkpoint


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
            f"{_preview(missing)}, {len(unexpected)} unexpected tensors {_preview(unexpected)}. "
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
    model.load_state_dict(base, strict=False)
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
    model.load_state_dict(adapters, strict=False)


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
