"""The composed CoLA model: backbone, inverse dynamics model, codebook, world model and policy.

Shapes, for a batch of token ids x (B, T):
    h = backbone(x)                      (B, T, d)    h_t has read x_1..x_t
    inverse_dynamics.code_logits(h)      (B, T-1, K)  code for step t reads x_1..x_{t+1}
    policy_logits(h)                     (B, T, K)    pi(a_t | x_1..x_t)
    world_model_logits(h, a)             (B, T, V)    next-token logits given h_t and code a_t
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from cola_lightning.models.backbone import Backbone, Readout
from cola_lightning.models.code_predictor import InverseDynamicsModel, Policy
from cola_lightning.models.world_model import Codebook, MergeWorldModel

# The parts of a CoLA model besides the backbone, by attribute name.
LATENT_PARTS = ("inverse_dynamics", "codebook", "world_model", "policy")


@dataclass
class CoLAConfig:
    """Sizes of the latent-action parts. Defaults are the released CoLA's (DESIGN.md section 1).

    Args:
        num_codes: K, the number of latent actions.
        idm_layers: N_idm, decoder blocks in the inverse dynamics model.
        policy_layers: N_pi, decoder blocks in the policy.
        merge_layers: N_merge, residual SwiGLU layers in the world model.
        merge_ffn_size: F; None means the backbone's intermediate size (14336 for Llama-3.1-8B).
        subtract_state: the ``- h_t`` in logits = lm_head(final_norm(s_N) - h_t). It is in every
            released code path and the released weights depend on it, so it is on by default.
    """

    num_codes: int = 64
    idm_layers: int = 4
    policy_layers: int = 8
    merge_layers: int = 2
    merge_ffn_size: int | None = None
    subtract_state: bool = True


class CoLAModel(nn.Module):
    """A pretrained causal LM turned into an agent with K latent actions."""

    def __init__(self, backbone: Backbone, config: CoLAConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CoLAConfig()
        lm_config = backbone.config
        dtype = next(backbone.parameters()).dtype
        init_std = getattr(lm_config, "initializer_range", 0.02)
        ffn_size = config.merge_ffn_size or lm_config.intermediate_size
        self.backbone = backbone
        self.inverse_dynamics = InverseDynamicsModel(
            lm_config, config.idm_layers, config.num_codes, dtype
        )
        self.codebook = Codebook(config.num_codes, backbone.hidden_size, dtype)
        nn.init.normal_(self.codebook.weight, std=init_std)
        self.world_model = MergeWorldModel(
            backbone.hidden_size, ffn_size, config.merge_layers, init_std, dtype
        )
        self.policy = Policy(lm_config, config.policy_layers, config.num_codes, dtype)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """The backbone's final-normed states h (B, T, d) and its KV cache."""
        return self.backbone(input_ids, attention_mask, position_ids, past_key_values, use_cache)

    def policy_logits(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """Policy logits over codes (B, T, K) at every position, and the policy's KV cache."""
        return self.policy(hidden, attention_mask, position_ids, past_key_values, use_cache)

    def world_model_logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, T, V) from states h (B, T, d) and codes (B, T) or (B, T, K)."""
        state = self.world_model(hidden, self.codebook.embed(codes))
        subtract = hidden if self.config.subtract_state else None
        return self.backbone(readout=Readout(state, normalize=True, subtract=subtract))

    def candidate_logits(self, hidden: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Next-token logits (B, K, V) for K candidate codes (B, K) at states h_t (B, 1, d).

        One batched pass: the state is broadcast over the candidates, so the merge layers and the
        readout see a [K, d] batch per sequence instead of K separate calls.
        """
        hidden = hidden.expand(-1, codes.shape[1], -1)
        return self.world_model_logits(hidden, codes)

    def base_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """The backbone's own next-token logits from its states: the baseline the WM must beat."""
        return self.backbone(readout=Readout(hidden))
