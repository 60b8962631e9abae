"""Shared-prefix multi-candidate attention: the Triton kernel and the batched path vs the reference.

On CPU the kernel runs under the Triton interpreter (fp32, small shapes; DESIGN.md section 7) in
a subprocess, since ``TRITON_INTERPRET=1`` must be set before triton is first imported.
"""

import json

import pytest
import torch

from cola_lightning.kernels import shared_prefix_attention
from cola_lightning.kernels.shared_prefix import resolve_backend, triton_available
from tests.conftest import REPO, run_cli
from tests.kernels.interpreted_checks import CASES, inputs


@pytest.fixture(scope="module")
def interpreted():
    result = run_cli([], REPO, {"TRITON_INTERPRET": "1"}, module="tests.kernels.interpreted_checks")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_kernel_equals_the_reference(interpreted):
    assert [tuple(r["case"][:3]) for r in interpreted["cases"]] == [c[:3] for c in CASES]
    for result in interpreted["cases"]:
        assert result["out"] < 1e-5 and result["lse"] < 1e-5, result


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_kernel_lse_is_a_one_pass_logsumexp_whatever_the_splits(interpreted):
    assert all(value < 1e-5 for value in interpreted["one_pass"].values()), interpreted


@pytest.mark.parametrize(("group", "count", "own", "width", "lengths"), CASES)
def test_batched_path_equals_the_reference(group, count, own, width, lengths):
    args = inputs(2, 2, group, count, own, width, lengths)
    expected_out, expected_lse = shared_prefix_attention(*args, backend="reference")
    out, lse = shared_prefix_attention(*args, backend="torch")
    assert out.shape == expected_out.shape and lse.dtype == torch.float32
    torch.testing.assert_close(out, expected_out, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, expected_lse, atol=1e-5, rtol=1e-5)


def test_dispatcher_picks_a_backend_and_rejects_bad_input():
    assert resolve_backend("auto", torch.device("cpu")) == "torch"
    with pytest.raises(ValueError, match="Unknown attention backend"):
        resolve_backend("cuda", torch.device("cpu"))
    query, pk, pv, ok, ov, _ = inputs(2, 2, 2, 3, 1, 5, [5, 5])
    with pytest.raises(ValueError, match=r"Own keys .* must be \(B, Hkv, K, S, D\)"):
        shared_prefix_attention(query, pk, pv, ok[:, :, :2], ov[:, :, :2])
    with pytest.raises(ValueError, match="does not fit queries"):
        shared_prefix_attention(query[:, :3], pk, pv, ok, ov)
    with pytest.raises(ValueError, match=r"prefix_lengths must be \(B,\)"):
        shared_prefix_attention(query, pk, pv, ok, ov, torch.tensor([6, 1]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_on_gpu_equals_the_batched_path(dtype):
    query, pk, pv, ok, ov, lengths = inputs(3, 8, 4, 64, 1, 1000, [1000, 517, 3])
    args = [t.cuda().to(dtype) for t in (query, pk, pv, ok, ov)]
    expected_out, expected_lse = shared_prefix_attention(*args, lengths.cuda(), backend="torch")
    out, lse = shared_prefix_attention(*args, lengths.cuda(), backend="triton")
    tolerance = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(out.float(), expected_out.float(), atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(lse, expected_lse, atol=tolerance, rtol=tolerance)


@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_prefix_splits_stop_where_their_partials_outweigh_the_prefix():
    from cola_lightning.kernels.shared_prefix_triton import _affordable_splits

    # K = 64 candidates x GQA group 4 = 256 rows, head dim 128, bf16 (docs/benchmarks.md)
    assert [_affordable_splits(t, 256, 128, 2) for t in (64, 512, 2048, 8192)] == [1, 1, 3, 15]
    assert _affordable_splits(2048, 256, 128, 4) == 7  # fp32 prefixes afford twice the splits
