"""cola_lightning: CoLA (Controlling Large Language Models with Latent Actions) on Lightning."""

__version__ = "0.1.0"
