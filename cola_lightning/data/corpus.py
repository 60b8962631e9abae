"""Text corpus DataModule: documents -> tokens -> fixed-length packed sequences (stages 1, 1b)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from cola_lightning.data.arithmetic import Problem, arithmetic_problems
from cola_lightning.data.feature_cache import FeatureCacheSupport
from cola_lightning.data.files import read_documents
from cola_lightning.data.resumable import resumable_train_loader
from cola_lightning.data.tokenizer import datamodule_tokenizer
from cola_lightning.data.trajectories import AgentCorpus


@dataclass
class ArithmeticCorpus:
    """The built-in procedural corpus (see `cola_lightning.data.arithmetic`).

    Args:
        num_problems: how many problems to generate.
        seed: generator seed; the same seed gives the same corpus everywhere.
        min_steps: fewest operations per problem.
        max_steps: most operations per problem.
    """

    num_problems: int = 4000
    seed: int = 0
    min_steps: int = 2
    max_steps: int = 4

    def problems(self) -> list[Problem]:
        return arithmetic_problems(self.num_problems, self.seed, self.min_steps, self.max_steps)

    def documents(self) -> list[str]:
        return [problem.text for problem in self.problems()]


class PackedSequences(Dataset):
    """Rows of a (N, seq_len) token tensor as training examples."""

    def __init__(self, tokens: torch.Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.tokens[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def pack(token_lists: list[list[int]], seq_len: int) -> torch.Tensor:
    """Concatenates documents and cuts them into rows of `seq_len` (the tail is dropped)."""
    flat = [token for tokens in token_lists for token in tokens]
    rows = len(flat) // seq_len
    return torch.tensor(flat[: rows * seq_len], dtype=torch.long).view(rows, seq_len)


class TextCorpusDataModule(FeatureCacheSupport, L.LightningDataModule):
    """Documents from local files, a `datasets` hub name, the built-in arithmetic corpus, or the
    gold trajectories of agent tasks.

    Each document is tokenised with the backbone's tokenizer, ends with EOS, and the documents are
    packed into fixed-length sequences. The train/val split is by document, from `split_seed`.

    Args:
        files: local ``.txt`` (documents separated by blank lines) or ``.jsonl`` files.
        hub_dataset: a `datasets` hub name (needs `datasets` and a reachable hub).
        hub_split: the hub dataset's split.
        text_field: the text field of jsonl lines and hub rows.
        arithmetic: the built-in procedural corpus.
        agent: gold trajectories of agent tasks (see `cola_lightning.data.trajectories`).
        seq_len: tokens per packed sequence.
        batch_size: sequences per batch (per device).
        val_fraction: fraction of documents held out for validation.
        split_seed: seed of the document shuffle that decides the split, and of the training
            order (resumable mid-epoch, see `data/resumable.py`).
        num_workers: DataLoader workers.
        tokenizer: tokenizer source; None takes the model's (the stage module's `tokenizer`).
    """

    def __init__(
        self,
        files: list[str] | None = None,
        hub_dataset: str | None = None,
        hub_split: str = "train",
        text_field: str = "text",
        arithmetic: ArithmeticCorpus | None = None,
        agent: AgentCorpus | None = None,
        seq_len: int = 128,
        batch_size: int = 8,
        val_fraction: float = 0.05,
        split_seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        sources = [x is not None for x in (files, hub_dataset, arithmetic, agent)]
        if sum(sources) != 1:
            raise ValueError("Give exactly one of `files`, `hub_dataset`, `arithmetic`, `agent`.")
        if not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}.")
        self.save_hyperparameters()
        self.files, self.hub_dataset, self.hub_split = files, hub_dataset, hub_split
        self.text_field, self.arithmetic, self.agent = text_field, arithmetic, agent
        self.seq_len, self.batch_size = seq_len, batch_size
        self.val_fraction, self.split_seed = val_fraction, split_seed
        self.num_workers, self.tokenizer_name = num_workers, tokenizer
        self.train_set: PackedSequences | None = None
        self.val_set: PackedSequences | None = None

    def documents(self) -> list[str]:
        if self.arithmetic is not None:
            return self.arithmetic.documents()
        if self.agent is not None:
            return self.agent.documents()
        if self.hub_dataset is not None:
            try:
                import datasets
            except ImportError as error:
                raise ImportError(
                    "`hub_dataset` needs the datasets package: pip install datasets"
                ) from error
            return list(
                datasets.load_dataset(self.hub_dataset, split=self.hub_split)[self.text_field]
            )
        return [doc for path in self.files for doc in read_documents(path, self.text_field)]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        documents = self.documents()
        random.Random(self.split_seed).shuffle(documents)
        num_val = max(1, round(len(documents) * self.val_fraction))
        tokenizer = datamodule_tokenizer(self, self.tokenizer_name)
        splits = {}
        for name, docs in (("val", documents[:num_val]), ("train", documents[num_val:])):
            ids = tokenizer(docs, add_special_tokens=False)["input_ids"] if docs else []
            splits[name] = pack([doc + [tokenizer.eos_token_id] for doc in ids], self.seq_len)
            if len(splits[name]) == 0:
                raise ValueError(
                    f"The {name} split has fewer than seq_len={self.seq_len} tokens "
                    f"({len(docs)} documents): add data, lower seq_len or change val_fraction."
                )
        self.train_set, self.val_set = (
            PackedSequences(splits["train"]),
            PackedSequences(splits["val"]),
        )

    @property
    def sequence_length(self) -> int:
        return self.seq_len

    def cache_splits(self) -> dict[str, Dataset]:
        return {"train": self.train_set, "val": self.val_set}

    def collate_rows(self, rows: list[dict]) -> dict:
        return default_collate(rows)

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(
            self.loader_rows("train"),
            self.batch_size,
            self.trainer,
            self.split_seed,
            num_workers=self.num_workers,
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.loader_rows("val"), self.batch_size, num_workers=self.num_workers)
