"""Backbone sources and their errors; the byte tokenizer."""

import pytest
import torch

from cola_lightning.models.backbone import Backbone, BackboneSpec, load_tokenizer, resolve_source
from cola_lightning.models.tokenizer import byte_tokenizer
from tests.conftest import TINY, tiny_spec


def test_byte_tokenizer_round_trips_any_text():
    tokenizer = byte_tokenizer()
    text = "Ünïcode 12 + 3 = 15\n\ttabs"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text
    assert tokenizer.eos_token_id == 257 and tokenizer.pad_token_id == 256


def test_backbone_exposes_final_norm_lm_head_and_is_frozen():
    backbone = Backbone.from_spec(tiny_spec())
    ids = torch.randint(0, 256, (2, 7))
    hidden, _ = backbone(ids)
    full = backbone.lm(ids, output_hidden_states=True)
    # h is already final-normed: lm_head(h) gives the LM's own logits.
    torch.testing.assert_close(backbone.lm_head(hidden), full.logits)
    assert not hidden.requires_grad
    assert not any(p.requires_grad for p in backbone.parameters())
    assert backbone.final_norm is backbone.decoder.norm


def test_local_directory_round_trip(tmp_path):
    backbone = Backbone.from_spec(tiny_spec())
    backbone.lm.save_pretrained(tmp_path / "lm")
    reloaded = Backbone.from_spec(BackboneSpec(source=str(tmp_path / "lm"), tokenizer="bytes"))
    ids = torch.randint(0, 256, (1, 5))
    torch.testing.assert_close(reloaded(ids)[0], backbone(ids)[0])


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="Backbone path not found"):
        resolve_source(str(tmp_path / "no_such_model"))
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        resolve_source(str(tmp_path / "model.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_source(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="Unknown embedded model"):
        resolve_source("embedded:gpt-17")


def test_spec_validation():
    with pytest.raises(ValueError, match="exactly one"):
        BackboneSpec()
    with pytest.raises(ValueError, match="model_type"):
        BackboneSpec(config=dict(TINY), tokenizer="bytes")
    with pytest.raises(ValueError, match="needs `tokenizer`"):
        BackboneSpec(config={"model_type": "llama", **TINY})
    with pytest.raises(ValueError, match="dtype"):
        BackboneSpec(source="x", dtype="float8")


def test_tokenizer_from_missing_source_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such"):
        load_tokenizer(str(tmp_path / "no_such"))
