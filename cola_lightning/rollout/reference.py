"""Generation without any cache: every step recomputes every state from the full sequence.

The engine's reference: tests check that cached generation equals it, and the decode benchmark
measures the engine's speed-up over it.
"""

from __future__ import annotations

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.engine import prompt_codes
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
    generator: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Latent-action generation of exactly `steps` tokens per prompt (no stopping).

    Returns (B, steps) tensors: ``tokens``, ``codes``, ``token_logprobs``, ``code_logprobs``.
    """
    device = next(model.parameters()).device
    sequences = [list(p) for p in prompt_ids]
    ids, mask = (t.to(device) for t in left_pad(sequences, pad_id))
    hidden, _ = model.hidden_states(ids, mask, position_ids(mask))
    # Codes of the steps inside each prompt (the inject form's world model reads them), unpadded.
    history = [
        row[ids.shape[1] - len(p) :]
        for row, p in zip(prompt_codes(model, hidden, mask).tolist(), sequences, strict=True)
    ]
    chosen = {"tokens": [], "codes": [], "token_logprobs": [], "code_logprobs": []}
    for _ in range(steps):
        ids, mask = (t.to(device) for t in left_pad(sequences, pad_id))
        positions = position_ids(mask)
        hidden, _ = model.hidden_states(ids, mask, positions)
        policy, _ = model.policy_logits(hidden, mask, positions)
        code = code_sampler.choose(policy[:, -1], generator)
        # every position's code (the prompt's from the IDM), left-padded like the token ids
        codes, _ = left_pad([past + [c] for past, c in zip(history, code.tolist(), strict=True)], 0)
        logits = model.world_model_logits(hidden, codes.to(device), mask, positions)[:, -1]
        token = token_sampler.choose(logits, generator)
        chosen["codes"].append(code)
        chosen["tokens"].append(token)
        chosen["code_logprobs"].append(
            code_sampler.log_probs(policy[:, -1]).gather(-1, code[:, None])[:, 0]
        )
        chosen["token_logprobs"].append(
            token_sampler.log_probs(logits).gather(-1, token[:, None])[:, 0]
        )
        for sequence, past_codes, new, new_code in zip(
            sequences, history, token.tolist(), code.tolist(), strict=True
        ):
            sequence.append(new)
            past_codes.append(new_code)
    return {name: torch.stack(values, dim=1) for name, values in chosen.items()}
