"""What scores a simulation (the R of a search), chosen in YAML.

* ``q_value``: the Q-model's own value of the final step, Q(s_T, a_T) (needs a Q-model).
* ``reward_model``: any Hugging Face sequence-classification model, local dir or hub id.
* ``agreement``: the share of the search's rollouts so far whose extracted final answer equals
  this one's (self-consistency; with one batch of N samples it is majority voting).
* ``oracle``: the verifiable reward against the gold answer. An oracle reads the answer it is
  graded on: an upper bound for analysis, flagged ``oracle: true`` in every output row.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from cola_lightning.rewards import math as math_reward
from cola_lightning.rewards.registry import resolve_reward

SCORERS = ("q_value", "reward_model", "agreement", "oracle")


@dataclass
class ScorerConfig:
    """How simulations are scored.

    Args:
        kind: one of ``q_value``, ``reward_model``, ``agreement``, ``oracle``.
        reward: the verifiable reward the oracle uses (a registry name).
        reward_model: local directory or hub id of a sequence-classification model.
        label: which output logit of the reward model is the score (-1: the last, which is the
            only one of a scalar reward model and the positive class of a two-way classifier).
        max_length: tokens of prompt + response the reward model reads (the rest is cut).
    """

    kind: str = "agreement"
    reward: str = "math"
    reward_model: str | None = None
    label: int = -1
    max_length: int = 1024

    def __post_init__(self) -> None:
        if self.kind not in SCORERS:
            raise ValueError(f"Unknown scorer {self.kind!r}; use one of {SCORERS}.")
        if self.kind == "reward_model" and not self.reward_model:
            raise ValueError("The reward_model scorer needs `reward_model`: a directory or hub id.")

    @property
    def oracle(self) -> bool:
        return self.kind == "oracle"


class Scorer:
    """Scores responses of one problem: `(prompt, responses, record, q_values, history)`.

    `history` holds the responses this search scored before (agreement reads it); `q_values`
    the Q-model's final values, one per response (or None without a Q-model).
    """

    def __init__(self, config: ScorerConfig) -> None:
        self.config = config
        self.reward_fn = resolve_reward(config.reward) if config.kind == "oracle" else None
        self.reward_model = self.tokenizer = None
        if config.kind == "reward_model":
            self.reward_model, self.tokenizer = load_reward_model(config.reward_model)

    @property
    def oracle(self) -> bool:
        return self.config.oracle

    @property
    def reads_history(self) -> bool:
        """Whether a score depends on the other rollouts (agreement): re-scored at the end."""
        return self.config.kind == "agreement"

    def __call__(
        self,
        prompt: str,
        responses: list[str],
        record: dict,
        q_values: list[float | None],
        history: list[str],
    ) -> list[float]:
        kind = self.config.kind
        if kind == "oracle":
            return [float(self.reward_fn(prompt, r, record)) for r in responses]
        if kind == "agreement":
            return agreement(responses, history)
        if kind == "q_value":
            if any(q is None for q in q_values):
                raise ValueError("The q_value scorer needs a Q-model (`q_from`) and latent search.")
            return [float(q) for q in q_values]
        return self._reward_model(prompt, responses)

    @torch.inference_mode()
    def _reward_model(self, prompt: str, responses: list[str]) -> list[float]:
        device = next(self.reward_model.parameters()).device
        batch = self.tokenizer(
            [prompt + r for r in responses],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.config.max_length,
        ).to(device)
        logits = self.reward_model(**batch).logits
        return logits[:, self.config.label].float().tolist()


def final_answer(response: str) -> str | None:
    answer = math_reward.extract_answer(response)
    return None if answer is None else math_reward.normalize(answer)


def agreement(responses: list[str], history: list[str]) -> list[float]:
    """Per response: the share of all responses (history + these) with its final answer."""
    answers = [final_answer(r) for r in history + responses]
    total = len(answers)
    mine = answers[len(history) :]
    return [0.0 if a is None else answers.count(a) / total for a in mine]


def load_reward_model(source: str):
    """A sequence-classification model and its tokenizer (with a pad token), in eval mode."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cola_lightning.models.tokenizer import ensure_pad_token

    path = Path(source).expanduser()
    looks_local = source.startswith((".", "/", "~")) or source.count("/") > 1
    if looks_local and not path.exists():
        raise FileNotFoundError(
            f"Reward model not found: {source}. Give a directory with a Hugging Face "
            "sequence-classification model (config.json, weights, tokenizer) or a hub id."
        )
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            str(path) if looks_local else source
        )
        tokenizer = ensure_pad_token(
            AutoTokenizer.from_pretrained(str(path) if looks_local else source)
        )
    except OSError as error:
        raise OSError(f"Could not load the reward model {source!r}: {error}") from error
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    tokenizer.padding_side = "left"  # the score is read at the last token
    return model.eval(), tokenizer
