"""The evaluation stage on the tiny model: accuracy figures, multiple choice, perplexity."""

import json
import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.evaluation.choices import MultipleChoiceDataModule
from cola_lightning.evaluation.estimators import majority_at_k, pass_at_k
from cola_lightning.evaluation.likelihood import continuation_logprobs
from cola_lightning.evaluation.module import EvaluationModule
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.losses import masked_cross_entropy, target_mask
from tests.conftest import SHARED_DATA, TINY_COLA, tiny_data, tiny_spec, tiny_trainer


def evaluate(module, data, tmp_path, **trainer):
    trainer = tiny_trainer(max_steps=1, limit_val_batches=None, **trainer)
    trainer.validate(module, data)
    return json.loads(module.write_results(module.summary()).read_text())


def stage(checkpoint, tmp_path, **kwargs):
    return EvaluationModule(
        tiny_spec(),
        init_from=str(checkpoint),
        cola=TINY_COLA,
        results_file=str(tmp_path / "results.json"),
        **kwargs,
    )


@pytest.mark.parametrize("mode", ["latent", "token"])
def test_sampled_accuracy_figures_follow_the_records(stage_one_b_checkpoint, tmp_path, mode):
    generation = GenerationConfig(
        max_new_tokens=6, code=Sampler(temperature=1.0), token=Sampler(temperature=1.0)
    )
    module = stage(
        stage_one_b_checkpoint[0],
        tmp_path,
        mode=mode,
        generation=generation,
        samples=4,
        ks=[1, 2, 4],
        accuracy_reward="arithmetic",
    )
    data = TaskPromptDataModule(
        task="arithmetic", num_problems=20, tokenizer="bytes", val_size=5, val_batch_size=3
    )
    results = evaluate(module, data, tmp_path)
    records, metrics = results["records"], results["metrics"]
    assert len(records) == 5 and all(len(r["samples_ok"]) == 4 for r in records)
    assert set(metrics) == {
        "greedy_accuracy",
        "pass@1",
        "pass@2",
        "pass@4",
        "maj@1",
        "maj@2",
        "maj@4",
        "best_of_4",
    }
    for k in (1, 2, 4):
        want = sum(pass_at_k(4, sum(r["samples_ok"]), k) for r in records) / 5
        assert metrics[f"pass@{k}"]["value"] == pytest.approx(want)
        votes = [majority_at_k(r["answers"], r["samples_ok"], k) for r in records]
        assert metrics[f"maj@{k}"]["value"] == sum(votes) / 5
    assert metrics["pass@1"]["value"] == pytest.approx(
        sum(sum(r["samples_ok"]) for r in records) / 20
    )
    for figure in metrics.values():
        assert figure["ci_low"] <= figure["value"] <= figure["ci_high"]
    assert (tmp_path / "results.json").is_file()


def test_graded_with_the_rl_template_and_reward(stage_one_b_checkpoint, tmp_path):
    """A completion that states the gold answer is graded correct: the reward is RL's."""
    module = stage(stage_one_b_checkpoint[0], tmp_path, accuracy_reward="arithmetic")
    module.configure_model()
    records = [{"prompt": "Q", "answer": 7}, {"prompt": "Q", "answer": 8}]
    scores, _ = module.grade(["Q", "Q"], ["so 3 + 4 = 7. The answer is 7.", "It is 9."], records)
    assert scores.tolist() == [1.0, 0.0]


def test_multiple_choice_accuracy_is_the_argmax_of_the_likelihoods(
    stage_one_b_checkpoint, tmp_path
):
    module = stage(stage_one_b_checkpoint[0], tmp_path, mode="token")
    data = MultipleChoiceDataModule(str(SHARED_DATA / "gsm8k_test.jsonl"), count=6, batch_size=4)
    results = evaluate(module, data, tmp_path)
    data.setup()
    hits = 0
    for record in data.records:
        pairs = [(record["context"], c) for c in record["choices"]]
        loglik = [
            s for s, _ in continuation_logprobs(module.model, module.tokenizer, pairs, "token")
        ]
        hits += max(range(4), key=loglik.__getitem__) == record["label"]
        assert len(set(record["choices"])) == 4
    assert results["metrics"]["choice_accuracy"]["value"] == hits / 6


