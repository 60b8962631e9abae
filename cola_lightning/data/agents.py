"""Data modules of agent tasks: gold trajectories for stage 2, episode records for RL.

`AgentTrajectoryDataModule` writes each gold trajectory exactly as an RL episode's context is
built (prompt, then action and feedback pieces, each tokenised on its own and concatenated) and
puts the loss on the action tokens only, in `PromptResponseDataModule`'s batch format, so stage 2
(`ActionGuidedFinetuneModule`) and the policy re-cloning (`BehaviorCloningModule`) read it as is.
`AgentTaskDataModule` serves the records RL episodes start from, and validates on the seen and the
unseen split as two dataloaders.
"""

from __future__ import annotations

from functools import partial

import lightning as L
from torch.utils.data import DataLoader

from cola_lightning.data.resumable import resumable_train_loader
from cola_lightning.data.sft import pad_batch
from cola_lightning.data.tokenizer import datamodule_tokenizer
from cola_lightning.data.trajectories import AgentTasks, gold_trajectories
from cola_lightning.rollout.episodes import EpisodeFormat

VAL_SPLITS = ("seen", "unseen")


def tokenize_pieces(tokenizer, pieces: list[tuple[str, bool]], max_length: int) -> dict:
    """Token ids of the pieces, concatenated, and the loss mask (1 on action tokens)."""
    ids, mask = [], []
    for text, is_action in pieces:
        piece = tokenizer(text, add_special_tokens=False).input_ids
        ids += piece
        mask += [int(is_action)] * len(piece)
    return {"input_ids": ids[:max_length], "loss_mask": mask[:max_length]}


class AgentTrajectoryDataModule(L.LightningDataModule):
    """Gold trajectories as prompt/response rows: the loss covers the actions only.

    Trains on the gold episodes of the training tasks, validates on those of the held-out seen
    tasks (the RL stage's seen validation tasks: stage 2 never trains on them).

    Args:
        tasks: which environment, tasks and splits.
        format: how episodes are written; must be the RL stage's `episodes.format`.
        max_length: trajectories are cut to this many tokens.
        batch_size: trajectories per batch.
        split_seed: seed of the training order (resumable mid-epoch).
        num_workers: DataLoader workers.
        tokenizer: tokenizer source; None takes the stage module's.
    """

    def __init__(
        self,
        tasks: AgentTasks | None = None,
        format: EpisodeFormat | None = None,
        max_length: int = 1024,
        batch_size: int = 8,
        split_seed: int = 0,
        num_workers: int = 0,
        tokenizer: str | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tasks, self.format = tasks or AgentTasks(), format or EpisodeFormat()
        self.max_length, self.batch_size, self.split_seed = max_length, batch_size, split_seed
        self.num_workers, self.tokenizer_name = num_workers, tokenizer
        self.splits: dict[str, list[dict]] = {}
        self.pad_id = 0

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        tokenizer = datamodule_tokenizer(self, self.tokenizer_name)
        self.pad_id = tokenizer.pad_token_id
        for name, split in (("train", "train"), ("val", "seen")):
            self.splits[name] = [
                tokenize_pieces(tokenizer, pieces, self.max_length)
                for pieces in gold_trajectories(self.tasks, split, self.format)
            ]

    def _loader_options(self) -> dict:
        return {
            "num_workers": self.num_workers,
            "collate_fn": partial(pad_batch, pad_id=self.pad_id),
        }

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(
            self.splits["train"],
            self.batch_size,
            self.trainer,
            self.split_seed,
            **self._loader_options(),
        )

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.splits["val"], self.batch_size, **self._loader_options())


class AgentTaskDataModule(L.LightningDataModule):
    """Episode records for agent RL: training tasks, and seen and unseen validation tasks.

    Batches are lists of records (``environment``, ``env_args``, ``task``, ``variation``,
    ``split``). Validation has two dataloaders, seen first, then unseen.

    Args:
        tasks: which environment, tasks and splits.
        batch_size: tasks per training step (each gets a group of episodes).
        val_batch_size: episodes per validation batch.
        seed: seed of the training order (resumable mid-epoch).
    """

    def __init__(
        self,
        tasks: AgentTasks | None = None,
        batch_size: int = 2,
        val_batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.tasks = tasks or AgentTasks()
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed
        self.splits: dict[str, list[dict]] = {}

    def setup(self, stage: str | None = None) -> None:
        if not self.splits:
            self.splits = self.tasks.splits()

    def train_dataloader(self) -> DataLoader:
        return resumable_train_loader(
            self.splits["train"], self.batch_size, self.trainer, self.seed, collate_fn=list
        )

    def val_dataloader(self) -> list[DataLoader]:
        return [
            DataLoader(self.splits[name], self.val_batch_size, collate_fn=list)
            for name in VAL_SPLITS
        ]
