"""The Triton kernel for shared-prefix multi-candidate attention (reference beside it).

Two launches:

1. `_prefix_partials`, grid (batch x KV heads, prefix splits, row blocks): the G * K * S query rows
   of one KV head (every query head of its GQA group, every candidate, every own token) are one
   matrix, so each prefix key/value tile is loaded once for all of them; a flash-decoding online
   softmax over the split's keys leaves a partial output and an fp32 LSE per row. Splitting the
   prefix gives one sequence enough programs to fill a GPU.
2. `_merge`, grid (batch x KV heads, candidates): each candidate's rows attend to its own S keys
   (causal among them) and fold in every split's partial by log-sum-exp.

Under ``TRITON_INTERPRET=1`` (CPU) this runs for tests in fp32 only (DESIGN.md section 7):
interpreted bf16 arithmetic is wrong, and fp32 dots use IEEE precision here to match the reference.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_N = 64  # prefix keys per tile
PROGRAMS_PER_SM = 2  # prefix splits are chosen so the grid reaches this many programs per SM


@triton.jit
def _prefix_partials(
    Q, PK, PV, LENS, OP, LP,
    M, P, D, HKV, CHUNK, NUM_SPLITS, scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    PRECISION: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)  # batch * HKV + kv head
    split = tl.program_id(1)
    rows = tl.program_id(2) * BLOCK_M + tl.arange(0, BLOCK_M)
    dims = tl.arange(0, BLOCK_D)
    row_ok = rows < M
    dim_ok = dims < D
    q = tl.load(
        Q + head * M * D + rows[:, None] * D + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    )
    start = P - tl.load(LENS + head // HKV)  # left padding: keys before `start` are not real
    lo = split * CHUNK
    hi = tl.minimum(lo + CHUNK, P)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(lo, hi, BLOCK_N):
        cols = n0 + tl.arange(0, BLOCK_N)
        col_ok = (cols < hi) & (cols >= start)
        tile = head * P * D + cols[:, None] * D + dims[None, :]
        tile_ok = col_ok[:, None] & dim_ok[None, :]
        k = tl.load(PK + tile, mask=tile_ok, other=0.0)
        v = tl.load(PV + tile, mask=tile_ok, other=0.0)
        scores = tl.dot(q, tl.trans(k), input_precision=PRECISION) * scale
        scores = tl.where(col_ok[None, :], scores, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(scores, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # rows with no real key yet
        p = tl.exp(scores - m_safe[:, None])
        alpha = tl.exp(m_i - m_safe)
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=PRECISION)
        m_i = m_new
    has_key = l_i > 0
    lse = tl.where(has_key, m_i + tl.log(tl.where(has_key, l_i, 1.0)), float("-inf"))
    out = acc / tl.where(has_key, l_i, 1.0)[:, None]
    partial = (head * NUM_SPLITS + split) * M + rows
    tl.store(OP + partial[:, None] * D + dims[None, :], out, mask=row_ok[:, None] & dim_ok[None, :])
    tl.store(LP + partial, lse, mask=row_ok)


@triton.jit
def _merge(
    Q, OK, OV, OP, LP, OUT, LSE,
    G, K, S, D, NUM_SPLITS, scale,
    GROUP_ROWS: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(0)
    candidate = tl.program_id(1)
    r = tl.arange(0, GROUP_ROWS)  # (query head in the group, own token) pairs of this candidate
    group = r // S
    own = r % S
    rows = (group * K + candidate) * S + own  # row index among the head's G * K * S rows
    row_ok = r < G * S
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < D
    total = G * K * S
    q = tl.load(
        Q + head * total * D + rows[:, None] * D + dims[None, :],
        mask=row_ok[:, None] & dim_ok[None, :],
        other=0.0,
    ).to(tl.float32)
    t = tl.arange(0, BLOCK_S)
    own_tile = ((head * K + candidate) * S + t)[:, None] * D + dims[None, :]
    own_ok = (t < S)[:, None] & dim_ok[None, :]
    k = tl.load(OK + own_tile, mask=own_ok, other=0.0).to(tl.float32)
    v = tl.load(OV + own_tile, mask=own_ok, other=0.0).to(tl.float32)
    scores = tl.sum(q[:, None, :] * k[None, :, :], 2) * scale
    scores = tl.where((t[None, :] < S) & (t[None, :] <= own[:, None]), scores, float("-inf"))
    m_s = tl.max(scores, 1)
    p = tl.exp(scores - m_s[:, None])
    l_s = tl.sum(p, 1)
    out = tl.sum(p[:, :, None] * v[None, :, :], 1) / l_s[:, None]
    lse = m_s + tl.log(l_s)
    for split in range(0, NUM_SPLITS):
        partial = (head * NUM_SPLITS + split) * total + rows
        lse_p = tl.load(LP + partial, mask=row_ok, other=float("-inf"))
        out_p = tl.load(
            OP + partial[:, None] * D + dims[None, :],
            mask=row_ok[:, None] & dim_ok[None, :],
            other=0.0,
        )
        top = tl.maximum(lse, lse_p)  # finite: the own part always has a key
        merged = top + tl.log(tl.exp(lse - top) + tl.exp(lse_p - top))
        out = tl.exp(lse - merged)[:, None] * out + tl.exp(lse_p - merged)[:, None] * out_p
        lse = merged
    tl.store(
        OUT + head * total * D + rows[:, None] * D + dims[None, :],
        out.to(OUT.dtype.element_ty),
        mask=row_ok[:, None] & dim_ok[None, :],
    )
    tl.store(LSE + head * total + rows, lse, mask=row_ok)


def shared_prefix_attention_triton(
    query: torch.Tensor,
    prefix_key: torch.Tensor,
    prefix_value: torch.Tensor,
    own_key: torch.Tensor,
    own_value: torch.Tensor,
    prefix_lengths: torch.Tensor,
    scale: float,
    num_splits: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused kernels; arguments and results as `kernels.shared_prefix_attention`'s."""
    batch, heads, count, own, dim = query.shape
    kv_heads, width = prefix_key.shape[1], prefix_key.shape[2]
    group = heads // kv_heads
    rows = group * count * own
    query, prefix_key, prefix_value, own_key, own_value = (
        t.contiguous() for t in (query, prefix_key, prefix_value, own_key, own_value)
    )
    block_m = min(64, max(16, triton.next_power_of_2(rows)))
    block_d = max(16, triton.next_power_of_2(dim))
    row_blocks = triton.cdiv(rows, block_m)
    programs = batch * kv_heads * row_blocks
    affordable = _affordable_splits(width, rows, dim, prefix_key.element_size())
    splits = _num_splits(num_splits, width, programs, affordable, query.device)
    chunk = triton.cdiv(triton.cdiv(width, splits), BLOCK_N) * BLOCK_N if splits else BLOCK_N
    splits = triton.cdiv(width, chunk)
    fp32 = dict(dtype=torch.float32, device=query.device)
    partial_out = torch.empty(batch * kv_heads, max(splits, 1), rows, dim, **fp32)
    partial_lse = torch.empty(batch * kv_heads, max(splits, 1), rows, **fp32)
    lengths = prefix_lengths.to(torch.int32).contiguous()
    precision = "ieee" if query.dtype == torch.float32 else "tf32"
    if splits:
        _prefix_partials[(batch * kv_heads, splits, row_blocks)](
            query, prefix_key, prefix_value, lengths, partial_out, partial_lse,
            rows, width, dim, kv_heads, chunk, splits, scale,
            BLOCK_M=block_m, BLOCK_N=BLOCK_N, BLOCK_D=block_d, PRECISION=precision,
        )  # fmt: skip
    out = torch.empty_like(query)
    lse = torch.empty(query.shape[:-1], **fp32)
    _merge[(batch * kv_heads, count)](
        query, own_key, own_value, partial_out, partial_lse, out, lse,
        group, count, own, dim, splits, scale,
        GROUP_ROWS=triton.next_power_of_2(group * own), BLOCK_S=triton.next_power_of_2(own),
        BLOCK_D=block_d,
    )  # fmt: skip
    return out, lse


def _affordable_splits(width: int, rows: int, dim: int, element_size: int) -> int:
    """The most prefix splits whose fp32 partials cost no more traffic than the prefix itself.

    Each split writes, and the merge reads back, an fp32 output and LSE per row: 2 * rows *
    (dim + 1) * 4 bytes per KV head. With 256 rows (K = 64, GQA group 4) that matches a
    512-position bf16 prefix, so at short prefixes splitting would move more bytes than it saves
    (experiments/kernels/roofline.py).
    """
    return max(1, (2 * width * dim * element_size) // (2 * rows * (dim + 1) * 4))


def _num_splits(
    requested: int | None, width: int, programs: int, affordable: int, device: torch.device
) -> int:
    """Prefix splits: as asked, else enough for PROGRAMS_PER_SM programs on every SM (1 on CPU),
    at most `affordable` (`_affordable_splits`)."""
    if width == 0:
        return 0
    most = triton.cdiv(width, BLOCK_N)
    if requested is not None:
        return max(1, min(requested, most))
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(most, affordable, triton.cdiv(PROGRAMS_PER_SM * sms, programs)))
