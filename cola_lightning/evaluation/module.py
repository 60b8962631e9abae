"""Evaluation as a Lightning stage: ``python -m cola_lightning validate --config configs/eval/...``.

One module for every benchmark; the batch says which kind it is:

* prompt records with gold answers (`TaskPromptDataModule`: GSM8K, MATH500, arithmetic,
  Countdown): greedy accuracy, pass@k, maj@k and best-of-N over `samples` sampled completions,
  graded by the same reward function and prompt template as RL;
* multiple-choice records (`MultipleChoiceDataModule`): accuracy of the highest-likelihood choice;
* packed text (`TextCorpusDataModule`): the backbone's perplexity, and the world model's under the
  inverse dynamics model's codes.

Each figure comes with a confidence interval (Wilson for proportions, bootstrap for means and
perplexities). Results go to the logger (TensorBoard scalars, and the whole table as text) and to
one JSON file per run. Single-device: the results are this process's.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch

from cola_lightning.checkpoints.format import stage_settings
from cola_lightning.evaluation.estimators import (
    bootstrap_interval,
    majority_at_k,
    mean_with_interval,
    pass_at_k,
    proportion,
)
from cola_lightning.evaluation.likelihood import continuation_logprobs
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.models.steps import next_token_pairs
from cola_lightning.rewards import countdown
from cola_lightning.rewards import math as math_reward
from cola_lightning.rewards.registry import CompositeReward, RewardSpec
from cola_lightning.rollout.engine import (
    MODES,
    GenerationConfig,
    Generator,
    require_sampled_actions,
)
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.base import CoLAStage
from cola_lightning.stages.losses import target_mask

RESULTS_FILE = "results.json"


def answer_key(reward: str, response: str) -> str | None:
    """The answer a response commits to, normalised so equal answers vote together (maj@k)."""
    if reward == "countdown":
        return countdown.extract_expression(response)
    answer = math_reward.extract_answer(response)
    return None if answer is None else math_reward.normalize(answer)


class EvaluationModule(CoLAStage):
    """Evaluates a CoLA model; trains nothing.

    Args:
        backbone: the pretrained LM; None takes the one `init_from` records (with its LoRA).
        init_from: the stage checkpoint (or export directory) to evaluate.
        cola: sizes of the latent-action parts; None takes those `init_from` records.
        mode: ``latent`` (policy + world model) or ``token`` (the plain backbone) for generation
            and for multiple-choice scoring. Perplexity always reports both.
        generation: lengths, stop strings and the samplers of the `samples` completions; the
            greedy completion uses greedy codes and tokens. The samples must sample the mode's
            actions: codes in latent mode (tokens greedy, as published), tokens in token mode.
        samples: sampled completions per prompt (0: greedy only).
        ks: the k of pass@k and maj@k (each at most `samples`); None means 1 and `samples`.
        accuracy_reward: the reward that grades a completion (score >= 0.5 is correct), as RL's.
        confidence: the level of every interval.
        results_file: where the JSON goes; None writes ``results.json`` in the logger's directory
            (or the working directory without a logger).
        sampling_seed: seed of the sampling generator (not `seed`: data modules own that name).
    """

    def __init__(
        self,
        backbone: BackboneSpec | None = None,
        init_from: str | None = None,
        cola: CoLAConfig | None = None,
        mode: str = "latent",
        generation: GenerationConfig | None = None,
        samples: int = 0,
        ks: list[int] | None = None,
        accuracy_reward: str = "math",
        confidence: float = 0.95,
        results_file: str | None = None,
        sampling_seed: int = 0,
    ) -> None:
        if backbone is None:
            if init_from is None:
                raise ValueError("Give `init_from` (a checkpoint to evaluate) or a `backbone`.")
            backbone, recorded = stage_settings(init_from)
            cola = cola or CoLAConfig(**recorded)
        super().__init__(backbone, cola, init_from=init_from)
        if mode not in MODES:
            raise ValueError(f"Unknown mode {mode!r}; use one of {MODES}.")
        self.ks = sorted(set(ks or ([1, samples] if samples else [])))
        if any(not 1 <= k <= samples for k in self.ks):
            raise ValueError(f"Every k in ks={self.ks} must lie in [1, samples={samples}].")
        self.mode, self.samples, self.sampling_seed = mode, samples, sampling_seed
        self.generation = generation or GenerationConfig()
        if samples:
            consequence = f"the {samples} samples of a prompt would all be its greedy completion"
            require_sampled_actions(self.generation, mode, consequence)
        self.accuracy_reward, self.confidence = accuracy_reward, confidence
        self.grade = CompositeReward([RewardSpec(accuracy_reward)], False)
        self.results_file = results_file
        self.records: list[dict] = []
        self._sampler: torch.Generator | None = None

    def on_validation_epoch_start(self) -> None:
        self.records = []
        self._sampler = torch.Generator(self.device).manual_seed(self.sampling_seed)

    def validation_step(self, batch, batch_idx: int) -> None:
        if isinstance(batch, dict):
            self.records.extend(self.perplexity_records(batch))
        elif "choices" in batch[0]:
            self.records.extend(self.choice_records(batch))
        else:
            self.records.extend(self.generation_records(batch))

    # -- the three kinds of benchmark ---------------------------------------------------------

    def generation_records(self, batch: list[dict]) -> list[dict]:
        """Per prompt: the greedy completion's grade and the samples' grades, answers, scores."""
        greedy = dataclasses.replace(
            self.generation, code=Sampler(greedy=True), token=Sampler(greedy=True)
        )
        first, correct = self._generate(batch, greedy)
        records = [
            {"prompt": r["prompt"], "answer": r["answer"], "greedy": first.texts[i], "greedy_ok": c}
            for i, (r, c) in enumerate(zip(batch, correct, strict=True))
        ]
        if not self.samples:
            return records
        repeated = [r for r in batch for _ in range(self.samples)]
        sampled, correct = self._generate(repeated, self.generation)
        logprobs = sampled.code_logprobs if self.mode == "latent" else sampled.token_logprobs
        for i, record in enumerate(records):
            rows = range(i * self.samples, (i + 1) * self.samples)
            record["samples_ok"] = [correct[j] for j in rows]
            record["answers"] = [answer_key(self.accuracy_reward, sampled.texts[j]) for j in rows]
            # best-of-N picks the sample its own model is surest of: mean action log-probability
            record["scores"] = [
                float(np.mean(logprobs[j])) if logprobs[j] else -math.inf for j in rows
            ]
        return records

    def _generate(self, records: list[dict], config: GenerationConfig):
        engine = Generator(self.model, self.tokenizer, config)
        prompts = [r["prompt"] for r in records]
        result = engine.generate(prompts, self.mode, generator=self._sampler)
        scores, _ = self.grade(prompts, result.texts, records)
        return result, [bool(s >= 0.5) for s in scores.tolist()]

    def choice_records(self, batch: list[dict]) -> list[dict]:
        pairs = [(r["context"], choice) for r in batch for choice in r["choices"]]
        scores = iter(continuation_logprobs(self.model, self.tokenizer, pairs, self.mode))
        records = []
        for record in batch:
            loglik = [next(scores)[0] for _ in record["choices"]]
            records.append({"choice_ok": int(np.argmax(loglik)) == record["label"]})
        return records

    def perplexity_records(self, batch: dict) -> list[dict]:
        hidden = self.features(batch)
        codes = self.idm_codes(hidden, batch)
        states, targets = next_token_pairs(hidden, batch["input_ids"])
        mask = target_mask(batch).float()
        records = []
        for name, logits in (
            ("base_nll", self.model.base_logits(states)),
            ("wm_nll", self.model.world_model_logits(states, codes)),
        ):
            nll = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1).float(), targets.flatten(), reduction="none"
            ).view_as(targets)
            per_sequence = (nll * mask).sum(-1) / mask.sum(-1).clamp_min(1)
            for row, value in enumerate(per_sequence.tolist()):
                if len(records) <= row:
                    records.append({})
                records[row][name] = value
        return records

    # -- summary ------------------------------------------------------------------------------

    def on_validation_epoch_end(self) -> None:
        results = self.summary()
        for name, figure in results["metrics"].items():
            self.log(f"eval/{name}", figure["value"], batch_size=figure["n"])
        if self.tensorboard is not None:
            text = json.dumps(results, indent=2).replace("\n", "  \n")
            self.tensorboard.add_text("eval/results", text, self.global_step)
        self.write_results(results)

    def summary(self) -> dict:
        """Every figure with its interval, plus the settings that produced them."""
        if not self.records:
            raise ValueError(
                "The evaluation saw no data: check the data module's validation split."
            )
        level, rows, metrics = self.confidence, self.records, {}
        if "greedy_ok" in rows[0]:
            metrics["greedy_accuracy"] = proportion([r["greedy_ok"] for r in rows], level)
            for k in self.ks:
                passes = [pass_at_k(self.samples, sum(r["samples_ok"]), k) for r in rows]
                metrics[f"pass@{k}"] = mean_with_interval(passes, level)
                votes = [majority_at_k(r["answers"], r["samples_ok"], k) for r in rows]
                metrics[f"maj@{k}"] = proportion(votes, level)
            if self.samples:
                best = [r["samples_ok"][int(np.argmax(r["scores"]))] for r in rows]
                metrics[f"best_of_{self.samples}"] = proportion(best, level)
        if "choice_ok" in rows[0]:
            metrics["choice_accuracy"] = proportion([r["choice_ok"] for r in rows], level)
        if "base_nll" in rows[0]:
            for name, key in (("base_perplexity", "base_nll"), ("wm_perplexity", "wm_nll")):
                values = [r[key] for r in rows]
                low, high = bootstrap_interval(values, lambda v: math.exp(v.mean()), level)
                value = math.exp(float(np.mean(values)))
                metrics[name] = {"value": value, "ci_low": low, "ci_high": high, "n": len(values)}
        return {
            "checkpoint": self.init_from,
            "mode": self.mode,
            "samples": self.samples,
            "accuracy_reward": self.accuracy_reward,
            "confidence": level,
            "metrics": metrics,
            "records": [r for r in rows if "prompt" in r],
        }

    def write_results(self, results: dict) -> Path:
        if self.results_file is not None:
            path = Path(self.results_file)
        else:
            log_dir = self.trainer.log_dir if self.trainer.logger else None
            path = Path(log_dir or ".") / RESULTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2, default=str))
        return path
