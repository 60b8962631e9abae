"""Bad search and Q-learning input gets an error that names the problem and the fix."""

import json

import pytest
import torch

from cola_lightning.data.solutions import SolutionDataModule
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.q_model import QModel, QModelConfig, load_q_model
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.search.searcher import Searcher
from cola_lightning.stages.q_learning import QLearningModule
from cola_lightning.stages.search import SearchModule
from tests.conftest import TINY_COLA, tiny_model, tiny_spec


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"method": "beam"}, "Unknown search method 'beam'; use one of"),
        ({"breadth": 0}, r"search.breadth must be >= 1, got 0"),
        ({"root_breadth": 0}, r"search.root_breadth must be >= 1"),
        ({"rounds": 0}, r"search.rounds must be >= 1"),
        ({"depth": 0}, r"search.depth must be >= 1"),
        ({"gamma": 1.5}, r"gamma in \[0, 1\]"),
    ],
)
def test_bad_search_settings(fields, message):
    with pytest.raises(ValueError, match=message):
        SearchConfig(**fields)


def test_unknown_scorer_and_breadth_beyond_k():
    with pytest.raises(ValueError, match="Unknown scorer 'vote'; use one of"):
        ScorerConfig(kind="vote")
    with pytest.raises(ValueError, match="exceeds the K=8 codes .* lower root_breadth"):
        SearchModule(tiny_spec(), cola=TINY_COLA, search={"root_breadth": 9})
    SearchConfig(method="mcts_token", root_breadth=9).check_codes(8)  # tokens are not codes


def test_searches_that_need_a_fitting_q_model():
    model, tokenizer = tiny_model(), byte_tokenizer()
    agreement = Scorer(ScorerConfig())
    with pytest.raises(ValueError, match="mcts_q needs a Q-model: set `q_from`"):
        Searcher(model, tokenizer, SearchConfig(), agreement)
    other_k = QModel(model.backbone.config, QModelConfig(layers=1), num_codes=4)
    with pytest.raises(ValueError, match="scores 4 codes but the CoLA model has K=8"):
        Searcher(model, tokenizer, SearchConfig(), agreement, other_k)
    q_value = Scorer(ScorerConfig(kind="q_value"))
    with pytest.raises(ValueError, match="q_value scorer needs a Q-model"):
        Searcher(model, tokenizer, SearchConfig(method="best_of_n_latent"), q_value)


@pytest.fixture(scope="module")
def q_checkpoint(tmp_path_factory):
    """The state dict of a Q-learning stage (Q-model of one block, K = 8) in a checkpoint."""
    module = QLearningModule(tiny_spec(), cola=TINY_COLA, q=QModelConfig(layers=1))
    module.configure_model()
    path = tmp_path_factory.mktemp("q") / "q.ckpt"
    torch.save({"state_dict": module.state_dict()}, path)
    return path, module.model.backbone.config


def test_q_checkpoints_that_do_not_fit(q_checkpoint, tmp_path):
    path, config = q_checkpoint
    assert load_q_model(str(path), config, QModelConfig(layers=1), 8).num_codes == 8
    with pytest.raises(ValueError, match="scores 8 codes but the CoLA model has K=16"):
        load_q_model(str(path), config, QModelConfig(layers=1), 16)
    with pytest.raises(KeyError, match="missing tensors"):
        load_q_model(str(path), config, QModelConfig(layers=2), 8)  # the config has a block more
    state = torch.load(path, weights_only=False)["state_dict"]

    def save(name: str, keep) -> str:
        torch.save({"state_dict": {k: v for k, v in state.items() if keep(k)}}, tmp_path / name)
        return str(tmp_path / name)

    broken = save("no_block.ckpt", lambda k: "q_model.blocks" not in k)
    with pytest.raises(KeyError, match=r"\d+ missing tensors \[blocks\.layers\.0\."):
        load_q_model(broken, config, QModelConfig(layers=1), 8)
    broken = save("no_head.ckpt", lambda k: k != "q_model.head.weight")
    with pytest.raises(KeyError, match=r"no_head.ckpt has no q_model.head.weight"):
        load_q_model(broken, config, QModelConfig(layers=1), 8)
    stage_one = save("stage1.ckpt", lambda k: k.startswith("model."))
    with pytest.raises(KeyError, match="holds no Q-model tensors .* is it a Q-learning run"):
        load_q_model(stage_one, config, QModelConfig(layers=1), 8)


GOOD = {"prompt": "1+1=", "tokens": [50], "codes": [3], "reward": 1.0}


@pytest.mark.parametrize(
    ("third_line", "error", "message"),
    [
        ("{not json", ValueError, r"solutions.jsonl:3: not valid JSON"),
        (json.dumps({"prompt": "x"}), KeyError,
         r"solutions.jsonl:3: missing \['tokens', 'codes', 'reward'\]"),
        (json.dumps({**GOOD, "codes": [3, 4]}), ValueError,
         r"solutions.jsonl:3: .*one code per response token"),
    ],
)  # fmt: skip
def test_a_bad_solutions_line_is_named(tmp_path, third_line, error, message):
    path = tmp_path / "solutions.jsonl"
    path.write_text(f"{json.dumps(GOOD)}\n\n{third_line}\n")
    data = SolutionDataModule([str(path)], tokenizer="bytes")
    with pytest.raises(error, match=message):
        data.setup("fit")


def test_search_many_needs_one_record_per_prompt():
    model, tokenizer = tiny_model(), byte_tokenizer()
    searcher = Searcher(model, tokenizer, SearchConfig(method="greedy"), Scorer(ScorerConfig()))
    with pytest.raises(
        ValueError, match="one record and one generator per prompt: got 2 prompts, 1"
    ):
        searcher.search_many(["1+1=", "2+2="], [{"answer": "2"}])
