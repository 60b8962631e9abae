"""The released CoLA checkpoint layout (LAMDA-RL/Llama-3.1-CoLA-10B), read and written loudly.

    python -m cola_lightning.checkpoints.released --released DIR --out EXPORT_DIR
    python -m cola_lightning.checkpoints.released --export EXPORT_DIR --out RELEASED_DIR

The released checkpoint is a Hugging Face Llama checkpoint (sharded safetensors with a
``model.safetensors.index.json``) with the latent parts as extra tensors under ``model.``, and
their sizes as extra config fields (DESIGN.md section 4). A third party reports that the published
index can disagree with the shards, which leaves weights silently random; so reading refuses an
index naming an absent shard, a shard holding keys the index does not list, and any missing,
unexpected or mis-shaped tensor, and names the keys.

The first form writes a CoLA export directory (`cola_lightning.checkpoints.export`) that stages
load with ``init_from: EXPORT_DIR`` and ``backbone.source: EXPORT_DIR``; the second writes an
export back in the released layout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import AutoConfig, AutoModelForCausalLM

from cola_lightning.checkpoints.format import check_state_keys, preview_keys
from cola_lightning.models.backbone import DTYPES, Backbone
from cola_lightning.models.cola import CoLAConfig, CoLAModel

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"
# Released name prefix -> this framework's CoLAModel prefix. Specific prefixes come first: the
# backbone's own ``model.`` is the catch-all.
PREFIXES = (
    ("model.action_layers.", "inverse_dynamics.blocks.layers."),
    ("model.action_norm.", "inverse_dynamics.blocks.norm."),
    ("model.action_head.", "inverse_dynamics.head."),
    ("model.action_code_book.", "codebook."),
    ("model.action_merge_layers.", "world_model.layers."),
    ("model.policy_layers.", "policy.blocks.layers."),
    ("model.policy_norm.", "policy.blocks.norm."),
    ("model.policy_head.", "policy.head."),
    ("model.", "backbone.lm.model."),
    ("lm_head.", "backbone.lm.lm_head."),
)
# Released config field -> CoLAConfig field.
CONFIG_FIELDS = {
    "num_code": "num_codes",
    "num_action_layer": "idm_layers",
    "num_policy_layer": "policy_layers",
    "num_dyna_layer": "merge_layers",
}
VARIANT_FIELD = "v"  # the reference code's variant number; kept as read, never interpreted


def _rename(name: str, pairs) -> str:
    for source, target in pairs:
        if name.startswith(source):
            return target + name[len(source) :]
    raise KeyError(f"{name!r} has no counterpart in the released CoLA layout.")


def to_released_name(name: str) -> str:
    """The released checkpoint's name for a CoLAModel state-dict key."""
    return _rename(name, [(ours, theirs) for theirs, ours in PREFIXES])


def from_released_name(name: str) -> str:
    """The CoLAModel state-dict key for a released checkpoint's tensor name."""
    return _rename(name, PREFIXES)


def cola_config_from(config: dict, source: str) -> CoLAConfig:
    """The latent parts' sizes from a released config.json (the merge form, with ``- h_t``)."""
    missing = [field for field in CONFIG_FIELDS if field not in config]
    if missing:
        raise KeyError(
            f"{source} lacks the CoLA config fields {missing}: it is not a released CoLA "
            f"checkpoint (expected {sorted(CONFIG_FIELDS)} beside the Llama fields)."
        )
    return CoLAConfig(**{ours: config[theirs] for theirs, ours in CONFIG_FIELDS.items()})


def shard_map(path: Path) -> dict[str, str]:
    """Tensor name -> shard file, checked against the shards actually present."""
    if not (path / INDEX).is_file():
        if not (path / SINGLE).is_file():
            raise FileNotFoundError(f"{path} has neither {INDEX} nor {SINGLE}.")
        with safe_open(str(path / SINGLE), "pt") as shard:
            return dict.fromkeys(shard.keys(), SINGLE)
    weight_map = json.loads((path / INDEX).read_text())["weight_map"]
    by_shard: dict[str, set[str]] = {}
    for name, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(name)
    absent = sorted(shard for shard in by_shard if not (path / shard).is_file())
    if absent:
        names = sorted(n for s in absent for n in by_shard[s])
        raise FileNotFoundError(
            f"{path / INDEX} names shards that are absent: {absent}, holding {len(names)} "
            f"tensors {preview_keys(names)}. Download the missing shards."
        )
    for shard, listed in sorted(by_shard.items()):
        with safe_open(str(path / shard), "pt") as handle:
            held = set(handle.keys())
        if held != listed:
            raise KeyError(
                f"{path / shard} disagrees with {INDEX}: it holds {len(held - listed)} keys the "
                f"index does not list {preview_keys(sorted(held - listed))} and lacks "
                f"{len(listed - held)} that it lists {preview_keys(sorted(listed - held))}. "
                "The index and the shards come from different uploads; fetch both again."
            )
    return weight_map


