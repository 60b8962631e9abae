"""Fused kernels, each beside its PyTorch reference, behind a dispatcher that runs anywhere."""

from cola_lightning.kernels.shared_prefix import BACKENDS, shared_prefix_attention

__all__ = ["BACKENDS", "shared_prefix_attention"]
