"""Generation without any cache: every step recomputes every state from the full sequence.

The engine's reference: tests check that cached generation equals it, and the decode benchmark
measures the engine's speed-up over it.
"""

from __future__ import annotations

import torch

from cola_lightning.models.cola import CoLAModel
from cola_lightning.rollout.decoding import prompt_codes
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
    ids, mask = (t.to(device) for t in left_pad(sequences, pad_id))
    chosen = {"tokens": [], "token_logprobs": []}
    if latent:
        hidden, _ = model.hidden_states(ids, mask, position_ids(mask))
        # Codes of the steps inside each prompt (the inject form's world model reads them).
        history = [
            row[ids.shape[1] - len(p) :]
            for row, p in zip(prompt_codes(model, hidden, mask).tolist(), sequences, strict=True)
        ]
        chosen.update(codes=[], code_logprobs=[])
    for _ in range(steps):
        ids, mask = (t.to(device) for t in left_pad(sequences, pad_id))
        positions = position_ids(mask)
        if latent:
            hidden, _ = model.hidden_states(ids, mask, positions)
            policy, _ = model.policy_logits(hidden, mask, positions)
            code = code_sampler.choose(policy[:, -1], generator)
            # every position's code (the prompt's from the IDM), left-padded like the token ids
            codes, _ = left_pad([h + [c] for h, c in zip(history, code.tolist(), strict=True)], 0)
            logits = model.world_model_logits(hidden, codes.to(device), mask, positions)[:, -1]
            chosen["codes"].append(code)
            chosen["code_logprobs"].append(
                code_sampler.log_probs(policy[:, -1]).gather(-1, code[:, None])[:, 0]
            )
        else:
            hidden, _ = model.token_states(ids, mask, positions)
            logits = model.token_logits(hidden[:, -1:])[:, -1]
        token = token_sampler.choose(logits, generator)
        chosen["tokens"].append(token)
        chosen["token_logprobs"].append(
            token_sampler.log_probs(logits).gather(-1, token[:, None])[:, 0]
        )
        for row, new in enumerate(token.tolist()):
            sequences[row].append(new)
            if latent:
                history[row].append(int(code[row]))
    return {name: torch.stack(values, dim=1) for name, values in chosen.items()}
