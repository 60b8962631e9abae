"""What scores a simulation: the oracle's flag, answer agreement, a reward model."""

import json

import pytest
import torch
import yaml
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from transformers import AutoConfig, AutoModelForSequenceClassification

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.rollout.writer import JsonlPredictionWriter
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.stages.search import SearchModule
from tests.conftest import REPO, TINY, TINY_COLA, tiny_spec, tiny_trainer

SEARCH_MODULE = "cola_lightning.stages.search.SearchModule"


def test_the_oracle_is_flagged_in_every_row_and_cost_goes_to_tensorboard(tmp_path):
    module = SearchModule(
        tiny_spec(),
        cola=TINY_COLA,
        search={"method": "best_of_n_latent", "samples": 2, "simulation_tokens": 4},
        scorer={"kind": "oracle", "reward": "arithmetic"},
        accuracy_reward="arithmetic",
    )
    data = TaskPromptDataModule(
        task="arithmetic", num_problems=6, val_size=3, val_batch_size=2, tokenizer="bytes"
    )
    out = tmp_path / "search.jsonl"
    logger = TensorBoardLogger(tmp_path, name="search")
    trainer = tiny_trainer(1, logger=logger, callbacks=[JsonlPredictionWriter(str(out))])
    trainer.predict(module, data, return_predictions=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3
    assert all(r["oracle"] is True and r["scorer"] == "oracle" for r in rows)
    # the oracle's score is the verifiable reward that also grades the answer
    assert all(r["score"] == float(r["correct"]) for r in rows)
    assert all(r["cost"]["backbone_tokens"] > 0 and r["cost"]["nodes"] == 3 for r in rows)
    (events_file,) = (tmp_path / "search/version_0").glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    tag = "search/best_of_n_latent/oracle"
    assert {f"{tag}/accuracy", f"{tag}/backbone_tokens", f"{tag}/wall_s"} <= set(
        events.Tags()["scalars"]
    )
    mean = sum(r["cost"]["backbone_tokens"] for r in rows) / 3
    assert events.Scalars(f"{tag}/backbone_tokens")[0].value == pytest.approx(mean)


def search_modules(node, found: list) -> list:
    """Every SearchModule entry in a parsed YAML document."""
    if isinstance(node, dict):
        if node.get("class_path") == SEARCH_MODULE:
            found.append(node.get("init_args") or {})
        for value in node.values():
            search_modules(value, found)
    elif isinstance(node, list):
        for value in node:
            search_modules(value, found)
    return found


def test_no_config_scores_with_the_oracle_by_default():
    assert ScorerConfig().kind != "oracle"
    configs = {}
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        for init_args in search_modules(yaml.safe_load(path.read_text()), []):
            configs[path.relative_to(REPO / "configs")] = init_args
    assert {"test", "quickstart", "gsm8k", "math500"} <= {p.parts[0] for p in configs}
    for path, init_args in configs.items():
        kind = (init_args.get("scorer") or {}).get("kind", ScorerConfig().kind)
        assert kind != "oracle", path


def test_agreement_is_the_share_of_rollouts_with_the_same_answer():
    scorer = Scorer(ScorerConfig(kind="agreement"))
    history = ["#### 4", "I think 7"]
    responses = ["The answer is 4.", "so 3 + 1 = 4", "Answer: 7", "no idea", "\\boxed{5}"]
    # answers over all seven: 4, 7, 4, 4, 7, None, 5
    scores = scorer("Q: 2+2=", responses, {}, [None] * 5, history)
    assert scores == pytest.approx([3 / 7, 3 / 7, 2 / 7, 0.0, 1 / 7])


@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A tiny random sequence-classification model (two labels) and the byte tokenizer."""
    path = tmp_path_factory.mktemp("reward_model")
    torch.manual_seed(0)
    config = AutoConfig.for_model(model_type="llama", num_labels=2, pad_token_id=256, **TINY)
    AutoModelForSequenceClassification.from_config(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.mark.parametrize("label", [-1, 0])
def test_a_reward_model_scores_each_response_as_it_would_alone(reward_model_dir, label):
    config = ScorerConfig(kind="reward_model", reward_model=str(reward_model_dir), label=label)
    scorer = Scorer(config)
    prompt, responses = "Q: 2+2=", ["4", "the answer is 22", "5 apples"]
    scores = scorer(prompt, responses, {}, [None] * 3, [])
    model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
    tokenizer = byte_tokenizer()
    with torch.inference_mode():  # one unpadded text at a time
        alone = [
            float(model(**tokenizer(prompt + r, return_tensors="pt")).logits[0, label])
            for r in responses
        ]
    assert scores == pytest.approx(alone, abs=1e-5)
    assert len(set(scores)) == 3


def test_a_missing_reward_model_is_named():
    with pytest.raises(FileNotFoundError, match="Reward model not found: /no/such/rm"):
        Scorer(ScorerConfig(kind="reward_model", reward_model="/no/such/rm"))
    with pytest.raises(ValueError, match="needs `reward_model`"):
        ScorerConfig(kind="reward_model")
