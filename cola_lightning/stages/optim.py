"""Optimiser and learning-rate schedule shared by every stage, configurable from YAML.

Defaults are the published stage-1/1b ones (DESIGN.md section 2): AdamW lr 1e-4, 100 warm-up steps,
cosine to 4e-5, weight decay 0.01 except on the codebook. Gradient clipping (1.0) is the Trainer's
`gradient_clip_val`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

OPTIMIZERS = ("adamw", "adamw8bit")


@dataclass
class OptimizerConfig:
    """AdamW with linear warm-up and cosine decay.

    Args:
        name: ``adamw`` (torch) or ``adamw8bit`` (bitsandbytes, must be installed).
        lr: peak learning rate.
        min_lr: the cosine's floor, reached at the last step.
        warmup_steps: linear warm-up from 0 to `lr`.
        weight_decay: decoupled weight decay for every parameter outside `no_decay`.
        no_decay: name fragments of parameters without weight decay (the codebook, as published).
        betas: Adam betas.
        eps: Adam epsilon.
        fused: torch's fused AdamW kernel (CPU and CUDA): the same update, one kernel per step
            instead of a Python loop over tensors (about 3x faster on CPU; ``adamw`` only).
    """

    name: str = "adamw"
    lr: float = 1e-4
    min_lr: float = 4e-5
    warmup_steps: int = 100
    weight_decay: float = 0.01
    no_decay: tuple[str, ...] = ("codebook.",)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    fused: bool = False

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"Unknown optimizer {self.name!r}; use one of {OPTIMIZERS}.")
        if not 0 <= self.min_lr <= self.lr:
            raise ValueError(f"Need 0 <= min_lr <= lr, got min_lr={self.min_lr}, lr={self.lr}.")
        if self.fused and self.name != "adamw":
            raise ValueError("optimizer.fused is torch's AdamW kernel: use it with name 'adamw'.")


def build_optimizer(model: nn.Module, config: OptimizerConfig) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters of `model`, with the codebook exempt from decay."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            exempt = any(fragment in name for fragment in config.no_decay)
            (no_decay if exempt else decay).append(parameter)
    if not decay and not no_decay:
        raise ValueError("No trainable parameters: check which parts this stage trains.")
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"lr": config.lr, "betas": config.betas, "eps": config.eps}
    if config.name == "adamw8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as error:
            raise ImportError(
                "optimizer.name 'adamw8bit' needs bitsandbytes: pip install bitsandbytes==0.50.2"
            ) from error
        return bnb.optim.AdamW8bit(groups, **kwargs)
    return torch.optim.AdamW(groups, **kwargs, fused=config.fused or None)


def warmup_cosine(step: int, total_steps: int, config: OptimizerConfig) -> float:
    """The learning-rate multiplier at `step`: linear warm-up, then cosine from lr to min_lr."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    span = max(total_steps - config.warmup_steps, 1)
    progress = min((step - config.warmup_steps) / span, 1.0)
    floor = config.min_lr / config.lr if config.lr > 0 else 0.0
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, config: OptimizerConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total_steps, config)
    )