def test_perplexity_matches_the_validation_nll_and_reaches_tensorboard(
    stage_one_b_checkpoint, tmp_path
):
    from lightning.pytorch.loggers import TensorBoardLogger

    module = stage(stage_one_b_checkpoint[0], tmp_path)
    module.results_file = None
    data = tiny_data()
    logger = TensorBoardLogger(tmp_path, name="eval")
    tiny_trainer(max_steps=1, limit_val_batches=None, logger=logger).validate(module, data)
    results = json.loads((tmp_path / "eval/version_0/results.json").read_text())
    nll = []
    for batch in data.val_dataloader():
        hidden = module.features(batch)
        logits = module.model.base_logits(hidden[:, :-1])
        for row in range(batch["input_ids"].shape[0]):
            one = {k: v[row : row + 1] for k, v in batch.items()}
            nll.append(
                float(
                    masked_cross_entropy(
                        logits[row : row + 1], one["input_ids"][:, 1:], target_mask(one)
                    )
                )
            )
    figure = results["metrics"]["base_perplexity"]
    assert figure["value"] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-5)
    assert figure["ci_low"] < figure["value"] < figure["ci_high"]
    events = EventAccumulator(str(tmp_path / "eval/version_0"))
    events.Reload()
    scalar = events.Scalars("eval/base_perplexity")[-1].value
    assert scalar == pytest.approx(figure["value"], rel=1e-5)
    assert "eval/results/text_summary" in events.Tags()["tensors"]


def test_continuation_logprobs_equal_a_direct_forward(stage_one_b_checkpoint, tmp_path):
    module = stage(stage_one_b_checkpoint[0], tmp_path)
    module.configure_model()
    model, tokenizer = module.model, module.tokenizer
    pairs = [("Question: 2 + 2?\nAnswer:", " 4"), ("Hi", " there, friend"), ("", "x")]
    for mode in ("token", "latent"):
        got = continuation_logprobs(model, tokenizer, pairs, mode, batch_size=2)
        for (context, continuation), (logprob, _) in zip(pairs, got, strict=True):
            ctx = tokenizer(context, add_special_tokens=False).input_ids or [tokenizer.eos_token_id]
            cont = tokenizer(continuation, add_special_tokens=False).input_ids
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                hidden, _ = model.hidden_states(ids)
                if mode == "token":
                    logits = model.base_logits(hidden)
                else:
                    codes = model.policy_logits(hidden)[0].argmax(-1)
                    logits = model.world_model_logits(hidden, codes)
            logprobs = torch.log_softmax(logits[0].float(), -1)
            want = sum(float(logprobs[len(ctx) - 1 + i, t]) for i, t in enumerate(cont))
            assert logprob == pytest.approx(want, abs=1e-4), (mode, context)


def test_bad_settings_are_named(stage_one_b_checkpoint, tmp_path):
    with pytest.raises(ValueError, match=r"ks=\[8\] must lie in \[1, samples=4\]"):
        stage(stage_one_b_checkpoint[0], tmp_path, samples=4, ks=[8])
    with pytest.raises(ValueError, match="Unknown mode"):
        stage(stage_one_b_checkpoint[0], tmp_path, mode="beam")


def test_samples_must_sample_the_modes_actions(stage_one_b_checkpoint, tmp_path):
    """Token-mode samples drawn with greedy tokens would all be the greedy completion (pass@k =
    greedy): refused with the setting to change. Latent mode samples codes with greedy tokens."""
    greedy_tokens = GenerationConfig(token=Sampler(greedy=True, temperature=1.0))
    with pytest.raises(ValueError, match=r"generation.token: \{greedy: false"):
        stage(
            stage_one_b_checkpoint[0], tmp_path, mode="token", samples=4, generation=greedy_tokens
        )
    greedy_codes = GenerationConfig(code=Sampler(greedy=True))
    with pytest.raises(ValueError, match=r"4 samples of a prompt would all be its greedy"):
        stage(
            stage_one_b_checkpoint[0], tmp_path, mode="latent", samples=4, generation=greedy_codes
        )
    module = stage(stage_one_b_checkpoint[0], tmp_path, samples=4, generation=greedy_tokens)
    assert module.generation.token.greedy and not module.generation.code.greedy
