"""Training batches that a resumed run takes up exactly where the interrupted run left off.

Lightning restores the step count and the loop's position in the epoch, but a plain shuffled
DataLoader would start the epoch's data over in a new order. Here the order is a pure function
of (seed, epoch), through a `DistributedSampler` that also splits the data between ranks, and the
first epoch after a resume skips the batches the interrupted run had already trained on.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import lightning as L
from torch.utils.data import DataLoader, Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A `DistributedSampler` whose next epoch can start `skip` samples in (per rank)."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.skip = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        skip, self.skip = self.skip, 0  # only the epoch that was interrupted is partial
        return iter(indices[skip:])


class ResumableDataLoader(DataLoader):
    """A DataLoader over a `ResumableSampler`.

    Its position is not its own state: `resumable_train_loader` reads it from the trainer's
    restored loop progress. The empty state methods tell Lightning the loader resumes mid-epoch.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None


def resumable_train_loader(
    dataset: Dataset, batch_size: int, trainer: L.Trainer | None, seed: int = 0, **kwargs
) -> DataLoader:
    """A shuffled training DataLoader for this rank that resumes mid-epoch with the trainer.

    Args:
        dataset: the training split.
        batch_size: per-rank batch size.
        trainer: the trainer the loader is for (None outside one: a single process).
        seed: seed of the shuffle; epoch e uses the order of (seed, e) whatever the world size.
        kwargs: further DataLoader arguments (workers, collate_fn).
    """
    world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
    sampler = ResumableSampler(dataset, world, rank, seed)
    if trainer is not None:
        # Batches of the current epoch already trained on (restored from the checkpoint).
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed
        sampler.skip = (done % math.ceil(len(sampler) / batch_size)) * batch_size
    return ResumableDataLoader(dataset, batch_size, sampler=sampler, **kwargs)
