"""A local multiple-choice task from a jsonl of problems: the gold answer among distractors.

Each record asks one question with `num_choices` candidate answers: its own gold answer and the
gold answers of other problems, shuffled. A model is right when the gold answer has the highest
log-likelihood. It needs no hub access, so it measures capability preservation offline.
"""

from __future__ import annotations

import random

import lightning as L
from torch.utils.data import DataLoader

from cola_lightning.data.sft import read_examples

CONTEXT = "Question: {question}\nAnswer:"


def multiple_choice_records(
    path: str, format: str = "gsm8k", count: int = 100, num_choices: int = 4, seed: int = 0
) -> list[dict]:
    """`count` records ``{"context", "choices", "label", "answer"}``, the same for the same seed."""
    examples = [e for e in read_examples(path, format) if e.answer]
    pool = sorted({e.answer for e in examples})
    if len(pool) < num_choices:
        raise ValueError(
            f"{path} has {len(pool)} distinct answers; {num_choices} choices need more."
        )
    rng = random.Random(seed)
    records = []
    for example in rng.sample(examples, min(count, len(examples))):
        wrong = rng.sample([a for a in pool if a != example.answer], num_choices - 1)
        choices = [example.answer, *wrong]
        rng.shuffle(choices)
        records.append(
            {
                "context": CONTEXT.format(question=example.prompt),
                "choices": [f" {choice}" for choice in choices],
                "label": choices.index(example.answer),
                "answer": example.answer,
            }
        )
    return records


class MultipleChoiceDataModule(L.LightningDataModule):
    """Serves `multiple_choice_records` for validation.

    Args:
        file: a jsonl of problems (``../shared/data/gsm8k_test.jsonl``).
        format: ``gsm8k`` or ``math`` (see `cola_lightning.data.sft.read_examples`).
        count: questions asked.
        num_choices: candidate answers per question.
        seed: which questions and distractors.
        batch_size: questions per batch.
    """

    def __init__(
        self,
        file: str,
        format: str = "gsm8k",
        count: int = 100,
        num_choices: int = 4,
        seed: int = 0,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        self.file, self.format, self.count = file, format, count
        self.num_choices, self.seed, self.batch_size = num_choices, seed, batch_size
        self.records: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if not self.records:
            self.records = multiple_choice_records(
                self.file, self.format, self.count, self.num_choices, self.seed
            )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.records, batch_size=self.batch_size, collate_fn=list)
