"""LightningCLI entry point: ``python -m cola_lightning fit|validate|test|predict --config X.yaml``.

The YAML chooses the stage (``model.class_path``) and the data (``data.class_path``); every other
key is a constructor argument. The resolved config is saved as ``config.yaml`` beside the logs (a
run without a logger has no log folder, and saves none), and TensorBoard is the default logger.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import yaml
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

DEFAULT_LOGGER = {
    "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
    "init_args": {"save_dir": "runs"},
}


class SaveConfigBesideLogs(SaveConfigCallback):
    """Saves the resolved config in the logger's folder; without a logger Lightning would drop it
    into the working directory, where the next run's would overwrite it."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if trainer.logger is not None:
            super().setup(trainer, pl_module, stage)


class CoLACLI(LightningCLI):
    """LightningCLI with CoLA's defaults: any stage module, any data module, TensorBoard."""

    def __init__(self, args=None, run: bool = True) -> None:
        super().__init__(
            L.LightningModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults={"logger": DEFAULT_LOGGER},
            save_config_callback=SaveConfigBesideLogs,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )


def check_config_files(args: list[str]) -> None:
    """Fails early, naming the file, on a --config path that is missing or not valid YAML."""
    for flag, value in zip(args, args[1:], strict=False):
        if flag not in ("--config", "-c"):
            continue
        path = Path(value)
        if not path.is_file():
            raise SystemExit(f"cola_lightning: config file not found: {path}")
        try:
            yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            raise SystemExit(f"cola_lightning: {path} is not valid YAML:\n{error}") from None


def main(args: list[str] | None = None) -> None:
    check_config_files(sys.argv[1:] if args is None else args)
    CoLACLI(args=args)
