"""Stage 1 in the inject form: the code enters at layer 1, copies of layers 1..2 are the model."""

import torch

from cola_lightning.rewards.registry import RewardSpec
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.stages.action_guided import ActionGuidedFinetuneModule
from cola_lightning.stages.latent_actions import LatentActionModule
from cola_lightning.stages.optim import OptimizerConfig
from cola_lightning.stages.rl import LatentRLModule, RLConfig
from tests.conftest import tiny_data, tiny_trainer
from tests.models.inject_models import INJECT_COLA, inject_spec
from tests.stages.test_action_guided import sft_data
from tests.stages.test_rl import task_data


def test_inject_stage_one_learns_and_keeps_the_backbone_bit_identical():
    optimizer = OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2)
    module = LatentActionModule(inject_spec(), cola=INJECT_COLA, optimizer=optimizer)
    module.configure_model()
    model = module.model
    # the world model starts as the backbone's own layers L..end
    originals = model.backbone.decoder.layers[1:]
    for copy, original in zip(model.world_model.layers, originals, strict=True):
        for (name, a), b in zip(copy.named_parameters(), original.parameters(), strict=True):
            assert torch.equal(a, b), name
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = tiny_data()
    trainer = tiny_trainer(max_steps=10)
    trainer.validate(module, data, verbose=False)
    start = trainer.callback_metrics["val/wm_nll"].item()
    trainer.fit(module, data)
    trainer.validate(module, data, verbose=False)
    end = trainer.callback_metrics["val/wm_nll"].item()
    assert end < start - 1.0  # 6.18 -> 4.16 nats when written
    after = model.state_dict()
    for key, value in before.items():
        if key.startswith(("backbone.", "policy.")):
            assert torch.equal(after[key], value), key
    for part in ("world_model.layers.", "world_model.action_norm.", "inverse_dynamics."):
        assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith(part))


def test_stage_two_and_latent_rl_run_in_the_inject_form(tmp_path):
    """The later stages on an inject-form checkpoint: each trains only its own part."""
    module = LatentActionModule(inject_spec(), cola=INJECT_COLA)
    trainer = tiny_trainer(max_steps=2)
    trainer.fit(module, tiny_data())
    checkpoint = tmp_path / "stage1.ckpt"
    trainer.save_checkpoint(checkpoint)
    stage_two = ActionGuidedFinetuneModule(inject_spec(), str(checkpoint), cola=INJECT_COLA)
    latent_rl = LatentRLModule(
        inject_spec(),
        init_from=str(checkpoint),
        cola=INJECT_COLA,
        optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-2, warmup_steps=0),
        rl=RLConfig(kl_coef=0.1),
        rewards=[RewardSpec("tests.stages.test_rl:length_reward")],
        accuracy_reward="arithmetic",
        generation=GenerationConfig(max_new_tokens=6),
    )
    for stage, data, trained in (
        (stage_two, sft_data(), "backbone."),
        (latent_rl, task_data(), "policy."),
    ):
        stage.configure_model()
        before = {k: v.clone() for k, v in stage.model.state_dict().items()}
        tiny_trainer(max_steps=2, limit_val_batches=0).fit(stage, data)
        after = stage.model.state_dict()
        changed = {k for k in after if not torch.equal(after[k], before[k])}
        assert changed and all(k.startswith(trained) for k in changed), (trained, changed)
