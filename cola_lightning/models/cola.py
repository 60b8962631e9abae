"""The composed CoLA model: backbone, inverse dynamics model, codebook, world model and policy.

Shapes, for a batch of token ids x (B, T):
    h = backbone(x)                      (B, T, d)    h_t has read x_1..x_t
    inverse_dynamics.code_logits(h)      (B, T-1, K)  code for step t reads x_1..x_{t+1}
    policy_logits(h)                     (B, T, K)    pi(a_t | x_1..x_t)
    world_model_logits(h, a)             (B, T, V)    next-token logits given h_t and code a_t
    candidate_logits(h_t, codes)         (B, K, V)    logits for K candidate codes at position t

In the merge form (the default) h is the backbone's final-normed state; in the inject form it is
the residual-stream state entering layer L, and the world model keeps its own KV cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from cola_lightning.models.backbone import Backbone, Readout
from cola_lightning.models.code_predictor import InverseDynamicsModel, Policy
from cola_lightning.models.inject import InjectWorldModel
from cola_lightning.models.world_model import Codebook, MergeWorldModel, WorldModelSpec

# The parts of a CoLA model besides the backbone, by attribute name.
LATENT_PARTS = ("inverse_dynamics", "codebook", "world_model", "policy")
# The latent parts are trained, so they keep float32 weights whatever the backbone's dtype: an
# AdamW step at RL's lr 5e-7 is below bf16's resolution and would leave most weights unchanged.
# Each part casts the backbone's states to its own dtype on entry, and readouts cast back.
# For bf16 compute over these float32 master weights, use FSDP2's `sharding.mixed_precision`.
LATENT_DTYPE = torch.float32


@dataclass
class CoLAConfig:
    """Sizes of the latent-action parts. Defaults are the released CoLA's (DESIGN.md section 1).

    Args:
        num_codes: K, the number of latent actions.
        idm_layers: N_idm, decoder blocks in the inverse dynamics model.
        policy_layers: N_pi, decoder blocks in the policy.
        merge_layers: N_merge, residual SwiGLU layers in the world model (merge form).
        merge_ffn_size: F; None means the backbone's intermediate size (14336 for Llama-3.1-8B).
        subtract_state: the ``- h_t`` in logits = lm_head(final_norm(s_N) - h_t) (merge form). It
            is in every released code path and the released weights depend on it, so it is on by
            default.
        world_model: the world model's form: ``{form: merge}`` (default, the released model) or
            ``{form: inject, layer: L}`` (DESIGN.md sections 1 and 7).
    """

    num_codes: int = 64
    idm_layers: int = 4
    policy_layers: int = 8
    merge_layers: int = 2
    merge_ffn_size: int | None = None
    subtract_state: bool = True
    world_model: WorldModelSpec = field(default_factory=WorldModelSpec)

    def __post_init__(self) -> None:
        if isinstance(self.world_model, dict):  # as checkpoints and exports store it
            self.world_model = WorldModelSpec(**self.world_model)


class CoLAModel(nn.Module):
    """A pretrained causal LM turned into an agent with K latent actions."""

    def __init__(self, backbone: Backbone, config: CoLAConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or CoLAConfig()
        lm_config = backbone.config
        dtype = LATENT_DTYPE
        init_std = getattr(lm_config, "initializer_range", 0.02)
        ffn_size = config.merge_ffn_size or lm_config.intermediate_size
        self.backbone = backbone
        self.inverse_dynamics = InverseDynamicsModel(
            lm_config, config.idm_layers, config.num_codes, dtype
        )
        self.codebook = Codebook(config.num_codes, backbone.hidden_size, dtype)
        nn.init.normal_(self.codebook.weight, std=init_std)
        if config.world_model.inject:
            self.world_model = InjectWorldModel(lm_config, config.world_model.layer, dtype)
            self.world_model.copy_backbone_layers(backbone)
        else:
            self.world_model = MergeWorldModel(
                backbone.hidden_size, ffn_size, config.merge_layers, init_std, dtype
            )
        self.policy = Policy(lm_config, config.policy_layers, config.num_codes, dtype)

    @property
    def num_codes(self) -> int:
        return self.config.num_codes

    @property
    def inject_layer(self) -> int | None:
        """L in the inject form (the states are those entering layer L), None in merge form."""
        return self.config.world_model.layer if self.config.world_model.inject else None

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """The states the latent parts read (B, T, d), and the backbone's KV cache.

        Merge form: the final-normed states h. Inject form: the states entering layer L.
        """
        args = (input_ids, attention_mask, position_ids, past_key_values, use_cache)
        return self.backbone(*args, output_layer=self.inject_layer)

    def token_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
    ) -> tuple[torch.Tensor, Any]:
        """The plain LM's final-normed states (B, T, d) whatever the form, and its KV cache."""
        return self.backbone(input_ids, attention_mask, position_ids, past_key_values, use_cache)

    def token_logits(self, states: torch.Tensor) -> torch.Tensor:
        """The plain LM's next-token logits from `token_states`."""
        return self.backbone(readout=Readout(states))

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

    def world_model_logits(
        self,
        hidden: torch.Tensor,
        codes: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
    ) -> torch.Tensor:
        """Next-token logits (B, T, V) from states (B, T, d) and codes (B, T) or (B, T, K).

        One code per position, teacher-forced. The inject form attends causally over the T
        positions (under `attention_mask`, covering cached and new positions, at `position_ids`)
        and, given `past_key_values` (from `world_model_cache`), after the cached positions,
        appending the new ones to it in place. The merge form is position-wise: it ignores them.
        """
        action = self.codebook.embed(codes)
        if self.inject_layer is None:
            state = self.world_model(hidden, action)
            subtract = hidden if self.config.subtract_state else None
            return self.backbone(readout=Readout(state, normalize=True, subtract=subtract))
        state = self.world_model(hidden, action, attention_mask, position_ids, past_key_values)
        return self.backbone(readout=Readout(state, normalize=True))

    def world_model_cache(self) -> Any:
        """A new, empty KV cache for the world model (inject form), None for the merge form."""
        return self.world_model.new_cache() if self.inject_layer is not None else None

    def prefill_world_model(
        self,
        hidden: torch.Tensor,
        codes: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor,
        past_key_values: Any,
    ) -> None:
        """Appends positions with their codes to the world model's cache, without a readout."""
        if past_key_values is not None and hidden.shape[1]:
            action = self.codebook.embed(codes)
            self.world_model(hidden, action, attention_mask, position_ids, past_key_values)

    def candidate_logits(
        self,
        hidden: torch.Tensor,
        codes: torch.Tensor,
        past_key_values: Any = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """Next-token logits for K candidate codes at each sequence's current position, batched.

        Args:
            hidden: the state h_t (B, 1, d) at each sequence's current position t; or, for
                candidates with S >= 1 own tokens (multi-token edges), their states (B, K, S, d).
            codes: long (B, K) candidate codes, or (B, K, S) with one code per own token.
            past_key_values: inject form: the world model's cache over positions < t (with their
                chosen codes), read and left unchanged; None means no prefix (t = 0).
            attention_mask: inject form: (B, P + S) over the P cached positions (left padding)
                and the S own tokens; default all real.
            position_ids: inject form: (B, 1) position t of each sequence's first own token;
                default the number of real prefix positions.
            backend: the attention backend (`kernels.shared_prefix_attention`).

        Returns:
            Logits (B, K, V), or (B, K, S, V) for (B, K, S) codes. The merge form is
            position-wise and needs none of the inject form's arguments.
        """
        squeeze = codes.dim() == 2
        hidden, codes = self._check_candidates(hidden, codes)
        hidden = hidden.expand(*codes.shape, -1)
        if self.inject_layer is None:
            logits = self.world_model_logits(hidden, codes)
        else:
            prefix_lengths, positions = _candidate_prefix(
                past_key_values, attention_mask, position_ids, codes
            )
            state = self.world_model.candidate_states(
                hidden,
                self.codebook.embed(codes),
                positions,
                past_key_values,
                prefix_lengths,
                backend,
            )
            logits = self.backbone(readout=Readout(state, normalize=True))
        return logits[:, :, 0] if squeeze else logits

    def _check_candidates(
        self, hidden: torch.Tensor, codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, K, S, d) states and (B, K, S) codes (S = 1 for (B, K) codes), or a clear error."""
        if codes.is_floating_point() or codes.dim() not in (2, 3):
            raise ValueError(
                f"candidate codes must be integer (B, K) or (B, K, S); got {codes.dtype} "
                f"{tuple(codes.shape)}."
            )
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f"candidate codes must lie in [0, {self.num_codes}) (the codebook's K); got "
                f"codes in [{int(codes.min())}, {int(codes.max())}]."
            )
        codes = codes[..., None] if codes.dim() == 2 else codes
        batch, count, own = codes.shape
        if hidden.dim() == 3 and hidden.shape[:2] == (batch, 1) and own == 1:
            return hidden[:, :, None], codes
        if hidden.dim() == 4 and hidden.shape[:3] == (batch, count, own):
            return hidden, codes
        raise ValueError(
            f"candidate states {tuple(hidden.shape)} do not fit codes {tuple(codes.shape)}: give "
            "states (B, 1, d) with codes (B, K), or states (B, K, S, d) with codes (B, K, S)."
        )

    def base_logits(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The backbone's own next-token logits from the states: the baseline the WM must beat.

        The inject form runs the frozen backbone layers L..end over the states first (causal,
        under `attention_mask`), so its states must be whole sequences.
        """
        if self.inject_layer is None:
            return self.token_logits(hidden)
        readout = Readout(hidden, True, None, self.inject_layer, attention_mask, position_ids)
        return self.backbone(readout=readout)


def _candidate_prefix(
    cache: Any,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None,
    codes: torch.Tensor,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The real prefix length per row (None: all real) and the own tokens' positions (B, S)."""
    batch, _, own = codes.shape
    width = cache.get_seq_length() if cache is not None else 0
    lengths = None
    if attention_mask is not None:
        if attention_mask.shape != (batch, width + own):
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} does not fit the world model "
                f"cache: it holds {width} prefix positions and each candidate has {own} own "
                f"token(s), so the mask must be ({batch}, {width + own})."
            )
        prefix = attention_mask[:, :width].bool()
        lengths = prefix.sum(-1)
        left_padded = torch.arange(width, device=prefix.device) >= (width - lengths)[:, None]
        if not torch.equal(prefix, left_padded):
            raise ValueError("candidate_logits needs a left-padded prefix (padding first).")
    if position_ids is None:
        first = lengths if lengths is not None else torch.full((batch,), width)
        position_ids = first.to(codes.device)[:, None]
    if position_ids.shape != (batch, 1):
        raise ValueError(f"position_ids must be (B, 1) = ({batch}, 1): each row's position t.")
    return lengths, position_ids + torch.arange(own, device=position_ids.device)
