"""Shared-prefix multi-candidate attention: K query rows per sequence over one prefix KV cache.

Scoring K candidate codes at position t in the inject form (DESIGN.md section 7): every row
attends to the sequence's prefix (positions < t, shared by all K rows) and to its own S keys
(causal among them). The exact decomposition computes the two parts apart and merges them by
log-sum-exp: lse = logaddexp(lse_p, lse_s), o = exp(lse_p - lse) o_p + exp(lse_s - lse) o_s, so
the prefix is read once for all K rows (FlashInfer's cascade attention, Hydragen).

Backends: ``triton`` (the fused kernel, `shared_prefix_triton.py`), ``torch`` (the batched
PyTorch path below), ``reference`` (one row at a time, `shared_prefix_reference.py`), ``auto``
(Triton on CUDA where it is installed, else ``torch``).
"""

from __future__ import annotations

import importlib.util

import torch

from cola_lightning.kernels.shared_prefix_reference import shared_prefix_attention_reference

BACKENDS = ("auto", "triton", "torch", "reference")


def shared_prefix_attention(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    own_key: torch.Tensor,
    own_value: torch.Tensor,
    prefix_lengths: torch.Tensor | None = None,
    scale: float | None = None,
    backend: str = "auto",
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of K candidates' rows over a shared prefix plus each candidate's own keys.

    Args:
        query: (B, Hq, K, S, D), rotary already applied; Hq a multiple of Hkv (GQA: query head
            h reads key/value head h // (Hq / Hkv)).
        prefix_key: (B, Hkv, P, D), the shared prefix cache (P may be 0).
        prefix_value: (B, Hkv, P, D).
        own_key: (B, Hkv, K, S, D): candidate k's own keys; own token s sees own tokens <= s.
        own_value: (B, Hkv, K, S, D).
        prefix_lengths: (B,) real prefix positions, at the right end of the P (left padding);
            None means all P are real.
        scale: score scale; default D ** -0.5.
        backend: one of `BACKENDS`.
        num_splits: prefix splits of the Triton kernel (default: enough programs to fill the GPU).

    Returns:
        Outputs (B, Hq, K, S, D) in the query's dtype and log-sum-exps (B, Hq, K, S) in float32.
    """
    prefix_lengths = _check(query, prefix_key, prefix_value, own_key, own_value, prefix_lengths)
    scale = query.shape[-1] ** -0.5 if scale is None else scale
    args = (query, prefix_key, prefix_value, own_key, own_value, prefix_lengths, scale)
    backend = resolve_backend(backend, query.device)
    if backend == "triton":
        from cola_lightning.kernels.shared_prefix_triton import shared_prefix_attention_triton

        return shared_prefix_attention_triton(*args, num_splits=num_splits)
    if backend == "reference":
        return shared_prefix_attention_reference(*args)
    return shared_prefix_attention_torch(*args)


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def resolve_backend(backend: str, device: torch.device) -> str:
    """The backend ``auto`` stands for here, or `backend` itself once checked."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown attention backend {backend!r}; use one of {BACKENDS}.")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if backend == "triton" and not triton_available():
        raise ModuleNotFoundError(
            "backend 'triton' needs the triton package (pip install triton==3.7.1); use "
            "backend 'auto' or 'torch' to run without it."
        )
    return backend


def shared_prefix_attention_torch(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    own_key: torch.Tensor,
    own_value: torch.Tensor,
    prefix_lengths: torch.Tensor,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The batched PyTorch path: one matmul over the prefix for all rows, then the LSE merge."""
    batch, heads, count, own, dim = query.shape
    kv_heads, width = prefix_key.shape[1], prefix_key.shape[2]
    group = heads // kv_heads
    rows = query.reshape(batch, kv_heads, group * count * own, dim).float()
    scores = rows @ prefix_key.float().transpose(-1, -2) * scale  # (B, Hkv, M, P)
    real = torch.arange(width, device=query.device) >= (width - prefix_lengths)[:, None]
    scores = scores.masked_fill(~real[:, None, None, :], float("-inf"))
    prefix_lse = scores.logsumexp(-1)
    weights = (scores - prefix_lse[..., None].clamp_min(torch.finfo(torch.float32).min)).exp()
    prefix_out = weights @ prefix_value.float()

    grouped = query.reshape(batch, kv_heads, group, count, own, dim).float()
    own_scores = torch.einsum("bhgksd,bhktd->bhgkst", grouped, own_key.float()) * scale
    causal = torch.ones(own, own, dtype=torch.bool, device=query.device).tril()
    own_scores = own_scores.masked_fill(~causal, float("-inf"))
    own_lse = own_scores.logsumexp(-1)
    own_out = torch.einsum("bhgkst,bhktd->bhgksd", own_scores.softmax(-1), own_value.float())

    shape = (batch, heads, count, own)
    out, lse = merge_by_lse(prefix_out.view(*shape, dim), prefix_lse.view(shape), own_out, own_lse)
    return out.to(query.dtype), lse


def merge_by_lse(
    out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two attentions over disjoint key sets merged into the attention over their union.

    `lse_b` must be finite (own keys always exist); `lse_a` may be -inf (no real prefix).
    ``out_b`` and ``lse_b`` are reshaped to ``out_a``'s and ``lse_a``'s shapes.
    """
    out_b = out_b.reshape(out_a.shape)
    lse_b = lse_b.reshape(lse_a.shape)
    lse = torch.logaddexp(lse_a, lse_b)
    out = (lse_a - lse).exp()[..., None] * out_a + (lse_b - lse).exp()[..., None] * out_b
    return out, lse


def _check(query, prefix_key, prefix_value, own_key, own_value, prefix_lengths) -> torch.Tensor:
    """Shapes consistent with each other, or a clear error; the prefix lengths as a tensor."""
    if query.dim() != 5 or prefix_key.dim() != 4 or own_key.dim() != 5:
        raise ValueError(
            "shared_prefix_attention expects query (B, Hq, K, S, D), prefix keys/values "
            f"(B, Hkv, P, D) and own keys/values (B, Hkv, K, S, D); got {tuple(query.shape)}, "
            f"{tuple(prefix_key.shape)}, {tuple(own_key.shape)}."
        )
    batch, heads, count, own, dim = query.shape
    kv_heads = prefix_key.shape[1]
    if prefix_value.shape != prefix_key.shape or own_value.shape != own_key.shape:
        raise ValueError("Keys and values must have the same shapes (prefix and own alike).")
    if prefix_key.shape[0] != batch or prefix_key.shape[3] != dim or heads % kv_heads:
        raise ValueError(
            f"The prefix cache {tuple(prefix_key.shape)} does not fit queries "
            f"{tuple(query.shape)}: batch and head size must match and Hq a multiple of Hkv."
        )
    if own_key.shape != (batch, kv_heads, count, own, dim):
        raise ValueError(
            f"Own keys {tuple(own_key.shape)} must be (B, Hkv, K, S, D) = "
            f"{(batch, kv_heads, count, own, dim)}."
        )
    width = prefix_key.shape[2]
    if prefix_lengths is None:
        return torch.full((batch,), width, dtype=torch.long, device=query.device)
    if (
        prefix_lengths.shape != (batch,)
        or (prefix_lengths < 0).any()
        or (prefix_lengths > width).any()
    ):
        raise ValueError(f"prefix_lengths must be (B,) = ({batch},) values in [0, {width}].")
    return prefix_lengths.to(device=query.device, dtype=torch.long)
