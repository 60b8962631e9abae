"""Multi-candidate scoring: K codes at once equal K separate teacher-forced passes, both forms."""

import pytest
import torch

from cola_lightning.models.backbone import Backbone
from cola_lightning.models.cola import CoLAConfig, CoLAModel
from tests.conftest import tiny_model
from tests.models.inject_models import INJECT_COLA, inject_model, inject_spec

TOL = {"atol": 1e-5, "rtol": 1e-5}
CANDIDATES = torch.tensor([[0, 3, 3, 7, 1, 5], [2, 2, 6, 4, 0, 6]])  # duplicates in each row


@pytest.fixture(scope="module")
def model():
    return inject_model()


def left_padded_batch(model, width=7, pads=(0, 3), seed=1):
    """Token ids, mask, positions, states and one prefix code per position (B = 2)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 256, (2, width), generator=generator)
    mask = torch.ones(2, width, dtype=torch.long)
    for row, pad in enumerate(pads):
        mask[row, :pad] = 0
    positions = (mask.cumsum(-1) - 1).clamp_min(0)
    with torch.no_grad():
        hidden, _ = model.hidden_states(ids, mask, positions)
    codes = torch.randint(0, model.num_codes, (2, width), generator=generator)
    return mask, positions, hidden, codes


def separate_passes(model, hidden, codes, mask, positions, candidates):
    """Logits at the last position for each candidate code: one full teacher-forced pass each."""
    rows = []
    for k in range(candidates.shape[1]):
        chosen = torch.cat([codes[:, :-1], candidates[:, k : k + 1]], dim=1)
        rows.append(model.world_model_logits(hidden, chosen, mask, positions)[:, -1])
    return torch.stack(rows, dim=1)


@torch.no_grad()
@pytest.mark.parametrize("width", [1, 7])  # t = 0 (no prefix) and t > 0
def test_inject_batched_candidates_equal_separate_full_passes(model, width):
    mask, positions, hidden, codes = left_padded_batch(model, width, pads=(0, width // 2))
    cache = model.world_model_cache()
    t = width - 1
    model.prefill_world_model(hidden[:, :t], codes[:, :t], mask[:, :t], positions[:, :t], cache)
    batched = model.candidate_logits(hidden[:, t:], CANDIDATES, cache, mask, positions[:, t:])
    expected = separate_passes(model, hidden, codes, mask, positions, CANDIDATES)
    assert batched.shape == (2, CANDIDATES.shape[1], 259)
    torch.testing.assert_close(batched, expected, **TOL)
    # duplicates score alike; a subset or a permutation of the codes scores each code alike
    torch.testing.assert_close(batched[0, 1], batched[0, 2], **TOL)
    torch.testing.assert_close(batched[1, 2], batched[1, 5], **TOL)
    order = torch.tensor([4, 0, 2])
    subset = model.candidate_logits(hidden[:, t:], CANDIDATES[:, order], cache, mask)
    torch.testing.assert_close(subset, batched[:, order], **TOL)
    assert cache.get_seq_length() == t  # scoring leaves the prefix cache as it was


@torch.no_grad()
def test_inject_backends_agree_and_candidates_with_own_tokens(model):
    mask, positions, hidden, codes = left_padded_batch(model, width=9, pads=(2, 0))
    t, own = 6, 3
    cache = model.world_model_cache()
    model.prefill_world_model(hidden[:, :t], codes[:, :t], mask[:, :t], positions[:, :t], cache)
    # Candidate k's S = 3 own tokens: the true states at t..t+2, codes k, k + 1, k + 2.
    count = 4
    states = hidden[:, None, t:].expand(2, count, own, -1)
    own_codes = (torch.arange(count)[:, None] + torch.arange(own)) % model.num_codes
    own_codes = own_codes.expand(2, count, own)
    batched = model.candidate_logits(states, own_codes, cache, mask, positions[:, t : t + 1])
    for k in range(count):
        chosen = torch.cat([codes[:, :t], own_codes[:, k]], dim=1)
        full = model.world_model_logits(hidden, chosen, mask, positions)[:, t:]
        torch.testing.assert_close(batched[:, k], full, **TOL)
    reference = model.candidate_logits(states, own_codes, cache, mask, backend="reference")
    torch.testing.assert_close(reference, batched, **TOL)


@torch.no_grad()
def test_merge_candidates_equal_one_code_at_a_time():
    model = tiny_model().eval()
    hidden, _ = model.hidden_states(torch.randint(0, 256, (2, 5)))
    state = hidden[:, -1:]
    batched = model.candidate_logits(state, CANDIDATES)
    expected = torch.stack(
        [model.world_model_logits(state, CANDIDATES[:, k : k + 1])[:, 0] for k in range(6)], 1
    )
    torch.testing.assert_close(batched, expected, **TOL)


def test_inject_layer_out_of_range_is_a_clear_error():
    backbone = Backbone.from_spec(inject_spec())
    for layer in (3, -1):
        cola = CoLAConfig(num_codes=8, world_model={"form": "inject", "layer": layer})
        with pytest.raises(ValueError, match=r"outside the backbone's layers: it has 3"):
            CoLAModel(backbone, cola)
    with pytest.raises(ValueError, match="needs `layer`"):
        CoLAConfig(world_model={"form": "inject"})
    with pytest.raises(ValueError, match="Unknown world_model.form"):
        CoLAConfig(world_model={"form": "fused"})


@torch.no_grad()
def test_bad_candidate_input_is_a_clear_error(model):
    mask, positions, hidden, codes = left_padded_batch(model, width=5)
    cache = model.world_model_cache()
    model.prefill_world_model(hidden[:, :4], codes[:, :4], mask[:, :4], positions[:, :4], cache)
    state = hidden[:, 4:]
    with pytest.raises(ValueError, match=r"must lie in \[0, 8\) \(the codebook's K\)"):
        model.candidate_logits(state, torch.tensor([[0, 8], [1, 2]]), cache, mask)
    with pytest.raises(ValueError, match="must be integer"):
        model.candidate_logits(state, torch.zeros(2, 3, INJECT_COLA.num_codes), cache, mask)
    with pytest.raises(ValueError, match=r"do not fit codes"):
        model.candidate_logits(hidden[:, :, None], CANDIDATES, cache, mask)
    with pytest.raises(ValueError, match=r"cache: it holds 4 prefix positions .* \(2, 5\)"):
        model.candidate_logits(state, CANDIDATES, cache, mask[:, :3])
    model.prefill_world_model(hidden[:, 4:], codes[:, 4:], mask, positions[:, 4:], cache)
    with pytest.raises(ValueError, match=r"holds 5 prefix positions"):
        model.candidate_logits(state, CANDIDATES, cache, mask)
