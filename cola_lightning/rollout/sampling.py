"""Choosing one item (a code or a token) from logits: greedy, temperature, top-k, top-p."""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from cola_lightning.rollout.rl_maths import logprobs_at_temperature


@dataclass
class Sampler:
    """How to pick from a distribution over codes or tokens.

    Args:
        greedy: take the argmax (temperature and truncation are then ignored for the choice).
        temperature: softmax temperature; the reported log-probability uses it too.
        top_k: keep only the k most likely (None: all).
        top_p: keep the smallest set whose probability reaches p (None: all).
    """

    greedy: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (use greedy: true), got {self.temperature}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    def log_probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Untruncated log-probabilities at this sampler's temperature (..., N)."""
        return logprobs_at_temperature(logits, self.temperature)

    def truncate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits / temperature with everything outside top-k and top-p set to -inf."""
        logits = logits.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        if self.top_p is not None and self.top_p < 1:
            sorted_logits, order = logits.sort(dim=-1, descending=True)
            cumulative = sorted_logits.softmax(-1).cumsum(-1)
            # drop an item when the items before it already reach top_p (the first always stays)
            drop = (cumulative - sorted_logits.softmax(-1)) >= self.top_p
            logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
        return logits

    def choose(
        self,
        logits: torch.Tensor,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """One index per row of logits (B, N) -> (B,).

        `generator` may be one generator per row: each row's draws then depend on its own
        stream only, not on which other rows share the batch (or the rank).
        """
        if self.greedy:
            return logits.argmax(-1)
        probs = self.truncate(logits).softmax(-1)
        if isinstance(generator, list):
            draws = zip(probs, generator, strict=True)
            return torch.cat([torch.multinomial(p, 1, generator=g) for p, g in draws])
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def prompt_streams(prompts: list[str], device, *key) -> list[torch.Generator]:
    """One random stream per prompt, seeded by (`key`, copy of the prompt, prompt).

    A prompt's samples then depend on the prompt (and which copy of it this is), not on which
    rank or batch it lands in: a sharded run samples exactly what one process samples.
    """
    copies: dict[str, int] = {}
    streams = []
    for prompt in prompts:
        copies[prompt] = copies.get(prompt, -1) + 1
        name = "/".join(map(str, (*key, copies[prompt], prompt)))
        streams.append(torch.Generator(device).manual_seed(zlib.crc32(name.encode())))
    return streams
