"""Writes generations as jsonl, one line per completion, as `predict` produces them."""

from __future__ import annotations

import json
from pathlib import Path

from lightning.pytorch.callbacks import BasePredictionWriter


class JsonlPredictionWriter(BasePredictionWriter):
    """Appends each predicted record to a jsonl file.

    Args:
        path: the output file; its folder is created.
        overwrite: replace an existing file. Off by default, so earlier results are never lost.
    """

    def __init__(self, path: str, overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.path = Path(path)
        self.overwrite = overwrite

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.path.exists() and not self.overwrite:
            raise FileExistsError(
                f"{self.path} already exists; choose another output path or set "
                "overwrite: true on the JsonlPredictionWriter callback."
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")

    def write_on_batch_end(
        self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx
    ) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            for record in prediction:
                handle.write(json.dumps(record) + "\n")
