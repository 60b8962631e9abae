"""Stage 2: what trains and what stays, LoRA and QLoRA, and the export round trip."""

import dataclasses

import pytest
import torch
from transformers import AutoModelForCausalLM

from cola_lightning.checkpoints.export import export_cola, load_cola_export
from cola_lightning.checkpoints.format import load_stage
from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.sft import PromptResponseDataModule
from cola_lightning.export import main as export_main
from cola_lightning.models.adapters import LoraSpec
from cola_lightning.stages.action_guided import ActionGuidedFinetuneModule
from cola_lightning.stages.optim import OptimizerConfig
from tests.conftest import TINY_COLA, tiny_spec, tiny_trainer

LATENT = ("inverse_dynamics.", "codebook.", "world_model.", "policy.")
FAST = OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1)


def sft_data():
    return PromptResponseDataModule(
        arithmetic=ArithmeticCorpus(num_problems=24),
        tokenizer="bytes",
        max_length=256,
        batch_size=4,
    )


def stage_two(init_from, actions="idm", **backbone) -> ActionGuidedFinetuneModule:
    spec = dataclasses.replace(tiny_spec(), **backbone)
    module = ActionGuidedFinetuneModule(spec, str(init_from), actions, TINY_COLA, FAST)
    module.configure_model()
    return module


