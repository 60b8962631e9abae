"""Masked token losses shared by the stages."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cola_lightning.models.steps import at_next, at_steps
from cola_lightning.rollout.rl_maths import masked_mean


def target_mask(batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Which next-token targets count (B, T-1): step t predicts token t+1.

    A target counts when both positions are real tokens and, if the batch carries a `loss_mask`
    (response-only training), when the target token is marked.
    """
    mask = batch["attention_mask"].bool()
    valid = at_steps(mask) & at_next(mask)
    if "loss_mask" in batch:
        valid = valid & at_next(batch["loss_mask"]).bool()
    return valid


def masked_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Mean cross-entropy of logits (B, T, C) against targets (B, T) where `mask` is true."""
    losses = F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), reduction="none"
    ).view_as(targets)
    return masked_mean(losses, mask)


def masked_accuracy(
    logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """Fraction of masked positions where argmax(logits) equals the target."""
    return masked_mean((logits.argmax(-1) == targets).float(), mask)