def load_released(path: str | Path, dtype: str | None = None) -> CoLAModel:
    """A CoLAModel holding every tensor of a released checkpoint directory.

    Args:
        path: the directory with config.json, the shards and their index.
        dtype: ``float32``, ``bfloat16`` or ``float16``; None keeps the config's ``dtype``.
    """
    path = Path(path)
    config = AutoConfig.from_pretrained(path)
    raw = json.loads((path / "config.json").read_text())
    cola_config = cola_config_from(raw, str(path / "config.json"))
    name = dtype or str(getattr(config, "dtype", None) or "float32").removeprefix("torch.")
    lm = AutoModelForCausalLM.from_config(config, dtype=DTYPES[name])
    model = CoLAModel(Backbone(lm), cola_config)
    weight_map = shard_map(path)
    targets = model.state_dict()
    expected = {to_released_name(k) for k in targets if not _tied_head(model, k)}
    check_state_keys(expected, set(weight_map), set(), str(path))
    _check_shapes(path, weight_map, targets)
    with torch.no_grad():
        for shard in sorted(set(weight_map.values())):
            with safe_open(str(path / shard), "pt") as handle:
                for key in handle.keys():  # noqa: SIM118 (a safetensors handle is not a dict)
                    targets[from_released_name(key)].copy_(handle.get_tensor(key))
    return model


def _tied_head(model: CoLAModel, key: str) -> bool:
    """A tied lm_head is the embedding itself: released checkpoints then leave it out."""
    return key == "backbone.lm.lm_head.weight" and model.backbone.config.tie_word_embeddings


def _check_shapes(path: Path, weight_map: dict[str, str], targets: dict) -> None:
    wrong = []
    for key, shard in sorted(weight_map.items()):
        with safe_open(str(path / shard), "pt") as handle:
            shape = tuple(handle.get_slice(key).get_shape())
        want = tuple(targets[from_released_name(key)].shape)
        if shape != want:
            wrong.append(f"{key}: {shape} in the checkpoint, {want} in the model")
    if wrong:
        raise RuntimeError(
            f"{path} has {len(wrong)} mis-shaped tensors: {'; '.join(wrong[:5])}. Check that "
            "config.json describes these weights."
        )


def save_released(
    model: CoLAModel, out_dir: str | Path, max_shard_bytes: int = 5 * 2**30, variant=None
) -> Path:
    """Writes `model` in the released layout: sharded safetensors, their index, config.json.

    Args:
        model: a merge-form CoLA model without LoRA adapters (export first to merge them).
        out_dir: a new or empty directory.
        max_shard_bytes: the most bytes of tensors in one shard.
        variant: the config's ``v``; None keeps the backbone config's, if any.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} is not empty; write into a new directory.")
    if model.backbone.has_adapters:
        raise ValueError("The model has LoRA adapters: export it first, which merges them.")
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {
        to_released_name(k): v.detach().contiguous().cpu()
        for k, v in model.state_dict().items()
        if not _tied_head(model, k)
    }
    shards = _split(state, max_shard_bytes)
    weight_map = {}
    for number, names in enumerate(shards, start=1):
        file = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file({n: state[n] for n in names}, str(out_dir / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
    total = sum(t.numel() * t.element_size() for t in state.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / INDEX).write_text(json.dumps(index, indent=2))
    config = model.backbone.config.to_dict()
    config.update({theirs: getattr(model.config, ours) for theirs, ours in CONFIG_FIELDS.items()})
    variant = variant if variant is not None else config.get(VARIANT_FIELD)
    if variant is not None:
        config[VARIANT_FIELD] = variant
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, default=str))
    return out_dir


def _split(state: dict[str, torch.Tensor], max_bytes: int) -> list[list[str]]:
    """Tensor names in order, cut into shards of at most `max_bytes` (a bigger tensor alone)."""
    shards, size = [[]], 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    return shards


def main(args: list[str] | None = None) -> None:
    from cola_lightning.checkpoints.export import export_cola, load_cola_export
    from cola_lightning.models.backbone import load_tokenizer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--released", help="a released CoLA checkpoint directory to read")
    source.add_argument("--export", help="a CoLA export directory to write in the released layout")
    parser.add_argument("--out", required=True, help="a new (or empty) directory")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="parameter dtype when reading")
    parser.add_argument("--tokenizer", help="tokenizer source; defaults to the input directory")
    parsed = parser.parse_args(args)
    if parsed.released:
        model = load_released(parsed.released, parsed.dtype)
        export_cola(model, load_tokenizer(parsed.tokenizer or parsed.released), parsed.out)
    else:
        save_released(load_cola_export(parsed.export), parsed.out)
        load_tokenizer(parsed.tokenizer or parsed.export).save_pretrained(parsed.out)
    print(f"wrote {parsed.out}")


if __name__ == "__main__":
    main()
