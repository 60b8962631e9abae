"""A roofline ESTIMATE (no measurement) of shared-prefix multi-candidate attention on a GPU.

    PYTHONPATH=. python experiments/kernels/roofline.py [--lengths 512 2048 8192] [--candidates 64]

Llama-3.1-8B attention shapes (32 query heads, 8 KV heads, head dim 128), bf16, one sequence, one
layer, on an H100 (HBM about 3.35 TB/s, 132 SMs). Counts the HBM bytes each way must move and
divides by the bandwidth; launch overheads and L2 effects are ignored (the kernel's row blocks
re-read their prefix split, assumed to hit L2). Prints one JSON line per T.

* ``per_candidate``: K separate decode attentions, each reading the whole prefix K/V.
* ``fused_ideal``: the prefix K/V read once, plus queries, own keys/values and outputs.
* ``fused_kernel``: ``fused_ideal`` plus the fp32 partial outputs and LSEs that the Triton kernel's
  prefix splits write and its merge reads back, with the splits its GPU heuristic picks;
  ``fused_uncapped`` the same without the heuristic's cap on splits (`_affordable_splits`).
"""

from __future__ import annotations

import argparse
import json
import math

from cola_lightning.kernels.shared_prefix_triton import (
    BLOCK_N,
    PROGRAMS_PER_SM,
    _affordable_splits,
)

HEADS, KV_HEADS, DIM, BYTES = 32, 8, 128, 2  # Llama-3.1-8B, bf16
BANDWIDTH, SMS = 3.35e12, 132  # H100 SXM
BLOCK_M = 64  # the kernel's row block for 64 or more rows


def kernel_splits(length: int, rows: int, capped: bool) -> int:
    """The prefix splits the kernel chooses on this GPU for one sequence (its `_num_splits`).

    `capped`: with the cap of `_affordable_splits` (the kernel's rule), else only filling the SMs
    (the rule before the cap, kept to show what the cap saves).
    """
    programs = KV_HEADS * math.ceil(rows / BLOCK_M)
    fill = min(math.ceil(length / BLOCK_N), math.ceil(PROGRAMS_PER_SM * SMS / programs))
    if not capped:
        return max(1, fill)
    return max(1, min(fill, _affordable_splits(length, rows, DIM, BYTES)))


def estimate(length: int, count: int) -> dict:
    rows = (HEADS // KV_HEADS) * count  # query rows per KV head (S = 1)
    prefix = 2 * KV_HEADS * length * DIM * BYTES
    own = 2 * KV_HEADS * count * DIM * BYTES
    queries = outputs = HEADS * count * DIM * BYTES
    lse = HEADS * count * 4
    ways = {
        "per_candidate": count * (prefix + (2 * KV_HEADS + 2 * HEADS) * DIM * BYTES),
        "fused_ideal": prefix + own + queries + outputs + lse,
    }
    row = {"T": length, "K": count, "prefix_kv_MB": round(prefix / 1e6, 2)}
    for name, capped in (("fused_kernel", True), ("fused_uncapped", False)):
        splits = kernel_splits(length, rows, capped)
        partials = 2 * splits * KV_HEADS * rows * (DIM + 1) * 4  # fp32, written then read
        ways[name] = ways["fused_ideal"] + partials
        row[f"{name}_splits"] = splits
    for name, traffic in ways.items():
        row[f"{name}_MB"] = round(traffic / 1e6, 2)
        row[f"{name}_us"] = round(traffic / BANDWIDTH * 1e6, 2)
    row["per_candidate_over_fused_ideal"] = round(ways["per_candidate"] / ways["fused_ideal"], 1)
    for name in ("fused_kernel", "fused_uncapped"):
        row[f"per_candidate_over_{name}"] = round(ways["per_candidate"] / ways[name], 1)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lengths", type=int, nargs="+", default=[512, 2048, 8192])
    parser.add_argument("--candidates", type=int, default=64)
    args = parser.parse_args()
    for length in args.lengths:
        print(json.dumps({"estimate": True, **estimate(length, args.candidates)}))


if __name__ == "__main__":
    main()
