"""The plain reference for shared-prefix multi-candidate attention: one row at a time.

Every query row (batch b, head h, candidate k, own token s) attends to the real prefix keys of
sequence b and to its candidate's own keys 0..s, with one softmax over the concatenation. Slow
and obvious on purpose: the batched path and the Triton kernel are tested against it.
"""

from __future__ import annotations

import torch


def shared_prefix_attention_reference(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    own_key: torch.Tensor,
    own_value: torch.Tensor,
    prefix_lengths: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Outputs (B, Hq, K, S, D) and fp32 log-sum-exps (B, Hq, K, S); shapes as the dispatcher's."""
    batch, heads, count, own, dim = query.shape
    group = heads // prefix_key.shape[1]
    width = prefix_key.shape[2]
    out = torch.empty(query.shape, dtype=torch.float32, device=query.device)
    lse = torch.empty(query.shape[:-1], dtype=torch.float32, device=query.device)
    for b in range(batch):
        start = width - int(prefix_lengths[b])
        for h in range(heads):
            kv = h // group
            for k in range(count):
                for s in range(own):
                    keys = torch.cat([prefix_key[b, kv, start:], own_key[b, kv, k, : s + 1]])
                    values = torch.cat([prefix_value[b, kv, start:], own_value[b, kv, k, : s + 1]])
                    scores = (keys.float() @ query[b, h, k, s].float()) * scale
                    out[b, h, k, s] = scores.softmax(-1) @ values.float()
                    lse[b, h, k, s] = scores.logsumexp(-1)
    return out.to(query.dtype), lse
