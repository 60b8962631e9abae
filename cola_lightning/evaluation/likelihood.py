"""Log-likelihoods of continuations given contexts, by latent actions or by the plain backbone.

Token mode scores with the backbone's own next-token distribution. Latent mode scores with the
world model under the policy's greedy code at every step: the distribution the model decodes from
when its codes come from the policy (DESIGN.md section 1, "Generation").
"""

from __future__ import annotations

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.models.steps import at_next, at_steps
from cola_lightning.rollout.engine import MODES


def step_logits(model: CoLAModel, ids: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Next-token logits (B, T-1, V) of every step of right-padded sequences."""
    if mode not in MODES:
        raise ValueError(f"Unknown scoring mode {mode!r}; use one of {MODES}.")
    hidden, _ = model.hidden_states(ids, mask)
    if mode == "token":
        return model.base_logits(at_steps(hidden))
    codes = at_steps(model.policy_logits(hidden, mask)[0]).argmax(-1)
    return model.world_model_logits(at_steps(hidden), codes)


def continuation_logprobs(
    model: CoLAModel,
    tokenizer,
    pairs: list[tuple[str, str]],
    mode: str = "latent",
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether it is the greedy continuation) per pair.

    Context and continuation are tokenised apart, so the continuation's tokens are exactly its
    own; an empty context is replaced by the EOS token, so the first token has a state to read.
    """
    rows = [_encode(tokenizer, context, continuation) for context, continuation in pairs]
    return token_logprobs(model, rows, tokenizer.pad_token_id, mode, batch_size)


@torch.inference_mode()
def token_logprobs(
    model: CoLAModel,
    rows: list[tuple[list[int], list[int]]],
    pad_id: int,
    mode: str = "latent",
    batch_size: int = 8,
) -> list[tuple[float, bool]]:
    """`continuation_logprobs` on token ids: (context, continuation) rows, contexts non-empty."""
    results = []
    device = next(model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(c) + len(t) for c, t in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, (context, continuation) in enumerate(chunk):
            sequence = context + continuation
            ids[row, : len(sequence)] = torch.tensor(sequence)
            mask[row, : len(sequence)] = 1
        ids, mask = ids.to(device), mask.to(device)
        logprobs = torch.log_softmax(step_logits(model, ids, mask, mode).float(), dim=-1)
        targets = at_next(ids)
        chosen = logprobs.gather(-1, targets[..., None])[..., 0]
        greedy = logprobs.argmax(-1) == targets
        for row, (context, continuation) in enumerate(chunk):
            # step t predicts token t + 1: the continuation's steps start at the context's last
            steps = slice(len(context) - 1, len(context) + len(continuation) - 1)
            results.append((float(chosen[row, steps].sum()), bool(greedy[row, steps].all())))
    return results


def _encode(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    context_ids = tokenizer(context, add_special_tokens=False).input_ids
    continuation_ids = tokenizer(continuation, add_special_tokens=False).input_ids
    if not continuation_ids:
        raise ValueError(f"The continuation {continuation!r} has no tokens to score.")
    return context_ids or [tokenizer.eos_token_id], continuation_ids
