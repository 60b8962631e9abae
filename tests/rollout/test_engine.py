"""The generation engine against recomputation from scratch, padding, forcing and log-probs."""

import pytest
import torch

from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout.engine import GenerationConfig, Generator, left_pad
from cola_lightning.rollout.kv_cache import PreallocatedLayer
from cola_lightning.rollout.reference import generate_without_cache
from cola_lightning.rollout.sampling import Sampler, prompt_streams
from tests.conftest import tiny_model

PROMPTS = ["Mia has 3 apples.", "Q: 2+2?", "A longer prompt about marbles and boxes."]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return tiny_model().eval()


def engine(model, **config) -> Generator:
    return Generator(model, byte_tokenizer(), GenerationConfig(stop_at_eos=False, **config))


@pytest.mark.parametrize("greedy_codes", [True, False])
def test_cached_generation_equals_recomputation(model, greedy_codes):
    code, token = Sampler(greedy=greedy_codes, temperature=0.8), Sampler(greedy=True)
    gen = engine(model, max_new_tokens=12, code=code, token=token)
    prompts = gen.encode(PROMPTS)
    rollout = gen.generate(prompts, generator=torch.Generator().manual_seed(3))
    expected = generate_without_cache(
        model, prompts, 12, code, token, pad_id=256, generator=torch.Generator().manual_seed(3)
    )
    assert rollout.token_ids == expected["tokens"].tolist()
    assert rollout.codes == expected["codes"].tolist()
    torch.testing.assert_close(torch.tensor(rollout.token_logprobs), expected["token_logprobs"])
    torch.testing.assert_close(torch.tensor(rollout.code_logprobs), expected["code_logprobs"])


@pytest.mark.parametrize("mode", ["latent", "token"])
def test_prompt_alone_equals_prompt_in_padded_batch(model, mode):
    gen = engine(model, max_new_tokens=10, code=Sampler(greedy=True))
    batch = gen.generate(PROMPTS, mode=mode)
    for i, prompt in enumerate(PROMPTS):
        alone = gen.generate([prompt], mode=mode)
        assert batch.token_ids[i] == alone.token_ids[0]
        assert batch.codes is None or batch.codes[i] == alone.codes[0]
        torch.testing.assert_close(
            torch.tensor(batch.token_logprobs[i]),
            torch.tensor(alone.token_logprobs[0]),
            atol=1e-4,
            rtol=1e-4,
        )


def test_forced_codes_are_reproduced_and_greedy_is_deterministic(model):
    gen = engine(model, max_new_tokens=20, code=Sampler(greedy=True))
    forced = [[1, 2, 3, 4, 5], [7, 7, 0]]
    rollout = gen.generate(PROMPTS[:2], codes=forced)
    assert rollout.codes == forced
    assert [len(t) for t in rollout.token_ids] == [5, 3]
    fixed = gen.generate(PROMPTS[:2], codes=6)
    assert all(code == 6 for row in fixed.codes for code in row)
    assert gen.generate(PROMPTS).token_ids == gen.generate(PROMPTS).token_ids
    with pytest.raises(ValueError, match=r"lie in \[0, 8\)"):
        gen.generate(PROMPTS[:1], codes=[[9]])


def test_returned_logprobs_equal_recomputation_from_full_sequence(model):
    gen = engine(model, max_new_tokens=8, code=Sampler(temperature=1.3))
    rollout = gen.generate(PROMPTS[:1], generator=torch.Generator().manual_seed(0))
    prompt, new = rollout.prompt_ids[0], rollout.token_ids[0]
    ids = torch.tensor([prompt + new])
    with torch.no_grad():
        hidden, _ = model.hidden_states(ids)
        steps = slice(len(prompt) - 1, len(prompt) - 1 + len(new))
        policy, _ = model.policy_logits(hidden)
        codes = torch.tensor([rollout.codes[0]])
        code_lp = torch.log_softmax(policy[0, steps] / 1.3, -1).gather(-1, codes.T)[:, 0]
        logits = model.world_model_logits(hidden[:, steps], codes)[0]
        token_lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(new)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(rollout.code_logprobs[0]), code_lp)
    torch.testing.assert_close(torch.tensor(rollout.token_logprobs[0]), token_lp)


def test_codes_from_reference_are_the_idm_codes_and_replay_them(model):
    gen = engine(model, max_new_tokens=50)
    reference = " then 4 more."
    codes = gen.codes_from_reference(PROMPTS[:1], [reference])[0]
    assert len(codes) == len(reference.encode())
    full = torch.tensor([list((PROMPTS[0] + reference).encode())])
    with torch.no_grad():
        hidden, _ = model.hidden_states(full)
        idm = model.inverse_dynamics.code_logits(hidden).argmax(-1)[0]
    assert codes == idm[len(PROMPTS[0]) - 1 :].tolist()
    replay = gen.generate(PROMPTS[:1], codes=[codes])
    assert replay.codes[0] == codes and len(replay.token_ids[0]) == len(codes)


