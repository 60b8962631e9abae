"""Smoke test on the real embedded SmolLM2-135M-Instruct: loads it and runs a few stage-1 steps."""

import pytest
import torch

from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule
from cola_lightning.models.backbone import BackboneSpec
from cola_lightning.models.cola import CoLAConfig
from cola_lightning.stages.latent_actions import LatentActionModule
from tests.conftest import tiny_trainer

pytestmark = pytest.mark.embedded


def test_stage_one_steps_on_embedded_smollm2():
    module = LatentActionModule(
        BackboneSpec(source="embedded:smollm2-135m"),
        cola=CoLAConfig(num_codes=64, idm_layers=1, policy_layers=1, merge_layers=1),
    )
    module.configure_model()
    backbone = module.model.backbone
    assert type(backbone.lm).__name__ == "LlamaForCausalLM"
    assert backbone.hidden_size == 576 and backbone.config.vocab_size == 49152

    ids = module.tokenizer("The answer is 12 because 3 * 4 = 12.", return_tensors="pt").input_ids
    hidden, _ = backbone(ids)
    torch.testing.assert_close(backbone.lm_head(hidden), backbone.lm(ids).logits)

    frozen = {k: v.clone() for k, v in backbone.state_dict().items()}
    data = TextCorpusDataModule(
        arithmetic=ArithmeticCorpus(num_problems=40), seq_len=32, batch_size=2
    )
    trainer = tiny_trainer(max_steps=3, limit_val_batches=1)
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert all(torch.equal(v, frozen[k]) for k, v in backbone.state_dict().items())
