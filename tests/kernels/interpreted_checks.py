"""Runs the Triton kernel under the interpreter against its references; prints the errors as JSON.

Run by tests/kernels/test_shared_prefix.py in a subprocess with ``TRITON_INTERPRET=1``: the
variable only takes effect if it is set before triton is first imported, and the test process
has imported it already (through torch and lightning).
"""

from __future__ import annotations

import json
import os

import torch

from cola_lightning.kernels import shared_prefix_attention

# (GQA group, K candidates, S own tokens, prefix width, real prefix lengths per sequence)
CASES = [
    (1, 1, 1, 9, [9, 4]),
    (3, 7, 3, 21, [21, 0]),
    (4, 64, 1, 12, [5, 12]),
    (3, 1, 3, 0, [0, 0]),
    (1, 7, 1, 70, [70, 33]),
    (4, 7, 3, 5, [5, 1]),
]
DIM = 16


def inputs(batch, kv_heads, group, count, own, width, lengths, seed=0):
    """Random query (B, Hq, K, S, D), prefix and own keys/values, and real prefix lengths."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=generator)

    query = rand(batch, kv_heads * group, count, own, DIM)
    prefix = rand(batch, kv_heads, width, DIM), rand(batch, kv_heads, width, DIM)
    owns = rand(batch, kv_heads, count, own, DIM), rand(batch, kv_heads, count, own, DIM)
    return query, *prefix, *owns, torch.tensor(lengths)


def error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def against_reference() -> list[dict]:
    results = []
    for case in CASES:
        args = inputs(2, 2, *case)
        out, lse = shared_prefix_attention(*args, backend="reference")
        kernel_out, kernel_lse = shared_prefix_attention(*args, backend="triton")
        results.append({"case": case, "out": error(kernel_out, out), "lse": error(kernel_lse, lse)})
    return results


def one_pass_logsumexp(scale: float = 0.3) -> dict:
    """The kernel (3 prefix splits) against one softmax over each row's visible keys."""
    count, own, width, lengths = 4, 3, 150, [150, 61]
    query, pk, pv, ok, ov, lengths = inputs(2, 1, 3, count, own, width, lengths)
    out, lse = shared_prefix_attention(query, pk, pv, ok, ov, lengths, scale, "triton", 3)
    single = shared_prefix_attention(query, pk, pv, ok, ov, lengths, scale, "triton", 1)
    errors = {"lse": 0.0, "out": 0.0}
    for b in range(2):
        real = int(lengths[b])
        keys = torch.cat([pk[b, 0, width - real :], ok[b, 0].reshape(-1, DIM)])
        values = torch.cat([pv[b, 0, width - real :], ov[b, 0].reshape(-1, DIM)])
        scores = torch.einsum("hksd,nd->hksn", query[b], keys) * scale
        visible = torch.zeros(count, own, real + count * own, dtype=torch.bool)
        visible[..., :real] = True
        for k in range(count):
            for s in range(own):
                visible[k, s, real + k * own : real + k * own + s + 1] = True
        scores = scores.masked_fill(~visible, float("-inf"))
        errors["lse"] = max(errors["lse"], error(lse[b], scores.logsumexp(-1)))
        errors["out"] = max(errors["out"], error(out[b], scores.softmax(-1) @ values))
    errors["splits_out"] = error(single[0], out)
    errors["splits_lse"] = error(single[1], lse)
    return errors


if __name__ == "__main__":
    assert os.environ.get("TRITON_INTERPRET") == "1", "run with TRITON_INTERPRET=1"
    print(json.dumps({"cases": against_reference(), "one_pass": one_pass_logsumexp()}))
