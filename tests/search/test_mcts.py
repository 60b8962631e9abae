"""The tree searches on a tiny random model: seeds, MCTS-Q's breadth and expansion rule, and
every constant of `SearchConfig` changing what it should."""

from dataclasses import replace

import pytest
import torch

from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.search import state as search_state
from cola_lightning.search import tree
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.q_model import QModel, QModelConfig
from cola_lightning.search.scorers import Scorer, ScorerConfig, final_answer
from cola_lightning.search.searcher import Searcher, SearchResult
from tests.conftest import tiny_model

PROMPT = "Q: 5+3="
# Small budgets of the reference's rules; the q_value scorer gives every rollout its own R.
BASE = SearchConfig(
    method="mcts_q", rounds=8, depth=12, greedy_extension=2, simulation_tokens=4, answer_tokens=4
)


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    model = tiny_model().eval()
    with torch.no_grad():  # codes that matter: a random world model maps most codes to one token
        model.codebook.weight.mul_(20)
    q_model = QModel(model.backbone.config, QModelConfig(layers=1), model.num_codes).eval()
    torch.nn.init.normal_(q_model.head.weight, std=0.05)
    return model, q_model


def search(models, seed: int = 0, stop_strings=None, **changes) -> SearchResult:
    model, q_model = models
    config = replace(BASE, **changes)
    scorer = Scorer(ScorerConfig(kind="q_value" if config.latent else "agreement"))
    searcher = Searcher(model, byte_tokenizer(), config, scorer, q_model, stop_strings)
    return searcher.search(PROMPT, {"answer": "8"}, torch.Generator().manual_seed(seed))


def shape(result: SearchResult) -> list[tuple]:
    """Every node breadth-first: its text, visits, value, score and rollout."""
    return [
        (n.state.generated, n.visits, n.value, n.reward, n.rollout_tokens)
        for n in result.tree.walk()
    ]


def edges(result: SearchResult) -> list[int]:
    return [n.depth - n.parent.depth for n in result.tree.walk() if n.parent is not None]


@pytest.mark.parametrize("method", ["mcts_q", "mcts", "mcts_token"])
def test_the_same_seed_gives_the_same_tree(models, method):
    changes = dict(method=method, rounds=4, chunk_tokens=2, max_chunks=2)
    first, again = search(models, **changes), search(models, **changes)
    assert shape(first) == shape(again) and first.response == again.response
    assert first.cost.backbone_tokens == again.cost.backbone_tokens
    if method != "mcts_q":  # these sample (codes; rollout tokens): another seed, another tree
        assert shape(search(models, seed=1, **changes)) != shape(first)


def test_mcts_q_breadth_and_its_expansion_by_the_most_probable_new_code(models):
    model, _ = models
    result = search(models, rounds=10, c_puct=50.0)  # a large c_puct fills the root quickly
    root, below = result.tree, list(result.tree.walk())[1:]
    assert len(root.children) == 4  # b1
    assert max(len(n.children) for n in below) == 2  # b2
    # the root's children: codes by falling policy probability, skipping a code whose greedy
    # token repeats an earlier child's (its text would be a sibling's)
    probs = root.state.policy_last.softmax(-1)
    order = probs.argsort(descending=True).tolist()
    with torch.inference_mode():
        logits = model.candidate_logits(root.state.hidden[None, None], torch.tensor([order]))
    expected, seen = [], set()
    for code, token in zip(order, logits[0].argmax(-1).tolist(), strict=True):
        if token not in seen:
            expected.append(code)
            seen.add(token)
    assert [c.label for c in root.children] == expected[:4]
    assert root.tries == order.index(expected[3]) + 1
    for child in root.children:  # one-token edges: the prior is the code's probability
        assert child.depth == 1 and child.prior == pytest.approx(float(probs[child.label]))


