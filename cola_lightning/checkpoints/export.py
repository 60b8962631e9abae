"""Export a CoLA model as a Hugging Face-style directory, and load it back.

The directory holds the backbone exactly as `save_pretrained` writes it (config.json and
model.safetensors: plain `AutoModelForCausalLM.from_pretrained` loads it), the tokenizer beside it,
and the latent parts in `cola.safetensors` with their sizes in `cola_config.json`. LoRA adapters
are merged into the backbone and k-bit weights de-quantised first, so the export is a plain model.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from safetensors.torch import save_file

from cola_lightning.checkpoints.format import (
    BACKBONE_PREFIX,
    COLA_CONFIG,
    COLA_WEIGHTS,
    check_state_keys,
    is_export_dir,
    load_adapters,
    load_stage_checkpoint,
    read_export_state,
    stage_settings,
)
from cola_lightning.models.adapters import dequantize_linear_layers, merge_lora
from cola_lightning.models.backbone import Backbone, BackboneSpec, load_causal_lm, load_tokenizer
from cola_lightning.models.cola import CoLAConfig, CoLAModel


def export_cola(model: CoLAModel, tokenizer, out_dir: str | Path) -> Path:
    """Writes `model` to `out_dir`. The backbone is merged and de-quantised in place.

    Refuses a non-empty `out_dir`, so an earlier export is never overwritten.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; export into a new directory.")
    lm = model.backbone.lm
    dtype = next(p for p in lm.parameters() if p.is_floating_point()).dtype
    dequantize_linear_layers(lm, dtype)
    merge_lora(lm)
    if hasattr(lm.config, "quantization_config"):
        del lm.config.quantization_config  # e.g. a GGUF source: the export is plain weights
    lm.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    latent = {
        key: value.detach().contiguous().cpu()
        for key, value in model.state_dict().items()
        if not key.startswith(BACKBONE_PREFIX)
    }
    save_file(latent, str(out_dir / COLA_WEIGHTS))
    (out_dir / COLA_CONFIG).write_text(json.dumps(asdict(model.config), indent=2))
    return out_dir


def load_cola_export(path: str | Path) -> CoLAModel:
    """A CoLAModel from an export directory; any missing or unexpected tensor is an error."""
    path = Path(path)
    if not is_export_dir(path):
        raise FileNotFoundError(f"{path} is not a CoLA export: it has no {COLA_WEIGHTS}.")
    config = CoLAConfig(**json.loads((path / COLA_CONFIG).read_text()))
    model = CoLAModel(Backbone.from_spec(BackboneSpec(source=str(path))), config)
    state = read_export_state(path)
    expected = {k for k in model.state_dict() if not k.startswith(BACKBONE_PREFIX)}
    check_state_keys(expected, set(state), set(), str(path))
    model.load_state_dict(state, strict=False)
    return model


def load_cola(path: str | Path) -> tuple[CoLAModel, object]:
    """A CoLA model (in eval mode) and its tokenizer from any checkpoint this framework reads.

    That is an export directory, a released CoLA checkpoint directory, or a stage checkpoint,
    whose recorded backbone (with its LoRA) is rebuilt from its source and whose own tensors are
    loaded: the stages it started from need not exist any more.
    """
    from cola_lightning.checkpoints.released import INDEX, load_released

    path = Path(path).expanduser()
    if is_export_dir(path):
        return load_cola_export(path).eval(), load_tokenizer(str(path))
    if path.is_dir() and (path / INDEX).is_file():
        return load_released(path).eval(), load_tokenizer(str(path))
    backbone, cola = stage_settings(path)
    spec = BackboneSpec(**backbone)
    model = CoLAModel(Backbone(load_causal_lm(spec)), CoLAConfig(**cola))
    adapters = load_stage_checkpoint(model, path)
    model.backbone.adapt(spec)
    if adapters:
        load_adapters(model, adapters, str(path))
    return model.eval(), load_tokenizer(spec.tokenizer_name)
