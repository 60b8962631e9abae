"""Forked node states against generation from scratch, and the backbone positions they cost."""

import pytest
import torch

from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout.reference import generate_without_cache
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.search.q_model import QModel, QModelConfig
from cola_lightning.search.state import TreeDecoder
from tests.conftest import tiny_model

GREEDY = Sampler(greedy=True)
PAD = 256


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = tiny_model().eval()
    q_model = QModel(model.backbone.config, QModelConfig(layers=1), model.num_codes).eval()
    torch.nn.init.normal_(q_model.head.weight)  # a zero head would make every Q equal
    return model, q_model


@pytest.fixture
def decoder(models):
    model, q_model = models
    return TreeDecoder(model, byte_tokenizer(), q_model, stop_at_eos=False)


def scratch(model, ids: list[int], steps: int, latent: bool = True) -> dict[str, list]:
    """Greedy generation of `steps` tokens after `ids`, every state recomputed."""
    out = generate_without_cache(model, [ids], steps, GREEDY, GREEDY, PAD, latent=latent)
    return {name: values[0].tolist() for name, values in out.items()}


def check_forced_step(model, q_model, ids: list[int], cont, code: int) -> None:
    """The first step of `cont` (code forced) from scratch; then its greedy steps."""
    prefix = torch.tensor([ids])
    with torch.inference_mode():
        hidden, _ = model.hidden_states(prefix)
        policy, _ = model.policy_logits(hidden)
        logits = model.world_model_logits(hidden[:, -1:], torch.tensor([[code]]))[0, -1]
        q_taken = q_model(hidden)[0][0, -1, code]
    assert cont.codes[0] == code and cont.tokens[0] == int(logits.argmax())
    assert cont.code_logprobs[0] == pytest.approx(float(policy[0, -1].log_softmax(-1)[code]))
    assert cont.token_logprobs[0] == pytest.approx(float(logits.log_softmax(-1).max()))
    if len(cont.tokens) == 1:
        assert cont.q_taken == pytest.approx(float(q_taken), abs=1e-5)
        return
    rest = scratch(model, ids + cont.tokens[:1], len(cont.tokens) - 1)
    assert cont.tokens[1:] == rest["tokens"] and cont.codes[1:] == rest["codes"]
    assert cont.code_logprobs[1:] == pytest.approx(rest["code_logprobs"], abs=1e-5)
    assert cont.token_logprobs[1:] == pytest.approx(rest["token_logprobs"], abs=1e-5)


def check_state(model, q_model, ids: list[int], state) -> None:
    """A node state's h, policy logits and Q at its last token equal a forward over its text."""
    with torch.inference_mode():
        hidden, _ = model.hidden_states(torch.tensor([ids]))
        policy, _ = model.policy_logits(hidden)
        q, _ = q_model(hidden)
    assert state.length == len(ids)
    torch.testing.assert_close(state.hidden, hidden[0, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.policy_last, policy[0, -1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(state.q_last, q[0, -1], atol=1e-5, rtol=1e-4)


def test_forked_children_continue_as_generation_from_scratch(models, decoder):
    model, q_model = models
    prompt = byte_tokenizer()("Q: 12+7=", add_special_tokens=False).input_ids
    (root,) = decoder.roots([prompt])
    (parent,) = decoder.continue_states([root], [3])
    greedy = scratch(model, prompt, 7)
    assert parent.tokens == greedy["tokens"][:3] and parent.codes == greedy["codes"][:3]
    check_state(model, q_model, prompt + parent.tokens, parent.state)
    frozen = [k.clone() for s in parent.state.chain for k, _ in s.kv["backbone"]]

    first = int(parent.state.policy_last.argmax())
    others = [c for c in range(model.num_codes) if c != first][:2]
    children = decoder.continue_states([parent.state] * 3, [4] * 3, first_codes=[first, *others])
    # the greedy first code: the child is the unforked generation's last four steps
    assert children[0].tokens == greedy["tokens"][3:] and children[0].codes == greedy["codes"][3:]
    assert children[0].code_logprobs == pytest.approx(greedy["code_logprobs"][3:], abs=1e-5)
    for child, code in zip(children, [first, *others], strict=True):
        check_forced_step(model, q_model, prompt + parent.tokens, child, code)
        check_state(model, q_model, prompt + parent.tokens + child.tokens, child.state)
        # a child's chain is its parent's segments (shared, not copied) plus its own edge
        assert all(a is b for a, b in zip(child.state.chain, parent.state.chain, strict=False))
        assert len(child.state.chain) == len(parent.state.chain) + 1
    # continuing the children left the parent's cache rows untouched
    after = [k for s in parent.state.chain for k, _ in s.kv["backbone"]]
    assert all(torch.equal(a, b) for a, b in zip(frozen, after, strict=True))


def test_nodes_of_different_lengths_continue_in_one_batch(models, decoder):
    model, q_model = models
    prompt = byte_tokenizer()("7*6=", add_special_tokens=False).input_ids
    (root,) = decoder.roots([prompt])
    (parent,) = decoder.continue_states([root], [2])
    # the root (4 positions) and its child (6) share a left-padded batch
    from_root, from_parent = decoder.continue_states([root, parent.state], [5, 3])
    greedy = scratch(model, prompt, 5)
    assert from_root.tokens == greedy["tokens"] and from_root.codes == greedy["codes"]
    assert from_parent.tokens == greedy["tokens"][2:] and from_parent.codes == greedy["codes"][2:]
    assert from_root.code_logprobs == pytest.approx(greedy["code_logprobs"], abs=1e-5)
    check_state(model, q_model, prompt + from_parent.state.generated, from_parent.state)


def test_forking_computes_the_prefix_once(decoder):
    prompt = byte_tokenizer()("Q: 3+4=", add_special_tokens=False).input_ids  # 7 positions
    (root,) = decoder.roots([prompt])
    assert decoder.cost.backbone_tokens == 7
    (parent,) = decoder.continue_states([root], [3])
    assert decoder.cost.backbone_tokens == 7 + 3  # every generated token is fed once
    decoder.continue_states([parent.state] * 4, [5] * 4, first_codes=[0, 1, 2, 3])
    # four children of 5 tokens each: only their own positions, not the 10 of the prefix again
    assert decoder.cost.backbone_tokens == 7 + 3 + 4 * 5
    assert decoder.cost.world_model_evals == 3 + 4 * 5


def test_token_level_children_continue_as_the_plain_backbone_from_scratch(models, decoder):
    model, _ = models
    prompt = byte_tokenizer()("2+2=", add_special_tokens=False).input_ids
    (root,) = decoder.roots([prompt], latent=False)
    branch = [52, 10]
    children = decoder.continue_states([root, root], [3, 3], latent=False, first_tokens=branch)
    for child, token in zip(children, branch, strict=True):
        rest = scratch(model, prompt + [token], 2, latent=False)
        assert child.tokens == [token] + rest["tokens"] and child.codes == []
        assert child.token_logprobs[1:] == pytest.approx(rest["token_logprobs"], abs=1e-5)
    assert decoder.cost.backbone_tokens == 4 + 2 * 3
