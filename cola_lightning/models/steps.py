"""The one rule that aligns every next-token quantity: step t predicts token t + 1.

A sequence of T positions has T - 1 steps. The state, policy logits and code of step t live at
position t; the token it makes (and the inverse dynamics model's output that labels it, which has
read x_{t+1}) lives at position t + 1.
"""

from __future__ import annotations

import torch


def at_steps(values: torch.Tensor) -> torch.Tensor:
    """Per-position values (B, T, ...) at the positions that make a next token: (B, T-1, ...)."""
    return values[:, :-1]


def at_next(values: torch.Tensor) -> torch.Tensor:
    """Per-position values (B, T, ...) at the positions each step makes: (B, T-1, ...)."""
    return values[:, 1:]


def next_token_pairs(
    states: torch.Tensor, token_ids: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(states of steps 0..T-2, the tokens they predict): the inputs of a next-token loss."""
    return at_steps(states), at_next(token_ids)