def test_mcts_q_honours_each_constant(models):
    base = search(models)
    assert base.cost.rounds == 8 and len(base.tree.children) == 2
    assert max(len(n.children) for n in base.tree.walk()) == 2
    assert set(edges(base)) == {1}  # no edge is confident enough for the greedy extension

    assert search(models, rounds=3).cost.rounds == 3
    shallow = search(models, depth=2)
    assert max(n.depth for n in shallow.tree.walk()) == 2
    assert all(n.terminal for n in shallow.tree.walk() if n.depth == 2)
    assert len(search(models, root_breadth=1).tree.children) == 1
    assert max(len(n.children) for n in search(models, breadth=1).tree.walk() if n.parent) == 1
    assert shape(search(models, c_puct=5.0)) != shape(base)
    assert shape(search(models, gamma=0.5)) != shape(base)
    assert all(n.tries <= 1 for n in search(models, max_tries=1).tree.walk())
    # every edge extended greedily by greedy_extension tokens (below the depth limit of 12)
    confident = search(models, uncertainty_threshold=1e9)
    assert set(edges(confident)) == {3}
    assert set(edges(search(models, uncertainty_threshold=1e9, greedy_extension=1))) == {2}
    short = search(models, simulation_tokens=2)
    assert all(len(n.rollout_tokens) <= n.depth + 2 for n in short.tree.walk())
    assert any(len(n.rollout_tokens) == n.depth + 4 for n in base.tree.walk())


def test_mcts_q_answers_by_its_answer_rule(models):
    result = search(models)
    chosen, use_rollout = tree.choose_answer_q(result.tree, BASE.gamma)
    assert use_rollout and result.tokens == chosen.rollout_tokens  # the best-scored rollout
    assert result.score == chosen.reward and result.cost.nodes == len(list(result.tree.walk()))
    for answer_tokens in (2, 5):  # at depth 2 a terminal's q beats every rollout's R
        result = search(models, depth=2, answer_tokens=answer_tokens)
        chosen, use_rollout = tree.choose_answer_q(result.tree, BASE.gamma)
        assert not use_rollout and chosen.terminal and not chosen.finished
        # its text, unfinished at the depth limit, continued greedily by answer_tokens
        assert result.tokens[:2] == chosen.state.generated
        assert len(result.tokens) == 2 + answer_tokens and result.score == chosen.reward


@pytest.mark.parametrize("method", ["mcts_q", "mcts", "mcts_token"])
def test_agreement_is_scored_over_all_the_trees_rollouts(models, method):
    # Scored as they come, the root's rollout (the first) has agreement 1.0 whenever it has an
    # answer, and no later one can beat it: the answer is chosen on the whole tree's rollouts.
    model, q_model = models
    config = replace(BASE, method=method, rounds=6, simulation_tokens=12, depth=40, chunk_tokens=4)
    scorer = Scorer(ScorerConfig(kind="agreement"))
    searcher = Searcher(model, byte_tokenizer(), config, scorer, q_model, None)
    result = searcher.search(PROMPT, {"answer": "8"}, torch.Generator().manual_seed(0))
    scored = [n for n in result.tree.walk() if n.reward is not None]
    answers = [final_answer(n.rollout) for n in scored]
    shares = [0.0 if a is None else answers.count(a) / len(answers) for a in answers]
    assert [n.reward for n in scored] == shares
    if method != "mcts_q":  # MCTS-Q's answer rule may take a terminal node's text instead
        majority = max(set(answers) - {None}, key=answers.count)
        assert answers.count(majority) >= 3  # plain MCTS scored as it came would pick another
        assert final_answer(result.response) == majority and result.score == max(shares)


def test_mcts_q_stops_at_the_first_finished_expansion_unless_told_not_to(models):
    first = search(models).tree.children[0].state.generated[0]
    stop = [byte_tokenizer().decode([first])]  # the first expansion's text ends at once
    assert stop[0].isprintable()
    assert search(models, stop_strings=stop).cost.rounds == 1
    assert search(models, stop_strings=stop, stop_on_eos=False).cost.rounds == 8


