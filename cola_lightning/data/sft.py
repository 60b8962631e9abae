"""Prompt/response data for fine-tuning under action guidance (stage 2) and for RL prompts.

Readers turn a jsonl line into an `Example` (prompt, response, gold answer): a generic one with
configurable field names, GSM8K's (question, answer ending in ``#### N``) and MATH's (problem,
solution, answer). The procedural arithmetic problems give examples too. The prompt is wrapped in a
template (the tokenizer's chat template when it has one, or ``User: ...\\nAssistant: ``), and the
loss mask covers exactly the response tokens (and the EOS that ends them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.feature_cache import FeatureCacheSupport, pad_states
from cola_lightning.data.files import read_field, read_jsonl
from cola_lightning.data.resumable import resumable_train_loader
from cola_lightning.data.tokenizer import datamodule_tokenizer

PLAIN_TEMPLATE = "User: {prompt}\nAssistant: "
FORMATS = ("generic", "gsm8k", "math")


@dataclass(frozen=True)
class Example:
    """One prompt with its reference response and, where known, the gold final answer."""

    prompt: str
    response: str
    answer: str | None = None


def read_examples(
    path: str | Path,
    format: str = "generic",
    prompt_field: str = "prompt",
    response_field: str = "response",
) -> list[Example]:
    """Examples from a jsonl file in one of `FORMATS`; a bad line names file and line."""
    if format not in FORMATS:
        raise ValueError(f"Unknown data format {format!r}; use one of {FORMATS}.")
    examples = []
    for number, record in read_jsonl(path):
        if format == "gsm8k":
            answer_text = read_field(path, number, record, "answer")
            if "####" not in answer_text:
                raise ValueError(f"{path}:{number}: a GSM8K answer must end with '#### <number>'.")
            gold = answer_text.rsplit("####", 1)[1].strip().replace(",", "")
            examples.append(
                Example(read_field(path, number, record, "question"), answer_text, gold)
            )
        elif format == "math":
            examples.append(
                Example(
                    read_field(path, number, record, "problem"),
                    read_field(path, number, record, "solution"),
                    read_field(path, number, record, "answer"),
                )
            )
        else:
            prompt = read_field(path, number, record, prompt_field)
            examples.append(Example(prompt, read_field(path, number, record, response_field)))
    return examples


def arithmetic_examples(corpus: ArithmeticCorpus) -> list[Example]:
    """The procedural problems as (question, worked solution, answer) examples."""
    return [Example(p.question, p.solution, str(p.answer)) for p in corpus.problems()]


def format_prompt(tokenizer, prompt: str, template: str = "auto") -> str:
    """The prompt as the model should see it before its response.

    `template` is ``auto`` (the chat template when the tokenizer has one, else plain), ``chat``,
    ``plain`` (``User: {prompt}\\nAssistant: ``), or any string containing ``{prompt}``.
    """
    if template == "auto":
        template = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
    if template == "chat":
        messages = [{"role": "user", "content": prompt}]
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if template == "plain":
        template = PLAIN_TEMPLATE
    if "{prompt}" not in template:
        raise ValueError(f"A prompt template must contain '{{prompt}}', got {template!r}.")
    return template.replace("{prompt}", prompt)


def tokenize_example(tokenizer, example: Example, template: str, max_length: int) -> dict:
    """Token ids of prompt + response + EOS, and the loss mask (1 on response tokens)."""
    prompt_ids = tokenizer(
        format_prompt(tokenizer, example.prompt, template), add_special_tokens=False
    ).input_ids
    response_ids = tokenizer(example.response, add_special_tokens=False).input_ids
    response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[:max_length]
    mask = ([0] * len(prompt_ids) + [1] * len(response_ids))[:max_length]
    return {"input_ids": ids, "loss_mask": mask}


def pad_batch(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pads tokenised examples (and their cached states, if any) to the longest."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        name: torch.zeros(len(rows), width, dtype=torch.long)
        for name in ("input_ids", "attention_mask", "loss_mask")
    }
    batch["input_ids"].fill_(pad_id)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
        batch["attention_mask"][i, :n] = 1
        batch["loss_mask"][i, :n] = torch.tensor(row["loss_mask"])
    if "hidden" in rows[0]:
        batch["hidden"] = pad_states([row["hidden"] for row in rows], width)
    return batch


def pack_rows(rows: list[dict], length: int) -> list[dict]:
    """Concatenates tokenised examples into rows of exactly `length` (the tail is dropped)."""
    ids = [t for row in rows for t in row["input_ids"]]
    mask = [m for row in rows for m in row["loss_mask"]]
    return [
        {"input_ids": ids[i : i + length], "loss_mask": mask[i : i + length]}
        for i in range(0, len(ids) - length + 1, length)
    ]


class PromptResponseDataModule(FeatureCacheSupport, L.LightningDataModule):
    """Prompt/response pairs, tokenised with a template, loss on response tokens only.

    Args:
        files: training jsonl files (all read with the same format).
        val_files: validation jsonl files; None holds out `val_fraction` of `files`.
        format: ``generic`` (fields below), ``gsm8k`` or ``math``.
        prompt_field: the prompt's field (generic format).
        response_field: the response's field (generic format).
        arithmetic: the procedural arithmetic problems instead of files.
        template: ``auto``, ``chat``, ``plain`` or a string with ``{prompt}``.
        max_length: examples are cut to this many tokens (and packed rows have this length).
        pack: pack examples into full rows instead of padding each batch.
        batch_size: examples (or packed rows) per batch.
        val_fraction: fraction held out when no `val_files` are given.
        split_seed: seed of the shuffle that decides the split, and of the training order
            (resumable mid-epoch, see `data/resumable.py`).
        num_workers: DataLoader workers.
        tokenizer: tokenizer source; None takes the stage module's.
    """

    def __init__(
        self,
        files: list[str] | None = None,
        val_files: list[str] | None = None,
        format: str = "generic",
        prompt_field: str = "prompt",
        response_field: str = "response",
        arithmetic: ArithmeticCorpus | None = None,
        template: str = "auto",
        max_length: int = 512,
        pack: bool = False,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if (files is None) == (arithmetic is None):
            raise ValueError("Give exactly one of `files` and `arithmetic`.")
        if format not in FORMATS:
            raise ValueError(f"Unknown data format {format!r}; use one of {FORMATS}.")
        self.save_hyperparameters()
        self.files, self.val_files, self.format = files, val_files, format
        self.fields = (prompt_field, response_field)
        self.arithmetic, self.template, self.max_length, self.pack = (
            arithmetic,
            template,
            max_length,
            pack,
        )
        self.batch_size, self.val_fraction, self.split_seed = batch_size, val_fraction, split_seed
        self.num_workers, self.tokenizer_name = num_workers, tokenizer
        self.splits: dict[str, list[dict]] = {}
        self.pad_id = 0

    def examples(self, files: list[str]) -> list[Example]:
        return [e for path in files for e in read_examples(path, self.format, *self.fields)]

    def train_val_examples(self) -> tuple[list[Example], list[Example]]:
        if self.arithmetic is not None:
            examples = arithmetic_examples(self.arithmetic)
        else:
            examples = self.examples(self.files)
        if self.val_files is not None:
            return examples, self.examples(self.val_files)
        examples = list(examples)
        random.Random(self.split_seed).shuffle(examples)
        held_out = max(1, round(len(examples) * self.val_fraction))
        return examples[held_out:], examples[:held_out]

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        tokenizer = datamodule_tokenizer(self, self.tokenizer_name)
        self.pad_id = tokenizer.pad_token_id
        for name, examples in zip(("train", "val"), self.train_val_examples(), strict=True):
            rows = [
                tokenize_example(tokenizer, e, self.template, self.max_length) for e in examples
            ]
            self.splits[name] = pack_rows(rows, self.max_length) if self.pack else rows
            if not self.splits[name]:
                raise ValueError(f"The {name} split is empty: add data or lower max_length.")

    @property
    def sequence_length(self) -> int:
        return self.max_length

    def cache_splits(self) -> dict[str, Dataset]:
        return dict(self.splits)

    def collate_rows(self, rows: list[dict]) -> dict:
        return pad_batch(rows, self.pad_id)

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "collate_fn": partial(pad_batch, pad_id=self.pad_id),
        }

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(
            self.loader_rows("train"),
            self.batch_size,
            self.trainer,
            self.split_seed,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.loader_rows("val"), self.batch_size, **self._loader_options())
