"""Code usage over a sliding window of training steps: how many latent actions are alive."""

from __future__ import annotations

import torch
from torchmetrics import Metric


class CodebookUsage(Metric):
    """Counts of each code over the last `window` updates.

    `compute()` returns (perplexity, alive): the exponentiated entropy of the usage distribution
    (K when every code is used equally, 1 when one code takes everything) and the number of codes
    used at least once in the window.

    Args:
        num_codes: K.
        window: number of most recent updates (training steps) that count.
    """

    full_state_update = False

    def __init__(self, num_codes: int, window: int = 100) -> None:
        super().__init__()
        self.num_codes = num_codes
        self.window = window
        self.add_state("counts", torch.zeros(window, num_codes), dist_reduce_fx="sum")
        self.add_state("updates", torch.zeros((), dtype=torch.long), dist_reduce_fx="max")

    def update(self, codes: torch.Tensor) -> None:
        row = int(self.updates) % self.window
        self.counts[row] = torch.bincount(codes.flatten(), minlength=self.num_codes).float()
        self.updates += 1

    def compute(self) -> tuple[torch.Tensor, torch.Tensor]:
        total = self.counts.sum(0)
        probs = total / total.sum().clamp_min(1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum()
        return entropy.exp(), (total > 0).sum()