def test_stops_on_eos_stop_string_and_length(model):
    tokenizer = byte_tokenizer()
    gen = Generator(model, tokenizer, GenerationConfig(max_new_tokens=6, code=Sampler(greedy=True)))
    plain = gen.generate(PROMPTS[:1])
    assert plain.finish == ["length"] and len(plain.token_ids[0]) == 6
    first = plain.token_ids[0][0]
    stop = Generator(
        model,
        tokenizer,
        GenerationConfig(max_new_tokens=6, code=Sampler(greedy=True), stop_strings=[chr(first)]),
    ).generate(PROMPTS[:1])
    assert stop.finish == ["stop"] and len(stop.token_ids[0]) == 1
    tokenizer.eos_token_id = first
    eos = Generator(model, tokenizer, gen.config).generate(PROMPTS[:1])
    assert eos.finish == ["eos"] and eos.token_ids[0] == [first]


def test_bfloat16_generation():
    model = tiny_model().to(torch.bfloat16).eval()
    rollout = engine(model, max_new_tokens=5).generate(PROMPTS[:2])
    assert all(len(t) == 5 for t in rollout.token_ids)
    assert all(0 <= c < 8 for row in rollout.codes for c in row)


def test_left_pad():
    ids, mask = left_pad([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="at least one token"):
        left_pad([[]], 0)


def test_sampler_truncation():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0]])
    assert torch.isinf(Sampler(top_k=2).truncate(logits)[0, 2:]).all()
    kept = ~torch.isinf(Sampler(top_p=0.8).truncate(logits))
    probs = logits.softmax(-1)[0]
    assert kept.tolist() == [[True, True, False, False]] and probs[0] < 0.8 <= probs[:2].sum()
    generator = torch.Generator().manual_seed(0)
    assert all(Sampler(top_k=1).choose(logits, generator) == 0 for _ in range(10))
    with pytest.raises(ValueError, match="temperature"):
        Sampler(temperature=0)


@pytest.mark.parametrize("mode", ["latent", "token"])
def test_repeated_prompts_are_prefilled_once_and_equal_recomputation(model, mode):
    """An RL group repeats its prompt: the engine prefills it once and fans the caches out."""
    sampler = Sampler(temperature=0.9)
    gen = engine(model, max_new_tokens=9, code=sampler, token=sampler)
    prompts = gen.encode([PROMPTS[0], PROMPTS[0], PROMPTS[2], PROMPTS[0], PROMPTS[2]])

    def streams():
        return [torch.Generator().manual_seed(seed) for seed in range(len(prompts))]

    positions = []
    hook = model.backbone.register_forward_pre_hook(
        lambda _, args: positions.append(args[0].numel()) if args and args[0] is not None else None
    )
    rollout = gen.generate(prompts, mode=mode, generator=streams())
    hook.remove()
    width = max(len(p) for p in prompts)
    assert sum(positions) == 2 * width + 8 * len(prompts)  # two distinct prompts, 8 fed tokens
    expected = generate_without_cache(
        model, prompts, 9, sampler, sampler, 256, streams(), latent=mode == "latent"
    )
    assert rollout.token_ids == expected["tokens"].tolist()
    torch.testing.assert_close(torch.tensor(rollout.token_logprobs), expected["token_logprobs"])
    if mode == "latent":
        assert rollout.codes == expected["codes"].tolist()
        torch.testing.assert_close(torch.tensor(rollout.code_logprobs), expected["code_logprobs"])
    assert len({tuple(t) for t in rollout.token_ids[:2]}) == 2  # own streams after the fan-out


def test_kept_states_are_the_backbone_states_of_the_whole_sequence(model):
    gen = engine(model, max_new_tokens=7, code=Sampler(), stop_strings=["e"])
    rollout = gen.generate(PROMPTS, keep_states=True, generator=torch.Generator().manual_seed(1))
    for prompt, tokens, states in zip(
        rollout.prompt_ids, rollout.token_ids, rollout.states, strict=True
    ):
        with torch.no_grad():
            hidden, _ = model.hidden_states(torch.tensor([prompt + tokens]))
        torch.testing.assert_close(states, hidden[0, :-1], atol=1e-5, rtol=1e-5)
    assert gen.generate(PROMPTS).states is None


def test_preallocated_cache_layer_grows_and_equals_concatenation():
    layer = PreallocatedLayer(capacity=2)
    chunks = [torch.randn(2, 3, n, 4) for n in (1, 2, 3)]
    for chunk in chunks:
        keys, values = layer.update(chunk, -chunk)
    torch.testing.assert_close(keys, torch.cat(chunks, dim=2))
    torch.testing.assert_close(values, -torch.cat(chunks, dim=2))
    layer.batch_select_indices(torch.tensor([1, 1, 0]))
    assert torch.equal(layer.keys[0], layer.keys[1]) and layer.keys.shape == (3, 3, 6, 4)


def test_prompt_streams_depend_on_the_prompt_and_its_copy_not_the_batch():
    """Search, solution sampling and RL draw per prompt: any batch or rank draws the same."""
    batch = prompt_streams(["a", "b", "a"], "cpu", 5, 0)
    alone = prompt_streams(["b"], "cpu", 5, 0)
    draws = [torch.rand(4, generator=g) for g in batch]
    assert torch.equal(draws[1], torch.rand(4, generator=alone[0]))
    assert not torch.equal(draws[0], draws[2])  # the second copy of a prompt has its own stream
    assert not torch.equal(draws[1], torch.rand(4, generator=prompt_streams(["b"], "cpu", 6, 0)[0]))
