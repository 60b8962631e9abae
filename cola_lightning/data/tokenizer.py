"""Which tokenizer a data module uses: its own setting, or the stage module's."""

from __future__ import annotations

import lightning as L

from cola_lightning.models.backbone import load_tokenizer


def datamodule_tokenizer(datamodule: L.LightningDataModule, name: str | None):
    """The tokenizer named `name`, or, when None, the attached stage module's `tokenizer`."""
    if name is not None:
        return load_tokenizer(name)
    trainer = datamodule.trainer
    module = trainer.lightning_module if trainer is not None else None
    if module is None or not hasattr(module, "tokenizer"):
        raise ValueError("No tokenizer: set the data module's `tokenizer` or use a CoLA stage.")
    return module.tokenizer
