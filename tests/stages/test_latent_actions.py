"""Stage 1: straight-through gradients, frozen backbone, logging, the optimiser."""

import pytest
import torch

from cola_lightning.stages.latent_actions import LatentActionModule, straight_through_one_hot
from cola_lightning.stages.optim import OptimizerConfig, build_optimizer, warmup_cosine
from tests.conftest import TINY_COLA, tiny_data, tiny_spec, tiny_trainer


def stage_one(**kwargs) -> LatentActionModule:
    module = LatentActionModule(tiny_spec(), cola=TINY_COLA, **kwargs)
    module.configure_model()
    return module


def test_straight_through_is_one_hot_forward_soft_backward():
    soft = torch.tensor([[0.2, 0.5, 0.3]], requires_grad=True)
    hard = straight_through_one_hot(soft)
    assert torch.equal(hard.detach(), torch.tensor([[0.0, 1.0, 0.0]]))
    (hard * torch.tensor([[1.0, 2.0, 3.0]])).sum().backward()
    assert torch.equal(soft.grad, torch.tensor([[1.0, 2.0, 3.0]]))


def test_training_step_gradients_reach_idm_not_backbone():
    module = stage_one()
    data = tiny_data()
    data.setup()
    batch = next(iter(data.train_dataloader()))
    module.training_step(batch, 0).backward()
    model = module.model
    for part in (model.inverse_dynamics, model.codebook, model.world_model):
        grads = [p.grad for p in part.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is None for p in model.policy.parameters())


def test_fit_keeps_backbone_and_policy_bit_identical():
    module = stage_one(optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=1))
    frozen = {k: v.clone() for k, v in module.model.state_dict().items()}
    tiny_trainer(max_steps=4).fit(module, tiny_data())
    after = module.model.state_dict()
    for key, value in frozen.items():
        if key.startswith(("backbone.", "policy.")):
            assert torch.equal(after[key], value), key
    changed = [k for k in frozen if k.startswith("inverse_dynamics.")]
    assert any(not torch.equal(after[k], frozen[k]) for k in changed)


def test_stage_one_learns_on_a_tiny_corpus():
    module = stage_one(optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-3, warmup_steps=2))
    data = tiny_data(num_problems=80)
    trainer = tiny_trainer(max_steps=30, limit_val_batches=2)
    trainer.validate(module, data, verbose=False)
    start = trainer.callback_metrics["val/wm_nll"].item()
    trainer.fit(module, data)
    trainer.validate(module, data, verbose=False)
    end = trainer.callback_metrics["val/wm_nll"].item()
    assert end < start - 0.5
    # the codes carry information about the next token: the world model beats the backbone
    assert end < trainer.callback_metrics["val/base_nll"].item() - 0.5


def test_optimizer_exempts_codebook_from_weight_decay():
    module = stage_one()
    optimizer = build_optimizer(module.model, OptimizerConfig(weight_decay=0.1))
    decayed, exempt = optimizer.param_groups
    assert decayed["weight_decay"] == 0.1 and exempt["weight_decay"] == 0.0
    assert [p is module.model.codebook.weight for p in exempt["params"]] == [True]
    trainable = {id(p) for p in module.model.parameters() if p.requires_grad}
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == trainable


def test_warmup_cosine_schedule():
    config = OptimizerConfig(lr=1e-4, min_lr=4e-5, warmup_steps=100)
    assert warmup_cosine(0, 1000, config) == pytest.approx(0.01)
    assert warmup_cosine(99, 1000, config) == pytest.approx(1.0)
    assert warmup_cosine(100, 1000, config) == pytest.approx(1.0)
    assert warmup_cosine(550, 1000, config) == pytest.approx(0.7)
    assert warmup_cosine(1000, 1000, config) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="min_lr"):
        OptimizerConfig(lr=1e-4, min_lr=1e-3)


def test_fused_adamw_takes_the_default_step():
    torch.manual_seed(0)
    models = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0].weight.detach().clone()
    for model, fused in zip(models, (False, True), strict=True):
        optimizer = build_optimizer(model, OptimizerConfig(lr=1e-2, fused=fused))
        assert bool(optimizer.defaults["fused"]) == fused
        for _ in range(3):
            optimizer.zero_grad()
            model(torch.ones(2, 8)).square().sum().backward()
            optimizer.step()
    torch.testing.assert_close(models[1].weight, models[0].weight)
    assert not torch.allclose(models[0].weight, start)  # the steps moved the weights
