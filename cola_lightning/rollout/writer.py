"""Writes generations as jsonl, one line per completion, as `predict` produces them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each predicted record to a jsonl file.

    Several processes: the processes of one data-parallel rank (a shard group) predict the same
    rows, so the first of each writes them, to its own part file ``<path>.part<k>`` as it goes
    (nothing is held back if a run dies); at the end rank 0 joins the parts into `path`, in
    data-rank order, and removes them.

    Args:
        path: the output file; its folder is created.
        overwrite: replace an existing file. Off by default, so earlier results are never lost.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.overwrite = overwrite
        self.parts: list[Path] = []
        self.target: Path | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{self.path} already exists; choose another output path or set "
                "overwrite: true on the JsonlPredictionWriter callback."
            )
        trainer.strategy.barrier()  # every rank has looked before any rank writes
        replicas, data_rank = data_parallel_rank(trainer)
        self.parts = [self.path.with_name(f"{self.path.name}.part{k}") for k in range(replicas)]
        target = self.path if replicas == 1 else self.parts[data_rank]
        self.target = target if first_of_data_rank(trainer, data_rank) else None
        if self.target is not None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.target.write_text("")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        if self.target is None:
            return
        with self.target.open("a", encoding="utf-8") as handle:
            for record in prediction:
                handle.write(json.dumps(record) + "\n")

    def on_predict_end(self, trainer, pl_module) -> None:
        if len(self.parts) < 2:
            return
        trainer.strategy.barrier()  # every part is complete
        if trainer.is_global_zero:
            with self.path.open("w", encoding="utf-8") as joined:
                for part in self.parts:
                    joined.write(part.read_text(encoding="utf-8"))
            for part in self.parts:
                part.unlink()


def data_parallel_rank(trainer) -> tuple[int, int]:
    """(number of data-parallel ranks, this process's) as the strategy's sampler splits data."""
    kwargs = getattr(trainer.strategy, "distributed_sampler_kwargs", None) or {}
    return kwargs.get("num_replicas", 1), kwargs.get("rank", 0)


def first_of_data_rank(trainer, data_rank: int) -> bool:
    """Whether this process has the lowest global rank among those of its data-parallel rank."""
    if trainer.world_size == 1:
        return True
    mine = torch.tensor(data_rank, device=trainer.strategy.root_device)
    ranks = trainer.strategy.all_gather(mine)
    return trainer.global_rank == min(i for i, r in enumerate(ranks.tolist()) if r == data_rank)
