"""Tiny inject-form CoLA models for the tests (GQA, three layers: the code enters at layer 1)."""

from __future__ import annotations

import torch

from cola_lightning.models.backbone import Backbone, BackboneSpec
from cola_lightning.models.cola import CoLAConfig, CoLAModel
from tests.conftest import TINY

# Six query heads over two KV heads (GQA groups of 3), three layers; two are the world model.
INJECT_BACKBONE = {
    **TINY,
    "hidden_size": 48,
    "num_hidden_layers": 3,
    "num_attention_heads": 6,
    "num_key_value_heads": 2,
}
INJECT_COLA = CoLAConfig(
    num_codes=8, idm_layers=1, policy_layers=1, world_model={"form": "inject", "layer": 1}
)


def inject_spec() -> BackboneSpec:
    return BackboneSpec(config={"model_type": "llama", **INJECT_BACKBONE}, tokenizer="bytes")


def inject_model(perturb: float = 0.05, seed: int = 0) -> CoLAModel:
    """An inject-form model whose layer copies are moved off the backbone's (as after training)."""
    torch.manual_seed(seed)
    model = CoLAModel(Backbone.from_spec(inject_spec()), INJECT_COLA)
    with torch.no_grad():
        for parameter in model.world_model.parameters():
            parameter.add_(perturb * torch.randn_like(parameter))
    return model.eval()
