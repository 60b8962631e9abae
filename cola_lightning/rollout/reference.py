"""Generation without any cache: every step recomputes every state from the full sequence.

The engine's reference: tests check that cached generation equals it, and the decode benchmark
measures the engine's speed-up over it.
"""

from __future__ import annotations

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.rl_maths import left_pad, position_ids
from cola_lightning.rollout.sampling import Sampler


@torch.inference_mode()
def generate_without_cache(
    model: CoLAModel,
    prompt_ids: list[list[int]],
    steps: int,
    code_sampler: Sampler,
    token_sampler: Sampler,
    pad_id: int,
    generator: torch.Generator | list[torch.Generator] | None = None,
    latent: bool = True,
) -> dict[str, torch.Tensor]:
    """Generation of exactly `steps` tokens per prompt (no stopping), latent or token mode.

    Returns (B, steps) tensors: ``tokens``, ``token_logprobs`` and, in latent mode, ``codes``
    and ``code_logprobs``.
    """
    device = next(model.parameters()).device
    sequences = [list(p) for p in prompt_ids]
    chosen = {"tokens": [], "token_logprobs": []}
    if latent:
        chosen.update(codes=[], code_logprobs=[])
    for _ in range(steps):
        ids, mask = (t.to(device) for t in left_pad(sequences, pad_id))
        positions = position_ids(mask)
        hidden, _ = model.hidden_states(ids, mask, positions)
        if latent:
            policy, _ = model.policy_logits(hidden, mask, positions)
            code = code_sampler.choose(policy[:, -1], generator)
            logits = model.world_model_logits(hidden[:, -1:], code[:, None])[:, -1]
            chosen["codes"].append(code)
            chosen["code_logprobs"].append(
                code_sampler.log_probs(policy[:, -1]).gather(-1, code[:, None])[:, 0]
            )
        else:
            logits = model.base_logits(hidden[:, -1:])[:, -1]
        token = token_sampler.choose(logits, generator)
        chosen["tokens"].append(token)
        chosen["token_logprobs"].append(
            token_sampler.log_probs(logits).gather(-1, token[:, None])[:, 0]
        )
        for sequence, new in zip(sequences, token.tolist(), strict=True):
            sequence.append(new)
    return {name: torch.stack(values, dim=1) for name, values in chosen.items()}
