"""Codebook, the world model's form, and the language world model in CoLA's "merge" form.

Merge (the released model's form, the default): the world model reads the backbone's state h_t and
a code embedding e_t and refines the state with a few residual SwiGLU layers over [s; e]. Inject
(`models/inject.py`): the code enters the residual stream at layer L and trainable copies of the
backbone's layers L..end are the world model. Either way the readout through the backbone's own
final norm and lm_head lives in `CoLAModel.world_model_logits`, so the backbone's weights are
registered once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("merge", "inject")


@dataclass
class WorldModelSpec:
    """Which world model: ``merge`` (the released CoLA) or ``inject`` at backbone layer `layer`.

    Args:
        form: ``merge`` (residual SwiGLU layers over [h_t; e_t] after the backbone) or ``inject``
            (norm(e_t) + norm(state) enters at layer `layer`; copies of layers `layer`..end are the
            world model, and the inverse dynamics model and policy read the layer-`layer` states).
        layer: L, the backbone layer where the code is injected (inject form only; the reference
            code uses 28 of Llama-3.1-8B's 32). Must satisfy 0 <= L < the backbone's layer count.
    """

    form: str = "merge"
    layer: int | None = None

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"Unknown world_model.form {self.form!r}; use one of {FORMS}.")
        if self.form == "inject" and self.layer is None:
            raise ValueError(
                "world_model.form 'inject' needs `layer`: the backbone layer L where the code "
                "enters (e.g. layer: 26 of SmolLM2-135M's 30, as the reference uses 28 of 32)."
            )
        if self.form == "merge" and self.layer is not None:
            raise ValueError("world_model.layer is for form 'inject'; drop it for 'merge'.")

    @property
    def inject(self) -> bool:
        return self.form == "inject"


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
        state = hidden.to(action.dtype)  # the codebook's dtype: the latent parts'
        for layer in self.layers:
            state = layer(state, action)
        return state