def snapshot(module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("actions", ["idm", "policy", "none"])
def test_only_the_backbone_learns(stage_one_b_checkpoint, actions):
    path, stage_one_b = stage_one_b_checkpoint
    module = stage_two(path, actions)
    for key, value in snapshot(module).items():  # starts exactly from stage 1b
        assert torch.equal(value, stage_one_b[key]), key
    tiny_trainer(max_steps=3).fit(module, sft_data())
    after = module.model.state_dict()
    for key in after:
        if key.startswith(LATENT):
            assert torch.equal(after[key], stage_one_b[key]), key
    assert any(
        not torch.equal(after[k], stage_one_b[k]) for k in after if k.startswith("backbone.")
    )


def test_token_sft_lowers_the_backbones_own_loss_not_the_world_models(stage_one_b_checkpoint):
    """`actions: none` trains the backbone's own head (the token baseline's SFT), nothing else."""
    path, _ = stage_one_b_checkpoint
    runs = {}
    for actions in ("idm", "none"):
        trainer = tiny_trainer(max_steps=6, limit_val_batches=2, val_check_interval=6)
        trainer.fit(stage_two(path, actions), sft_data())
        runs[actions] = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert runs["none"]["val/base_nll"] < runs["idm"]["val/base_nll"]
    assert runs["idm"]["val/wm_nll"] < runs["none"]["val/wm_nll"]


def test_lora_changes_only_adapters(stage_one_b_checkpoint):
    path, _ = stage_one_b_checkpoint
    module = stage_two(path, lora=LoraSpec(rank=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_" in n for n in trainable)
    before = snapshot(module)
    tiny_trainer(max_steps=3).fit(module, sft_data())
    after = module.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(".lora_B." in k or ".lora_A." in k for k in changed)


@pytest.fixture(params=[False, True], ids=["cpu-as-is", "avx512bf16-forced"])
def avx512bf16(request, monkeypatch):
    """Runs a test as this CPU is, and again as if it had AVX512-BF16 (bitsandbytes' repacking
    path, which depends on the machine: DESIGN.md section 9)."""
    import bitsandbytes.nn.modules as bnb_modules

    if request.param:
        monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)
    return request.param


def test_qlora_base_layers_are_4bit_and_training_reduces_the_loss(
    stage_one_b_checkpoint, avx512bf16
):
    import bitsandbytes as bnb

    path, _ = stage_one_b_checkpoint
    module = stage_two(path, quantization="nf4", lora=LoraSpec(rank=8, alpha=16, dropout=0.0))
    q_proj = module.model.backbone.decoder.layers[0].self_attn.q_proj
    assert isinstance(q_proj.base_layer, bnb.nn.Linear4bit)
    assert q_proj.base_layer.weight.dtype == torch.uint8
    data = sft_data()
    trainer = tiny_trainer(max_steps=15, limit_val_batches=2)
    trainer.validate(module, data, verbose=False)
    before = trainer.callback_metrics["val/wm_nll"].item()
    trainer.fit(module, data)
    trainer.validate(module, data, verbose=False)
    assert trainer.callback_metrics["val/wm_nll"].item() < before - 0.05


def test_qlora_outputs_in_training_are_the_same_before_and_after_an_evaluation_call(
    stage_one_b_checkpoint, avx512bf16
):
    import bitsandbytes as bnb

    module = stage_two(stage_one_b_checkpoint[0], quantization="nf4", lora=LoraSpec(rank=4))
    layers = [m for m in module.model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert layers and not any(layer.support_avx512bf16_for_cpu for layer in layers)
    ids = torch.randint(0, 256, (2, 12))
    module.model.train()
    torch.manual_seed(0)
    before, _ = module.model.hidden_states(ids)
    module.model.eval()
    with torch.no_grad():
        evaluated, _ = module.model.hidden_states(ids)
    module.model.train()
    torch.manual_seed(0)  # the same LoRA dropout draws as before
    after, _ = module.model.hidden_states(ids)
    assert torch.equal(before, after)
    assert evaluated.shape == before.shape


def test_quantised_weights_cannot_be_trained_without_lora(stage_one_b_checkpoint):
    with pytest.raises(ValueError, match="QLoRA"):
        stage_two(stage_one_b_checkpoint[0], quantization="nf4")


def test_export_round_trip(stage_one_b_checkpoint, tmp_path):
    path, _ = stage_one_b_checkpoint
    module = stage_two(path, lora=LoraSpec(rank=4, alpha=8, dropout=0.0))
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(module, sft_data())
    ckpt = tmp_path / "stage2.ckpt"
    trainer.save_checkpoint(ckpt)

    reloaded_stage = load_stage(str(ckpt))  # the stage rebuilt from its checkpoint alone
    ids = torch.randint(0, 256, (2, 12))
    codes = torch.randint(0, 8, (2, 12))

    def outputs(model):
        with torch.no_grad():
            hidden, _ = model.hidden_states(ids)
            return model.world_model_logits(hidden, codes), model.policy_logits(hidden)[0]

    expected = outputs(module.model.eval())
    for got, want in zip(outputs(reloaded_stage.model.eval()), expected, strict=True):
        torch.testing.assert_close(got, want)

    export_cola(reloaded_stage.model, reloaded_stage.tokenizer, tmp_path / "export")
    exported = load_cola_export(tmp_path / "export").eval()
    assert not any(".lora_" in k for k in exported.state_dict())
    for got, want in zip(outputs(exported), expected, strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)  # merge rounding

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "export")
    with torch.no_grad():
        hidden, _ = exported.hidden_states(ids)
        torch.testing.assert_close(plain(ids).logits, exported.base_logits(hidden))
    with pytest.raises(FileExistsError, match="not empty"):
        export_cola(exported, reloaded_stage.tokenizer, tmp_path / "export")

    export_main(["--checkpoint", str(ckpt), "--out", str(tmp_path / "from_cli")])
    names = {p.name for p in (tmp_path / "from_cli").iterdir()}
    assert {"config.json", "model.safetensors", "cola.safetensors", "tokenizer.json"} <= names


def test_action_guided_requires_init_from():
    with pytest.raises(ValueError, match="needs `init_from`"):
        ActionGuidedFinetuneModule(tiny_spec())


def test_8bit_adamw_trains(stage_one_b_checkpoint):
    import bitsandbytes as bnb

    path, _ = stage_one_b_checkpoint
    spec = dataclasses.replace(tiny_spec(), lora=LoraSpec(rank=4, alpha=8, dropout=0.0))
    optimizer = OptimizerConfig(name="adamw8bit", lr=1e-2, min_lr=1e-3, warmup_steps=1)
    module = ActionGuidedFinetuneModule(spec, str(path), "idm", TINY_COLA, optimizer)
    module.configure_model()
    before = snapshot(module)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(module, sft_data())
    assert isinstance(trainer.optimizers[0], bnb.optim.AdamW8bit)
    after = module.model.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in after if ".lora_B." in k)
    assert all(torch.isfinite(v).all() for v in after.values() if v.is_floating_point())