def test_plain_and_token_mcts_and_best_of_n_honour_their_constants(models):
    model, _ = models
    plain = search(models, method="mcts", rounds=5, chunk_tokens=3, max_chunks=2)
    assert set(edges(plain)) == {3} and len(plain.tree.children) == 4
    assert max(n.depth for n in plain.tree.walk()) == 6
    assert all(n.terminal for n in plain.tree.walk() if n.depth == 6)
    assert plain.cost.rounds == 5
    token = search(models, method="mcts_token", rounds=2, chunk_tokens=2, breadth=3)
    root = token.tree
    prompt = byte_tokenizer()(PROMPT, add_special_tokens=False).input_ids
    with torch.inference_mode():
        hidden, _ = model.token_states(torch.tensor([prompt]))
        top = model.token_logits(hidden[:, -1:])[0, -1].topk(4).indices.tolist()
    assert [c.label for c in root.children] == top  # the backbone's top-b1 tokens
    assert all(len(c.children) in (0, 3) for c in root.children)
    assert token.cost.world_model_evals == 0
    best_of = search(models, method="best_of_n_latent", samples=3, simulation_tokens=5)
    assert len(best_of.tree.children) == 3 and set(edges(best_of)) <= {1, 2, 3, 4, 5}
    assert best_of.cost.backbone_tokens == len(prompt) + 3 * 5


@pytest.mark.parametrize(
    ("method", "greedy", "temperature"),
    [("best_of_n_latent", "greedy", "code_temperature"),
     ("best_of_n_token", "greedy_token", "token_temperature")],
)  # fmt: skip
def test_best_of_n_samples_at_its_temperature(models, method, greedy, temperature):
    budget = dict(samples=3, simulation_tokens=5)
    reference = search(models, method=greedy, simulation_tokens=5).tokens
    cold = search(models, method=method, **budget, **{temperature: 1e-4})
    assert all(n.state.generated == reference for n in cold.tree.children)
    hot = search(models, method=method, **budget, **{temperature: 1.0})
    assert len({tuple(n.state.generated) for n in hot.tree.children}) == 3


@pytest.mark.parametrize(
    "method", ["mcts_q", "mcts", "mcts_token", "best_of_n_latent", "best_of_n_token", "greedy"]
)
def test_searching_several_problems_at_once_equals_searching_each_alone(
    models, method, monkeypatch
):
    """search_many batches the problems' decodes; each tree, answer and cost is as alone."""
    model, q_model = models
    config = replace(BASE, method=method, rounds=4, chunk_tokens=2, max_chunks=2, samples=3)
    scorer = Scorer(ScorerConfig(kind="q_value" if config.latent else "agreement"))
    searcher = Searcher(model, byte_tokenizer(), config, scorer, q_model)
    prompts = [PROMPT, "Q: 12+30=", "Hi"]  # ragged: one batch pads them differently
    records = [{"answer": "8"}, {"answer": "42"}, {"answer": "0"}]
    seeds = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    alone = [searcher.search(p, r, g) for p, r, g in zip(prompts, records, seeds(), strict=True)]
    batches = []  # the requests of each batched call (the real function runs)

    def recorded(requests):
        batches.append(len(requests))
        return search_state.continue_requests(requests)

    monkeypatch.setattr("cola_lightning.search.searcher.continue_requests", recorded)
    together = searcher.search_many(prompts, records, seeds())
    assert batches[0] == 3  # the three problems' first decodes ran as one call
    for one, many in zip(alone, together, strict=True):
        assert one.response == many.response
        for node, twin in zip(shape(one), shape(many), strict=True):  # padding: float noise only
            assert (node[0], node[1], node[4]) == (twin[0], twin[1], twin[4])
            assert node[2:4] == pytest.approx(twin[2:4], abs=1e-5)
        costs = [dict(r.cost.as_dict(), wall_s=0) for r in (one, many)]
        assert costs[0] == costs[1]
