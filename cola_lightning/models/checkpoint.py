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

STATE_PREFIX = "model."  # the attribute under which every stage holds its CoLAModel
BACKBONE_PREFIX = "backbone."


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


def load_stage_checkpoint(model: nn.Module, path: str | Path) -> list[str]:
    """Loads a stage checkpoint into `model` (a CoLAModel) and returns the keys it loaded.

    Backbone tensors are optional (absent when the backbone was frozen and reloadable from its
    source); every other tensor must be present and match in shape.
    """
    state = model_state(read_checkpoint(path))
    expected = set(model.state_dict())
    backbone_keys = {key for key in expected if key.startswith(BACKBONE_PREFIX)}
    check_state_keys(expected, set(state), optional=backbone_keys, source=str(path))
    model.load_state_dict(state, strict=False)
    return sorted(state)


def _preview(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return f"[{shown}{', ...' if len(keys) > limit else ''}]"
