"""Stage hand-off: stage-1 checkpoint into stage 1b; loud failures on mismatched checkpoints."""

import pytest
import torch

from cola_lightning.checkpoints.format import load_stage_checkpoint
from cola_lightning.stages.behavior_cloning import BehaviorCloningModule
from cola_lightning.stages.latent_actions import LatentActionModule
from tests.conftest import TINY_COLA, tiny_data, tiny_model, tiny_spec, tiny_trainer


def test_stage_one_checkpoint_into_behavior_cloning(stage_one_checkpoint):
    path, stage_one_state = stage_one_checkpoint
    module = BehaviorCloningModule(tiny_spec(), init_from=str(path), cola=TINY_COLA)
    module.configure_model()
    latent = ("inverse_dynamics.", "codebook.", "world_model.")
    # The random-init backbone is stored too: it cannot be rebuilt from a source.
    for key, value in module.model.state_dict().items():
        if key.startswith((*latent, "backbone.")):
            assert torch.equal(value, stage_one_state[key]), key
    for name, parameter in module.model.named_parameters():
        assert parameter.requires_grad == name.startswith("policy."), name

    tiny_trainer(max_steps=3).fit(module, tiny_data())
    after = module.model.state_dict()
    for key in after:
        if key.startswith(latent):
            assert torch.equal(after[key], stage_one_state[key]), key
    assert any(not torch.equal(after[k], stage_one_state[k]) for k in after if "policy." in k)


def test_behavior_cloning_requires_init_from():
    with pytest.raises(ValueError, match="needs `init_from`"):
        BehaviorCloningModule(tiny_spec(), cola=TINY_COLA)


def test_checkpoint_with_missing_tensor_fails_loudly(stage_one_checkpoint, tmp_path):
    path, _ = stage_one_checkpoint
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["state_dict"]["model.world_model.layers.0.up_proj.weight"]
    checkpoint["state_dict"]["model.world_model.extra.weight"] = torch.zeros(1)
    broken = tmp_path / "broken.ckpt"
    torch.save(checkpoint, broken)
    with pytest.raises(KeyError, match=r"1 missing tensors \[world_model.layers.0.up_proj"):
        load_stage_checkpoint(tiny_model(), broken)


def test_checkpoint_with_other_sizes_fails_loudly(stage_one_checkpoint):
    path, _ = stage_one_checkpoint
    from cola_lightning.models.cola import CoLAConfig

    with pytest.raises(RuntimeError, match="size mismatch"):
        load_stage_checkpoint(tiny_model(cola=CoLAConfig(16, 1, 1, 1)), path)


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="Checkpoint not found"):
        load_stage_checkpoint(tiny_model(), tmp_path / "nope.ckpt")


def test_resume_refuses_checkpoint_missing_tensors(stage_one_checkpoint, tmp_path):
    path, _ = stage_one_checkpoint
    checkpoint = torch.load(path, weights_only=False)
    del checkpoint["state_dict"]["model.codebook.weight"]
    module = LatentActionModule(tiny_spec(), cola=TINY_COLA)
    with pytest.raises(KeyError, match="codebook.weight"):
        module.on_load_checkpoint(checkpoint)
