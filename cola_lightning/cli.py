"""LightningCLI entry point: ``python -m cola_lightning fit|validate|test|predict --config X.yaml``.

The YAML chooses the stage (``model.class_path``) and the data (``data.class_path``); every other
key is a constructor argument. The resolved config is saved as ``config.yaml`` beside the logs, and
TensorBoard is the default logger.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.cli import LightningCLI

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs"},
}


class CoLACLI(LightningCLI):
    """LightningCLI with CoLA's defaults: any stage module, any data module, TensorBoard."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={"logger": DEFAULT_LOGGER},
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )


def main(args=None) -> None:
    CoLACLI(args=args)
