"""The released CoLA layout: round trip, a hand-written forward, and every refusal."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cola_lightning.checkpoints.released import INDEX, load_released, main, save_released
from tests.conftest import tiny_model


@pytest.fixture
def released(tmp_path):
    """A tiny model written in the released layout, in several shards."""
    model = tiny_model()
    out = save_released(model, tmp_path / "released", max_shard_bytes=20_000, variant=3)
    return model, out


def all_tensors(path) -> dict[str, torch.Tensor]:
    files = set(json.loads((path / INDEX).read_text())["weight_map"].values())
    return {k: v for f in files for k, v in load_file(str(path / f)).items()}


def test_layout_names_and_config(released):
    model, path = released
    index = json.loads((path / INDEX).read_text())["weight_map"]
    assert len(set(index.values())) > 2  # really sharded
    for name in (
        "model.embed_tokens.weight",
        "model.layers.1.mlp.down_proj.weight",
        "model.norm.weight",
        "lm_head.weight",
        "model.action_layers.0.self_attn.q_proj.weight",
        "model.action_norm.weight",
        "model.action_head.weight",
        "model.action_code_book.weight",
        "model.action_merge_layers.0.gate_proj.weight",
        "model.policy_layers.0.mlp.up_proj.weight",
        "model.policy_norm.weight",
        "model.policy_head.weight",
    ):
        assert name in index, name
    tensors = all_tensors(path)
    d, k = 32, 8
    assert tensors["model.action_head.weight"].shape == (k, d)
    assert tensors["model.action_code_book.weight"].shape == (d, k)
    assert tensors["model.action_merge_layers.0.up_proj.weight"].shape == (64, 2 * d)
    config = json.loads((path / "config.json").read_text())
    assert (config["num_code"], config["num_action_layer"]) == (8, 1)
    assert (config["num_policy_layer"], config["num_dyna_layer"], config["v"]) == (1, 1, 3)


def test_round_trip_is_bit_exact(released, tmp_path):
    model, path = released
    loaded = load_released(path)
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    again = save_released(loaded, tmp_path / "again", max_shard_bytes=20_000)
    first, second = all_tensors(path), all_tensors(again)
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def test_world_model_logits_follow_a_hand_written_forward(released):
    """DESIGN.md section 1: s_0 = h; s += down(silu(gate([s; e])) * up([s; e]));
    logits = lm_head(final_norm(s_N) - h), with e = codebook column of the code."""
    _, path = released
    model = load_released(path)
    w = all_tensors(path)
    eps = model.backbone.config.rms_norm_eps
    ids = torch.randint(0, 259, (2, 7))
    codes = torch.randint(0, 8, (2, 7))
    with torch.no_grad():
        hidden, _ = model.hidden_states(ids)
        got = model.world_model_logits(hidden, codes)
        base = model.base_logits(hidden)
    e = w["model.action_code_book.weight"].T[codes]  # (B, T, d)
    s = hidden
    merged = torch.cat([s, e], -1)
    gate = merged @ w["model.action_merge_layers.0.gate_proj.weight"].T
    up = merged @ w["model.action_merge_layers.0.up_proj.weight"].T
    s = s + (F.silu(gate) * up) @ w["model.action_merge_layers.0.down_proj.weight"].T
    want = (rms_norm(s, w["model.norm.weight"], eps) - hidden) @ w["lm_head.weight"].T
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # The backbone's final states are already normed: its own logits are lm_head(h).
    torch.testing.assert_close(base, hidden @ w["lm_head.weight"].T, rtol=1e-5, atol=1e-5)


def rewrite_shard(path, shard, change):
    tensors = load_file(str(path / shard))
    change(tensors)
    save_file(tensors, str(path / shard))


def first_shard(path, key):
    return json.loads((path / INDEX).read_text())["weight_map"][key]


def test_missing_tensor_is_named(released):
    _, path = released
    key = "model.policy_head.weight"
    rewrite_shard(path, first_shard(path, key), lambda t: t.pop(key))
    index = json.loads((path / INDEX).read_text())
    del index["weight_map"][key]
    (path / INDEX).write_text(json.dumps(index))
    with pytest.raises(KeyError, match=r"1 missing tensors \[model.policy_head.weight\]"):
        load_released(path)


def test_unexpected_tensor_is_named(released):
    _, path = released
    shard = first_shard(path, "model.norm.weight")
    rewrite_shard(path, shard, lambda t: t.update({"model.value_head.weight": torch.zeros(2)}))
    index = json.loads((path / INDEX).read_text())
    index["weight_map"]["model.value_head.weight"] = shard
    (path / INDEX).write_text(json.dumps(index))
    with pytest.raises(KeyError, match=r"1 unexpected tensors \[model.value_head.weight\]"):
        load_released(path)


def test_mis_shaped_tensor_is_named(released):
    _, path = released
    key = "model.action_head.weight"
    rewrite_shard(path, first_shard(path, key), lambda t: t.update({key: torch.zeros(9, 32)}))
    with pytest.raises(
        RuntimeError, match=r"model.action_head.weight: \(9, 32\) in the checkpoint"
    ):
        load_released(path)


def test_index_naming_an_absent_shard_is_refused(released):
    _, path = released
    shard = first_shard(path, "model.action_code_book.weight")
    (path / shard).unlink()
    with pytest.raises(FileNotFoundError, match=f"absent: \\['{shard}'\\]"):
        load_released(path)


def test_shard_holding_unlisted_keys_is_refused(released):
    """The reported failure: the index and the shards disagree about where a tensor lives."""
    _, path = released
    key = "model.action_norm.weight"
    index = json.loads((path / INDEX).read_text())
    home = index["weight_map"][key]
    other = next(s for s in set(index["weight_map"].values()) if s != home)
    with safe_open(str(path / home), "pt") as handle:
        tensor = handle.get_tensor(key)
    rewrite_shard(path, other, lambda t: t.update({key: tensor}))
    with pytest.raises(KeyError, match=f"{other} disagrees .* index does not list \\[{key}\\]"):
        load_released(path)


def test_cli_converts_to_an_export_and_back(released, tmp_path):
    model, path = released
    export = ["--out", str(tmp_path / "export"), "--dtype", "float32", "--tokenizer", "bytes"]
    main(["--released", str(path), *export])
    assert (tmp_path / "export" / "cola.safetensors").is_file()
    main(["--export", str(tmp_path / "export"), "--out", str(tmp_path / "back")])
    first, second = all_tensors(path), all_tensors(tmp_path / "back")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
