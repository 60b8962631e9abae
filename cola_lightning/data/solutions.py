"""Recorded CoLA solutions (prompt, response tokens, codes, reward) as batches for Q-learning.

Rows come from ``predict`` with `SolutionSamplingModule` (configs/*/sample_solutions.yaml). Each
batch is aligned to the states: at position i the state is x_1..x_i and the action is the code
that produced token i+1, so `actions[i]`, `steps[i]` (a response step) and `last[i]` (the last
response step, where the reward is) all index the state the Q-model reads at i.
"""

from __future__ import annotations

import random

import lightning as L
import torch
from torch.utils.data import DataLoader

from cola_lightning.data.files import read_jsonl
from cola_lightning.data.tokenizer import datamodule_tokenizer

FIELDS = ("prompt", "tokens", "codes", "reward")


def solution_row(tokenizer, record: dict) -> dict:
    """Token ids and the per-state action, step, last and reward of one recorded solution."""
    prompt = tokenizer(record["prompt"], add_special_tokens=False).input_ids
    tokens, codes = list(record["tokens"]), list(record["codes"])
    if len(tokens) != len(codes) or not tokens:
        raise ValueError("A solution needs one code per response token, and at least one token.")
    start = len(prompt) - 1  # the state before the first response token
    length = len(prompt) + len(tokens)
    actions, steps = [0] * length, [0] * length
    actions[start : start + len(codes)] = codes
    steps[start : start + len(codes)] = [1] * len(codes)
    return {
        "input_ids": prompt + tokens,
        "actions": actions,
        "steps": steps,
        "last": start + len(codes) - 1,
        "reward": float(record["reward"]),
    }


def collate_solutions(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded batch: input_ids, attention_mask, actions, steps, last (bool), rewards."""
    width = max(len(r["input_ids"]) for r in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros(len(rows), width, dtype=torch.long),
        "actions": torch.zeros(len(rows), width, dtype=torch.long),
        "steps": torch.zeros(len(rows), width, dtype=torch.bool),
        "last": torch.zeros(len(rows), width, dtype=torch.bool),
        "rewards": torch.zeros(len(rows), width),
    }
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        batch["input_ids"][i, :n] = torch.tensor(row["input_ids"])
        batch["attention_mask"][i, :n] = 1
        batch["actions"][i, :n] = torch.tensor(row["actions"])
        batch["steps"][i, :n] = torch.tensor(row["steps"], dtype=torch.bool)
        batch["last"][i, row["last"]] = True
        batch["rewards"][i, row["last"]] = row["reward"]
    return batch


class SolutionDataModule(L.LightningDataModule):
    """Reads solution jsonl files for the Q-learning stage.

    Args:
        files: jsonl files with ``prompt``, ``tokens`` (response ids), ``codes``, ``reward``.
        val_fraction: share of rows held out for validation (at least one row when > 0).
        batch_size: solutions per step.
        seed: seed of the split and of the training order.
        tokenizer: tokenizer source; None takes the stage module's (it must be the one that
            generated the tokens).
    """

    def __init__(
        self,
        files: list[str],
        val_fraction: float = 0.1,
        batch_size: int = 8,
        seed: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        if not files:
            raise ValueError("SolutionDataModule needs at least one jsonl file of solutions.")
        self.files, self.val_fraction, self.batch_size = files, val_fraction, batch_size
        self.seed, self.tokenizer_name = seed, tokenizer
        self.splits: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        self.tokenizer = datamodule_tokenizer(self, self.tokenizer_name)
        rows = []
        for path in self.files:
            for number, record in read_jsonl(path):
                missing = [f for f in FIELDS if f not in record]
                if missing:
                    raise KeyError(f"{path}:{number}: missing {missing}; rows need {FIELDS}.")
                try:
                    rows.append(solution_row(self.tokenizer, record))
                except ValueError as error:
                    raise ValueError(f"{path}:{number}: {error}") from None
        random.Random(self.seed).shuffle(rows)
        held = max(1, round(len(rows) * self.val_fraction)) if self.val_fraction > 0 else 0
        self.splits = {"train": rows[held:], "val": rows[:held]}
        if not self.splits["train"]:
            raise ValueError(f"No training solutions left in {self.files} after the split.")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        pad = self.tokenizer.pad_token_id
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self.splits[split],
            self.batch_size,
            shuffle=shuffle,
            generator=generator,
            collate_fn=lambda rows: collate_solutions(rows, pad),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)
