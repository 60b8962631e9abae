"""The CoLA model's parts: shapes, the one-step shift, the world model's readout."""

import pytest
import torch

from cola_lightning.models.cola import CoLAConfig
from tests.conftest import TINY, tiny_model


@pytest.mark.parametrize("model_type", ["llama", "qwen2"])
def test_shapes_and_backward(model_type):
    model = tiny_model(model_type)
    ids = torch.randint(0, 256, (2, 12))
    hidden, _ = model.hidden_states(ids)
    assert hidden.shape == (2, 12, TINY["hidden_size"])
    idm = model.inverse_dynamics.code_logits(hidden)
    policy, _ = model.policy_logits(hidden)
    logits = model.world_model_logits(hidden[:, :-1], idm.softmax(-1))
    assert idm.shape == (2, 11, 8) and policy.shape == (2, 12, 8)
    assert logits.shape == (2, 11, TINY["vocab_size"])
    (logits.logsumexp(-1).mean() + policy.mean()).backward()
    for part in (model.inverse_dynamics, model.codebook, model.world_model, model.policy):
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())
    block = type(model.backbone.decoder.layers[0])
    assert type(model.inverse_dynamics.blocks.layers[0]) is block
    assert type(model.policy.blocks.layers[0]) is block


def test_idm_code_for_step_t_sees_next_token_but_not_later():
    model = tiny_model()
    ids = torch.randint(0, 256, (1, 10))
    t = 4

    def step_logits(tokens):
        hidden, _ = model.hidden_states(tokens)
        return model.inverse_dynamics.code_logits(hidden)[0, t]

    reference = step_logits(ids)
    later = ids.clone()
    later[0, t + 2 :] = (later[0, t + 2 :] + 7) % 256
    assert torch.equal(step_logits(later), reference)

    codes = set()
    for token in range(0, 256, 8):
        changed = ids.clone()
        changed[0, t + 1] = token
        logits = step_logits(changed)
        if token != ids[0, t + 1]:
            assert not torch.allclose(logits, reference)
        codes.add(int(logits.argmax()))
    assert len(codes) > 1, "the code for step t never changed with x_{t+1}"


def test_policy_is_causal_without_look_ahead():
    model = tiny_model()
    ids = torch.randint(0, 256, (1, 10))
    hidden, _ = model.hidden_states(ids)
    changed = ids.clone()
    changed[0, 5] = (changed[0, 5] + 1) % 256
    hidden2, _ = model.hidden_states(changed)
    logits, _ = model.policy_logits(hidden)
    logits2, _ = model.policy_logits(hidden2)
    assert torch.equal(logits[0, :5], logits2[0, :5])
    assert not torch.allclose(logits[0, 5], logits2[0, 5])


@pytest.mark.parametrize("subtract_state", [True, False])
def test_world_model_readout(subtract_state):
    model = tiny_model(cola=CoLAConfig(8, 1, 1, 1, subtract_state=subtract_state))
    hidden, _ = model.hidden_states(torch.randint(0, 256, (2, 6)))
    codes = torch.randint(0, 8, (2, 6))
    state = model.world_model(hidden, model.codebook.weight.T[codes])
    readout = model.backbone.final_norm(state) - (hidden if subtract_state else 0)
    expected = model.backbone.lm_head(readout)
    torch.testing.assert_close(model.world_model_logits(hidden, codes), expected)
    # integer codes and one-hot codes embed identically
    one_hot = torch.nn.functional.one_hot(codes, 8).float()
    torch.testing.assert_close(model.world_model_logits(hidden, one_hot), expected)


def test_published_defaults():
    config = CoLAConfig()
    assert (config.num_codes, config.idm_layers, config.policy_layers) == (64, 4, 8)
    assert config.merge_layers == 2 and config.subtract_state
    model = tiny_model(cola=config)
    assert len(model.inverse_dynamics.blocks.layers) == 4
    assert len(model.policy.blocks.layers) == 8
    merge = model.world_model.layers[0]
    assert merge.gate_proj.weight.shape == (TINY["intermediate_size"], 2 * TINY["hidden_size"])
    assert merge.down_proj.weight.shape == (TINY["hidden_size"], TINY["intermediate_size"])
    assert model.codebook.weight.shape == (TINY["hidden_size"], 64)
