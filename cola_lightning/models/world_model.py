"""Codebook and the language world model in CoLA's "merge" form (the released model's form).

The world model reads the backbone's state h_t and a code embedding e_t and refines the state with
a few residual SwiGLU layers over [s; e]. The readout through the backbone's own final norm and
lm_head lives in `CoLAModel.world_model_logits`, so the backbone's weights are registered once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Codebook(nn.Linear):
    """Linear(K -> d, no bias) applied to a one-hot (or straight-through one-hot) code: e_t."""

    def __init__(self, num_codes: int, hidden_size: int, dtype: torch.dtype = torch.float32):
        super().__init__(num_codes, hidden_size, bias=False, dtype=dtype)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """Embeds integer codes (...,) or (soft) one-hot codes (..., K) into (..., d)."""
        if not codes.is_floating_point():
            codes = F.one_hot(codes, self.in_features).to(self.weight.dtype)
        return self(codes)


class MergeLayer(nn.Module):
    """One residual SwiGLU step: s + down(silu(gate([s; e])) * up([s; e]))."""

    def __init__(self, hidden_size: int, ffn_size: int, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.gate_proj = nn.Linear(2 * hidden_size, ffn_size, bias=False, dtype=dtype)
        self.up_proj = nn.Linear(2 * hidden_size, ffn_size, bias=False, dtype=dtype)
        self.down_proj = nn.Linear(ffn_size, hidden_size, bias=False, dtype=dtype)

    def forward(self, state: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        merged = torch.cat([state, action], dim=-1)
        return state + self.down_proj(F.silu(self.gate_proj(merged)) * self.up_proj(merged))


class MergeWorldModel(nn.Module):
    """s_0 = h_t; s_{k+1} = s_k + SwiGLU_k([s_k; e_t]) for k < N_merge. Returns s_N.

    Args:
        hidden_size: d, the backbone's width.
        ffn_size: F, the SwiGLU width (the released model uses the backbone's intermediate size).
        num_layers: N_merge.
        init_std: std of the normal init of every projection (the backbone's initializer range).
        dtype: parameter dtype.
    """

    def __init__(
        self,
        hidden_size: int,
        ffn_size: int,
        num_layers: int = 2,
        init_std: float = 0.02,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            MergeLayer(hidden_size, ffn_size, dtype) for _ in range(num_layers)
        )
        for parameter in self.parameters():
            nn.init.normal_(parameter, std=init_std)

    def forward(self, hidden: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        state = hidden
        for layer in self.layers:
            state = layer(state, action)
        return state
