"""The generation engine in the inject form: its world-model cache against recomputation."""

import pytest
import torch

from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.reference import generate_without_cache
from cola_lightning.rollout.sampling import Sampler
from tests.models.inject_models import inject_model

PROMPTS = ["Mia has 3 apples.", "Q: 2+2?", "A longer prompt about marbles and boxes."]


@pytest.mark.parametrize("greedy_codes", [True, False])
def test_inject_cached_generation_equals_recomputation(greedy_codes):
    model = inject_model()
    code, token = Sampler(greedy=greedy_codes, temperature=0.8), Sampler(greedy=True)
    config = GenerationConfig(max_new_tokens=10, code=code, token=token, stop_at_eos=False)
    gen = Generator(model, byte_tokenizer(), config)
    prompts = gen.encode(PROMPTS)
    rollout = gen.generate(prompts, generator=torch.Generator().manual_seed(3))
    expected = generate_without_cache(
        model, prompts, 10, code, token, pad_id=256, generator=torch.Generator().manual_seed(3)
    )
    assert rollout.token_ids == expected["tokens"].tolist()
    assert rollout.codes == expected["codes"].tolist()
    torch.testing.assert_close(torch.tensor(rollout.token_logprobs), expected["token_logprobs"])
