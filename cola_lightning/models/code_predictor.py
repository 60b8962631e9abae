"""Inverse dynamics model and policy: decoder blocks over the backbone's states, then K-way logits.

Both are built from the backbone's own decoder-layer class and config (fresh init), so they work
for any Hugging Face decoder-only family. We instantiate the family's base model with N layers and
drop its embedding (we feed `inputs_embeds=h`); it brings along its rotary embeddings, causal
masking, KV cache and final norm exactly as the backbone uses them.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, PretrainedConfig

from cola_lightning.models.steps import at_next


def decoder_stack_config(backbone_config: PretrainedConfig, num_layers: int) -> PretrainedConfig:
    """The backbone's config with `num_layers` blocks and no vocabulary to speak of."""
    config = copy.deepcopy(backbone_config)
    config.num_hidden_layers = num_layers
    config.vocab_size = 1
    config.pad_token_id = config.bos_token_id = config.eos_token_id = None
    config.tie_word_embeddings = False
    if getattr(config, "layer_types", None) is not None:
        config.layer_types = list(config.layer_types[:num_layers])
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    return config


class CodePredictor(nn.Module):
    """N decoder blocks, a norm and Linear(d -> K) over hidden states h (B, T, d).

    Args:
        backbone_config: the backbone's HF config; blocks share its layer class and sizes.
        num_layers: number of decoder blocks (N_idm or N_pi).
        num_codes: K, the number of latent actions.
        dtype: parameter dtype (the backbone's).
    """

    def __init__(
        self,
        backbone_config: PretrainedConfig,
        num_layers: int,
        num_codes: int,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        config = decoder_stack_config(backbone_config, num_layers)
        self.blocks = AutoModel.from_config(config, dtype=dtype)
        self.blocks.set_input_embeddings(None)  # states come in as inputs_embeds
        self.head = nn.Linear(config.hidden_size, num_codes, bias=False, dtype=dtype)
        nn.init.normal_(self.head.weight, std=getattr(config, "initializer_range", 0.02))

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Code logits (B, T, K) at every position, and the updated KV cache (None without)."""
        out = self.blocks(
            inputs_embeds=hidden.to(self.head.weight.dtype),
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            use_cache=use_cache,
        )
        return self.head(out.last_hidden_state), out.past_key_values if use_cache else None


class InverseDynamicsModel(CodePredictor):
    """Labels each transition x_t -> x_{t+1} with a latent action (DESIGN.md section 1).

    Causal attention plus a one-step shift: the code for step t is read at position t+1, so it
    sees x_1..x_{t+1} and never x_{t+2}.
    """

    def code_logits(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits (B, T-1, K) of the codes for steps 0..T-2 (step t predicts token t+1)."""
        logits, _ = self(hidden, attention_mask)
        return at_next(logits)


class Policy(CodePredictor):
    """pi(a_t | x_1..x_t): the code for step t is read at position t itself (no look-ahead)."""
