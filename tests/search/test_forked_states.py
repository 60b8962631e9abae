"""Forked search states against the engine, in both world-model forms; searches on the inject form.

A continuation from a forked node must produce exactly what the engine generates from the prompt
with the same codes forced: the node's chain of cache segments (backbone, policy and, in the
inject form, world model) stands in for recomputing its prefix.
"""

import pytest
import torch

from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.q_model import QModel, QModelConfig
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.search.searcher import Searcher
from cola_lightning.search.state import TreeDecoder
from tests.conftest import tiny_model
from tests.models.inject_models import inject_model

# ragged prompts: the longest, a short one, and one token (an empty world-model prefix)
PROMPTS = ["Mia has 3 apples.", "Q: 2+2?", "A"]
MODELS = {"merge": lambda: tiny_model().eval(), "inject": inject_model}


@pytest.mark.parametrize("form", ["merge", "inject"])
def test_continuing_forked_nodes_equals_engine_generation_with_the_same_codes(form):
    model, tokenizer = MODELS[form](), byte_tokenizer()
    decoder = TreeDecoder(model, tokenizer, stop_at_eos=False)
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS]
    roots = decoder.roots(prompts)
    sampled = Sampler(temperature=1.0)
    first = decoder.continue_states(
        roots, [3, 2, 4], code=sampled, generator=torch.Generator().manual_seed(0)
    )
    child = first[0].state
    # two forks of one child share its chain; a root and a one-token prompt ride in the batch
    second = decoder.continue_states(
        [child, child, roots[1], first[2].state], [5, 4, 6, 3], first_codes=[1, 6, 2, 0]
    )
    config = GenerationConfig(max_new_tokens=16, token=Sampler(greedy=True), stop_at_eos=False)
    engine = Generator(model, tokenizer, config)
    paths = [(0, first[0]), (0, first[0]), (1, None), (2, first[2])]
    for (prompt, before), after in zip(paths, second, strict=True):
        steps = ([before] if before else []) + [after]
        codes = [c for step in steps for c in step.codes]
        expected = engine.generate([prompts[prompt]], codes=[codes])
        assert expected.token_ids[0] == [t for step in steps for t in step.tokens]
        logprobs = [lp for step in steps for lp in step.token_logprobs]
        torch.testing.assert_close(torch.tensor(logprobs), torch.tensor(expected.token_logprobs[0]))
    assert child.generated == first[0].tokens  # continuing a node leaves it as it was


@pytest.mark.parametrize("node", ["child", "one_token_root"])
def test_inject_candidate_tokens_equal_one_step_continuations(node):
    """Expansion's multi-candidate pass over the node's world-model cache vs cached decoding."""
    model, tokenizer = inject_model(), byte_tokenizer()
    decoder = TreeDecoder(model, tokenizer, stop_at_eos=False)
    prompt = tokenizer(PROMPTS[0] if node == "child" else "A", add_special_tokens=False).input_ids
    (state,) = decoder.roots([prompt])
    if node == "child":
        (cont,) = decoder.continue_states([state], [3])
        state = cont.state
    codes = list(range(model.num_codes))
    steps = decoder.continue_states([state] * len(codes), [1] * len(codes), first_codes=codes)
    assert decoder.candidate_tokens(state, codes) == [step.tokens[0] for step in steps]


@pytest.mark.parametrize("method", ["mcts_q", "mcts_token"])
def test_searches_run_on_the_inject_form(method):
    model, tokenizer = inject_model(), byte_tokenizer()
    q_model = QModel(model.backbone.config, QModelConfig(layers=1), model.num_codes).eval()
    config = SearchConfig(
        method=method,
        rounds=2,
        depth=10,
        root_breadth=2,
        breadth=2,
        greedy_extension=2,
        simulation_tokens=4,
        chunk_tokens=3,
        max_chunks=2,
        answer_tokens=6,
    )
    searcher = Searcher(model, tokenizer, config, Scorer(ScorerConfig("agreement")), q_model)
    result = searcher.search("Q: 2+3?", {}, torch.Generator().manual_seed(0))
    nodes = list(result.tree.walk())
    assert len(nodes) >= 3 and result.cost.nodes == len(nodes)
    assert result.tokens and result.response == tokenizer.decode(result.tokens)
    # every child's text extends its parent's: forking kept each prefix
    assert all(n.state.generated[: len(n.parent.state.generated)] == n.parent.state.generated
               for n in nodes[1:])  # fmt: skip


def test_inject_token_level_nodes_continue_as_the_plain_backbone_generates():
    """Token-level roots hold the plain LM's states, not the layer-L states of the latent parts."""
    model, tokenizer = inject_model(), byte_tokenizer()
    decoder = TreeDecoder(model, tokenizer, stop_at_eos=False)
    prompts = [tokenizer(p, add_special_tokens=False).input_ids for p in PROMPTS[:2]]
    roots = decoder.roots(prompts, latent=False)
    conts = decoder.continue_states(roots, [5, 5], latent=False)
    config = GenerationConfig(max_new_tokens=5, token=Sampler(greedy=True), stop_at_eos=False)
    expected = Generator(model, tokenizer, config).generate(prompts, mode="token")
    assert [c.tokens for c in conts] == expected.token_ids
