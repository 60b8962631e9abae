"""Prompts for generation (``predict``): inline in the YAML or from a jsonl file."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from cola_lightning.data.files import read_field, read_jsonl


class PromptDataModule(L.LightningDataModule):
    """Serves prompt records ``{"prompt": str, "reference": str | None}`` in batches.

    Args:
        prompts: prompts given inline.
        file: a jsonl file with one prompt per line.
        prompt_field: the jsonl field holding the prompt.
        reference_field: an optional jsonl field with a reference continuation, whose inverse
            dynamics codes can drive generation (`GenerationModule(code_source="reference")`).
        batch_size: prompts per batch.
    """

    def __init__(
        self,
        prompts: list[str] | None = None,
        file: str | None = None,
        prompt_field: str = "prompt",
        reference_field: str | None = None,
        batch_size: int = 8,
    ) -> None:
        super().__init__()
        if (prompts is None) == (file is None):
            raise ValueError("Give exactly one of `prompts` (inline) and `file` (jsonl).")
        self.prompts, self.file = prompts, file
        self.prompt_field, self.reference_field = prompt_field, reference_field
        self.batch_size = batch_size
        self.records: list[dict] = []

    def setup(self, stage: str | None = None) -> None:
        if self.prompts is not None:
            self.records = [{"prompt": p, "reference": None} for p in self.prompts]
            return
        self.records = []
        for number, record in read_jsonl(self.file):
            reference = None
            if self.reference_field is not None:
                reference = read_field(self.file, number, record, self.reference_field)
            prompt = read_field(self.file, number, record, self.prompt_field)
            self.records.append({"prompt": prompt, "reference": reference})

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(self.records, batch_size=self.batch_size, collate_fn=list)
