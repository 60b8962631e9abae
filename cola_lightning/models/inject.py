"""The language world model in CoLA's "inject" form: the code enters the backbone at layer L.

Training (DESIGN.md section 7): x = norm_a(e_t) + norm_s(s_t), where s_t is the backbone's
residual-stream state entering layer L; trainable copies of the backbone's layers L..end,
initialised from the backbone's own, run over x with the ordinary causal mask; the frozen final
norm and lm_head read the result (in `CoLAModel`). Because every state above layer L carries its
own code, attention there is latent-conditioned, and the world model keeps its own KV cache.

Scoring K candidate codes at one position (`candidate_states`) runs the K rows through each
layer's linear maps as one matmul and their attention through `kernels.shared_prefix_attention`:
the prefix cache is read once for all rows, each row also attends to its own keys, all at RoPE
position t. Candidate scoring supports Llama-style layers (Llama, Mistral, Qwen2/3, SmolLM).
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn
from transformers import AutoModel, DynamicCache, PretrainedConfig

from cola_lightning.kernels import shared_prefix_attention
from cola_lightning.models.backbone import Backbone, run_decoder_layers
from cola_lightning.models.code_predictor import decoder_stack_config

LAYER_PARTS = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
ATTENTION_PARTS = {"q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm"}


class InjectWorldModel(nn.Module):
    """norm_a(e) + norm_s(s) into copies of the backbone's layers L..end (output not normed).

    Args:
        backbone_config: the backbone's HF config.
        layer: L, where the code enters; 0 <= L < the backbone's number of layers.
        dtype: parameter dtype (the backbone's).
    """

    def __init__(
        self, backbone_config: PretrainedConfig, layer: int, dtype: torch.dtype = torch.float32
    ) -> None:
        super().__init__()
        total = backbone_config.num_hidden_layers
        if not 0 <= layer < total:
            raise ValueError(
                f"world_model.layer {layer} is outside the backbone's layers: it has {total}, so "
                f"choose 0 <= layer <= {total - 1} (copies of layers layer..{total - 1} become "
                "the world model)."
            )
        self.layer = layer
        self.config = decoder_stack_config(backbone_config, total - layer)
        stack = AutoModel.from_config(self.config, dtype=dtype)
        # Only the family's own pieces are kept: its decoder layers (re-indexed 0..n-1 for this
        # model's own cache), its rotary embedding, and two fresh norms of its norm class.
        self.layers = stack.layers
        self.rotary_emb = stack.rotary_emb
        self.action_norm = type(stack.norm)(self.config.hidden_size, eps=self._eps()).to(dtype)
        self.state_norm = type(stack.norm)(self.config.hidden_size, eps=self._eps()).to(dtype)

    def _eps(self) -> float:
        return getattr(self.config, "rms_norm_eps", getattr(self.config, "layer_norm_eps", 1e-6))

    def copy_backbone_layers(self, backbone: Backbone) -> None:
        """Sets every layer copy to the backbone's layer L + i (plain or sharded tensors)."""
        source = backbone.decoder.layers[self.layer :]
        with torch.no_grad():
            for copy, original in zip(self.layers, source, strict=True):
                originals = dict(original.named_parameters())
                for name, parameter in copy.named_parameters():
                    parameter.copy_(originals[name])

    def new_cache(self) -> DynamicCache:
        """An empty KV cache for the layer copies (filled in place by `forward`)."""
        return DynamicCache(config=self.config)

    def inject(self, hidden: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        return self.action_norm(action) + self.state_norm(hidden.to(action.dtype))

    def forward(
        self,
        hidden: torch.Tensor,
        action: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: DynamicCache | None = None,
    ) -> torch.Tensor:
        """Teacher-forced states (B, T, d): one code embedding per position, causal attention."""
        args = (self.rotary_emb, self.config, self.inject(hidden, action), attention_mask)
        return run_decoder_layers(self.layers, *args, position_ids, cache)

    def candidate_states(
        self,
        hidden: torch.Tensor,
        action: torch.Tensor,
        positions: torch.Tensor,
        cache: DynamicCache | None,
        prefix_lengths: torch.Tensor | None,
        backend: str = "auto",
    ) -> torch.Tensor:
        """States (B, K, S, d) of K candidates sharing one prefix, each with S own tokens.

        Args:
            hidden: states (B, K, S, d) at the candidates' own positions.
            action: code embeddings (B, K, S, d).
            positions: (B, S) RoPE positions t..t+S-1 of the own tokens (the same for all K).
            cache: this model's cache over the shared prefix (P positions), read, never changed.
            prefix_lengths: (B,) real prefix positions at the right end of the P (left padding);
                None when every prefix position is real.
            backend: attention backend (`kernels.shared_prefix_attention`).
        """
        batch, count, own, width = hidden.shape
        x = self.inject(hidden, action).reshape(batch, count * own, width)
        rows = positions[:, None, :].expand(batch, count, own).reshape(batch, count * own)
        rotary = self.rotary_emb(x, position_ids=rows)
        past = cache.get_seq_length() if cache is not None else 0
        for index, layer in enumerate(self.layers):
            prefix = cache.layers[index] if past else None
            x = _candidate_layer(layer, x, rotary, prefix, prefix_lengths, (count, own), backend)
        return x.view(batch, count, own, width)


def check_candidate_layer(layer: nn.Module) -> None:
    """Fails clearly on decoder layers that `_candidate_layer` does not reproduce."""
    parts = {name for name, _ in layer.named_children()}
    attention = {name for name, _ in layer.self_attn.named_children()}
    if parts != LAYER_PARTS or not attention <= ATTENTION_PARTS:
        raise NotImplementedError(
            f"Multi-candidate scoring in the inject form supports Llama-style decoder layers "
            f"({sorted(LAYER_PARTS)}); {type(layer).__name__} has {sorted(parts)}. Score each "
            "candidate with world_model_logits instead."
        )


def _candidate_layer(
    layer: nn.Module,
    x: torch.Tensor,
    rotary: tuple[torch.Tensor, torch.Tensor],
    prefix: Any,
    prefix_lengths: torch.Tensor | None,
    shape: tuple[int, int],
    backend: str,
) -> torch.Tensor:
    """One Llama-style decoder layer over (B, K*S, d) candidate rows, attention by the kernel."""
    check_candidate_layer(layer)
    attention = layer.self_attn
    batch, rows, _ = x.shape
    count, own = shape
    normed = layer.input_layernorm(x)
    split = (batch, rows, -1, attention.head_dim)
    query, key, value = (
        proj(normed).view(split) for proj in (attention.q_proj, attention.k_proj, attention.v_proj)
    )
    if hasattr(attention, "q_norm"):
        query, key = attention.q_norm(query), attention.k_norm(key)
    query, key, value = (t.transpose(1, 2) for t in (query, key, value))
    apply_rotary = sys.modules[type(attention).__module__].apply_rotary_pos_emb
    query, key = apply_rotary(query, key, *rotary)
    heads, kv_heads, dim = query.shape[1], key.shape[1], query.shape[-1]
    if prefix is None:
        prefix_key = prefix_value = key.new_zeros(batch, kv_heads, 0, dim)
    else:
        prefix_key, prefix_value = prefix.keys, prefix.values
    out, _ = shared_prefix_attention(
        query.reshape(batch, heads, count, own, dim),
        prefix_key,
        prefix_value,
        key.reshape(batch, kv_heads, count, own, dim),
        value.reshape(batch, kv_heads, count, own, dim),
        prefix_lengths,
        scale=attention.scaling,
        backend=backend,
    )
    out = out.reshape(batch, heads, rows, dim).transpose(1, 2).reshape(batch, rows, heads * dim)
    x = x + attention.o_proj(out)
    return x + layer.mlp(layer.post_attention_layernorm(x))
