"""LoRA adapters (peft) and k-bit base weights (bitsandbytes) for the backbone's decoder layers.

QLoRA is both: 4-bit NF4 base weights, frozen, with trainable LoRA adapters on top. The adapters are
injected in place (`peft.inject_adapter_in_model`), so the backbone keeps its own module paths and
every other part of the framework sees the same model. For export, `dequantize_linear_layers` and
`merge_lora` turn the backbone back into plain `nn.Linear` layers that `transformers` can save.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

QUANTIZATIONS = ("nf4", "int8")
LLAMA_STYLE_PROJECTIONS = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
]


@dataclass
class LoraSpec:
    """LoRA adapters on the backbone.

    Args:
        rank: r, the adapters' inner width.
        alpha: scaling numerator (the update is alpha / rank * B A x).
        dropout: dropout on the adapters' input.
        target_modules: names of the linear layers that get adapters.
    """

    rank: int = 16
    alpha: float = 32.0
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_STYLE_PROJECTIONS))


def _bitsandbytes():
    try:
        import bitsandbytes
    except ImportError as error:
        raise ImportError(
            "k-bit quantisation needs bitsandbytes: pip install bitsandbytes==0.50.2"
        ) from error
    return bitsandbytes


def quantize_linear_layers(
    module: nn.Module, quantization: str, compute_dtype: torch.dtype = torch.float32
) -> int:
    """Replaces every nn.Linear inside `module` by a frozen bitsandbytes k-bit layer.

    Args:
        module: usually the backbone's decoder layers (not the lm_head or embeddings).
        quantization: ``nf4`` (4-bit NormalFloat, as QLoRA) or ``int8``.
        compute_dtype: dtype the 4-bit layers compute in.

    Returns:
        The number of layers replaced.
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"Unknown quantization {quantization!r}; use one of {QUANTIZATIONS}.")
    bnb = _bitsandbytes()
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is not nn.Linear:
                continue
            setattr(parent, name, _quantized(child, quantization, compute_dtype, bnb))
            replaced += 1
    return replaced


def _quantized(linear: nn.Linear, quantization: str, compute_dtype: torch.dtype, bnb) -> nn.Module:
    device = linear.weight.device
    weight = linear.weight.data.to(compute_dtype).cpu()
    has_bias = linear.bias is not None
    if quantization == "nf4":
        layer = bnb.nn.Linear4bit(
            linear.in_features, linear.out_features, has_bias, compute_dtype, quant_type="nf4"
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
        # On a CPU with AVX512-BF16, bitsandbytes repacks the weights in place the first time
        # the layer runs in eval mode without grad (DESIGN.md section 9): that crashes for
        # in_features < 64 and otherwise changes the layer's outputs for good, in training too.
        # Keeping the portable kernel gives the same outputs in training and evaluation.
        layer.support_avx512bf16_for_cpu = False
    else:
        layer = bnb.nn.Linear8bitLt(
            linear.in_features, linear.out_features, has_bias, has_fp16_weights=False
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    if has_bias:
        layer.bias = nn.Parameter(linear.bias.data.to(compute_dtype), requires_grad=False)
    return layer.to(device)  # moving to a device is what quantises the weights


def dequantize_linear_layers(module: nn.Module, dtype: torch.dtype = torch.float32) -> int:
    """Replaces every bitsandbytes k-bit layer inside `module` by an nn.Linear (for export)."""
    bnb = _bitsandbytes()
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, bnb.nn.Linear4bit):
                weight = bnb.functional.dequantize_4bit(child.weight.data, child.weight.quant_state)
            elif isinstance(child, bnb.nn.Linear8bitLt):
                scale = child.weight.SCB.float()[:, None] / 127.0
                weight = child.weight.data.float() * scale
            else:
                continue
            linear = nn.Linear(child.in_features, child.out_features, child.bias is not None)
            linear.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
            if child.bias is not None:
                linear.bias = nn.Parameter(child.bias.data.to(dtype), requires_grad=False)
            setattr(parent, name, linear.to(weight.device))
            replaced += 1
    return replaced


def apply_lora(module: nn.Module, spec: LoraSpec) -> nn.Module:
    """Injects LoRA adapters (trainable) into `module` in place; base weights stay as they are."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.rank,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=list(spec.target_modules),
    )
    try:
        return inject_adapter_in_model(config, module)
    except ValueError as error:
        raise ValueError(
            f"LoRA target_modules {spec.target_modules} do not match this backbone's layers: "
            f"{error}"
        ) from error


def merge_lora(module: nn.Module) -> int:
    """Folds every LoRA adapter into its base layer and removes the adapter. Returns the count."""
    from peft.tuners.lora import LoraLayer

    merged = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoraLayer):
                child.merge()
                setattr(parent, name, child.get_base_layer())
                merged += 1
    return merged


def is_adapter_key(key: str) -> bool:
    """Whether a state-dict key belongs to a LoRA adapter."""
    return ".lora_" in key
