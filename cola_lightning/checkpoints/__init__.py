"""Checkpoints: the stage-checkpoint format (format.py), the Hugging Face-style export (export.py,
CLI `python -m cola_lightning.export`), and the released CoLA layout (released.py)."""
