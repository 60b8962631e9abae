"""Prompts with gold answers for RL: GSM8K, MATH500, and the procedural arithmetic and Countdown.

Each record is a dict: ``prompt`` (templated, ready to generate from), ``question`` (raw),
``answer`` (the gold final answer) and, for Countdown, ``numbers``. The reward functions read the
record as their `example`.
"""

from __future__ import annotations

import random

import lightning as L
from torch.utils.data import DataLoader

from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.resumable import resumable_train_loader
from cola_lightning.data.sft import FORMATS, arithmetic_examples, format_prompt, read_examples
from cola_lightning.data.tokenizer import datamodule_tokenizer

PROCEDURAL_TASKS = ("arithmetic", "countdown")


def procedural_records(task: str, count: int, seed: int) -> list[dict]:
    """Records of a built-in task, the same for the same seed."""
    if task == "arithmetic":
        examples = arithmetic_examples(ArithmeticCorpus(num_problems=count, seed=seed))
        return [{"question": e.prompt, "answer": e.answer} for e in examples]
    if task == "countdown":
        from cola_lightning.data.countdown import countdown_problems

        return [
            {"question": p.question, "answer": p.answer, "numbers": list(p.numbers)}
            for p in countdown_problems(count, seed)
        ]
    raise ValueError(f"Unknown procedural task {task!r}; use one of {PROCEDURAL_TASKS}.")


class TaskPromptDataModule(L.LightningDataModule):
    """Prompts and gold answers for RL training and accuracy validation.

    Args:
        files: jsonl files (`format` says how to read them); None uses `task`.
        val_files: jsonl files for validation; None holds out `val_size` records.
        format: ``gsm8k``, ``math`` or ``generic`` (fields ``prompt`` / ``response``; no answer).
        task: a procedural task, ``arithmetic`` or ``countdown``, when no files are given.
        num_problems: how many procedural problems to generate.
        seed: procedural generator seed, split seed and seed of the training order.
        template: prompt template (see `cola_lightning.data.sft.format_prompt`).
        instruction: text appended to every question (e.g. how to state the answer).
        batch_size: prompts per training step (each gets a group of rollouts).
        val_size: held-out prompts for validation accuracy.
        val_batch_size: prompts per validation batch.
        tokenizer: tokenizer source; None takes the stage module's.
        predict_split: the split ``predict`` serves (``val``: held-out problems for search;
            ``train``: problems to sample Q-learning solutions on).
    """

    def __init__(
        self,
        files: list[str] | None = None,
        val_files: list[str] | None = None,
        format: str = "gsm8k",
        task: str | None = "arithmetic",
        num_problems: int = 2000,
        seed: int = 0,
        template: str = "plain",
        instruction: str = "",
        batch_size: int = 2,
        val_size: int = 32,
        val_batch_size: int = 16,
        tokenizer: str | None = None,
        predict_split: str = "val",
    ) -> None:
        super().__init__()
        if files is None and task not in PROCEDURAL_TASKS:
            raise ValueError(f"Give `files`, or a `task` from {PROCEDURAL_TASKS}.")
        if format not in FORMATS:
            raise ValueError(f"Unknown data format {format!r}; use one of {FORMATS}.")
        self.save_hyperparameters()
        self.files, self.val_files, self.format, self.task = files, val_files, format, task
        self.num_problems, self.seed, self.template = num_problems, seed, template
        self.instruction, self.batch_size = instruction, batch_size
        self.val_size, self.val_batch_size, self.tokenizer_name = (
            val_size,
            val_batch_size,
            tokenizer,
        )
        if predict_split not in ("train", "val"):
            raise ValueError(f"predict_split must be 'train' or 'val', got {predict_split!r}.")
        self.predict_split = predict_split
        self.splits: dict[str, list[dict]] = {}

    def read(self, files: list[str]) -> list[dict]:
        return [
            {"question": e.prompt, "answer": e.answer}
            for path in files
            for e in read_examples(path, self.format)
        ]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        if self.files is None:
            records = procedural_records(self.task, self.num_problems, self.seed)
        else:
            records = self.read(self.files)
        if self.val_files is not None:
            train, val = records, self.read(self.val_files)
        else:
            random.Random(self.seed).shuffle(records)
            train, val = records[self.val_size :], records[: self.val_size]
        tokenizer = datamodule_tokenizer(self, self.tokenizer_name)
        for name, split in (("train", train), ("val", val)):
            for record in split:
                question = record["question"] + self.instruction
                record["prompt"] = format_prompt(tokenizer, question, self.template)
            if not split:
                raise ValueError(f"The {name} split of the RL prompts is empty.")
            self.splits[name] = split

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(
            self.splits["train"], self.batch_size, self.trainer, self.seed, collate_fn=list
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], self.val_batch_size, collate_fn=list)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.splits[self.predict_split], batch_size=self.val_batch_size, collate_fn=list
        )
