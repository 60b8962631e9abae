"""Stage 3: what RL trains, the objectives' algebra, a toy task it must learn, reward failures."""

import dataclasses

import pytest
import torch

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.rewards.registry import RewardSpec
from cola_lightning.rollout import rl_maths as objectives
from cola_lightning.rollout.engine import GenerationConfig, Generator
from cola_lightning.rollout.rl_maths import action_batch
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.optim import OptimizerConfig
from cola_lightning.stages.rl import LatentRLModule, RLConfig
from cola_lightning.stages.token_rl import TokenRLModule
from tests.conftest import TINY_COLA, tiny_spec, tiny_trainer


def length_reward(prompt: str, response: str, example: dict) -> float:
    return len(set(response)) / 8.0


def raising_reward(prompt: str, response: str, example: dict) -> float:
    if len(set(response)) % 2:
        raise ValueError("odd responses are not graded")
    return 1.0


def task_data(batch_size: int = 2) -> TaskPromptDataModule:
    return TaskPromptDataModule(
        task="arithmetic", num_problems=24, tokenizer="bytes", batch_size=batch_size, val_size=4
    )


def latent_rl(
    init_from, reward="tests.stages.test_rl:length_reward", spec=None, lr=1e-2, cls=None, **rl
) -> LatentRLModule:
    module = (cls or LatentRLModule)(
        spec or tiny_spec(),
        init_from=str(init_from),
        cola=TINY_COLA,
        optimizer=OptimizerConfig(lr=lr, min_lr=lr, warmup_steps=0),
        rl=RLConfig(**rl),
        rewards=[RewardSpec(reward)],
        accuracy_reward="arithmetic",
        generation=GenerationConfig(max_new_tokens=6),
    )
    module.configure_model()
    return module


def test_group_advantages_are_zero_mean_per_group():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    advantages = objectives.group_advantages(rewards, 4)
    assert torch.allclose(advantages.view(2, 4).mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.equal(advantages[4:], torch.zeros(4))  # identical rewards: no signal
    assert advantages[0] > 0 > advantages[1]


def test_first_pass_of_ppo_clip_is_the_policy_gradient():
    logits = torch.randn(3, 5, 4, requires_grad=True)
    actions = torch.randint(0, 4, (3, 5))
    mask = torch.rand(3, 5) > 0.3
    advantages = torch.tensor([1.0, -0.5, 2.0])
    logprobs = torch.log_softmax(logits, -1).gather(-1, actions[..., None])[..., 0]
    loss, clip_frac = objectives.clipped_policy_loss(logprobs, logprobs.detach(), advantages, mask)
    (grad_ppo,) = torch.autograd.grad(loss, logits, retain_graph=True)
    pg = -objectives.sequence_mean(advantages[:, None] * logprobs, mask)
    (grad_pg,) = torch.autograd.grad(pg, logits)
    torch.testing.assert_close(grad_ppo, grad_pg)
    assert clip_frac == 0
    zero = objectives.kl_to_reference(logprobs, logprobs.detach(), mask)
    assert zero.item() == 0.0


def test_identical_rewards_give_zero_policy_gradient(stage_one_b_checkpoint):
    module = latent_rl(stage_one_b_checkpoint[0], kl_coef=0.0)
    data = task_data()
    data.setup()
    records = [r for r in data.splits["train"][:2] for _ in range(4)]
    rollout, _, _ = module.rollout(records, module.generation)
    batch = action_batch(rollout, True, 256, "cpu")
    advantages = objectives.group_advantages(torch.ones(8), 4)
    stats = module.policy_step(batch, advantages)
    stats["loss"].backward()
    grads = [p.grad for p in module.model.policy.parameters()]
    assert all(g is None or torch.count_nonzero(g) == 0 for g in grads)


def test_update_on_kept_states_equals_update_on_recomputed_states(stage_one_b_checkpoint):
    """The rollout's backbone states serve the update: same loss, KL and policy gradients."""
    module = latent_rl(stage_one_b_checkpoint[0], kl_coef=0.1)
    module.set_training_modes()
    data = task_data()
    data.setup()
    records = [r for r in data.splits["train"][:2] for _ in range(4)]
    rollout, _, _ = module.rollout(records, module.generation, keep_states=True)
    kept = action_batch(rollout, True, 256, "cpu")
    recomputed = module.with_states(dataclasses.replace(kept, states=None))
    advantages = torch.linspace(-1.0, 1.0, 8)
    results = []
    for batch in (kept, recomputed):
        module.model.policy.zero_grad()
        stats = module.policy_step(batch, advantages)
        stats["loss"].backward()
        grads = [p.grad.clone() for p in module.model.policy.parameters() if p.grad is not None]
        results.append((stats["loss"].detach(), stats["rl/kl"], grads))
    (loss_a, kl_a, grads_a), (loss_b, kl_b, grads_b) = results
    torch.testing.assert_close(loss_a, loss_b, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(kl_a, kl_b, atol=1e-7, rtol=1e-4)
    assert len(grads_a) == len(grads_b) > 0 and any(g.abs().sum() > 0 for g in grads_a)
    for a, b in zip(grads_a, grads_b, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="backbone_states"):
        RLConfig(backbone_states="cache")


@pytest.mark.parametrize("algorithm", ["grpo", "remax", "ppo"])
def test_only_the_policy_learns_and_the_reference_stays(stage_one_b_checkpoint, algorithm):
    rl = {"algorithm": algorithm, "epochs": 2 if algorithm == "ppo" else 1}
    module = latent_rl(stage_one_b_checkpoint[0], **rl)
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    reference = {k: v.clone() for k, v in module.reference.state_dict().items()}
    trainer = tiny_trainer(
        max_steps=2, log_every_n_steps=1, limit_val_batches=1, val_check_interval=1
    )
    trainer.fit(module, task_data())
    after = module.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("policy.") for k in changed)
    for key, value in module.reference.state_dict().items():
        assert torch.equal(value, reference[key])
    metrics = trainer.callback_metrics
    for tag in (
        "rl/reward_mean",
        "rl/reward_std",
        "rl/kl",
        "rl/policy_entropy",
        "rl/clip_frac",
        "rl/signal_frac",
        "timing/rollout_s",
        "timing/update_s",
        "val/accuracy",
        "perf/tokens_per_s",
    ):
        assert tag in metrics, tag


def test_kl_is_zero_at_the_first_step(stage_one_b_checkpoint):
    module = latent_rl(stage_one_b_checkpoint[0])
    trainer = tiny_trainer(max_steps=1, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(module, task_data())
    assert trainer.callback_metrics["rl/kl"].item() == 0.0


def target_probability(module, prompt_ids, codes) -> float:
    ids = torch.tensor([prompt_ids])
    with torch.no_grad():
        engine = Generator(module.model, module.tokenizer, module.greedy_config())
        rollout = engine.generate([prompt_ids], codes=[codes])
        full = torch.tensor([prompt_ids + rollout.token_ids[0]])
        hidden, _ = module.model.hidden_states(full)
        logits, _ = module.model.policy(hidden)
    steps = logits[0, ids.shape[1] - 1 : ids.shape[1] - 1 + len(codes)]
    return (
        torch.log_softmax(steps, -1)[torch.arange(len(codes)), torch.tensor(codes)]
        .sum()
        .exp()
        .item()
    )


class TargetCodesRL(LatentRLModule):
    """Rewards the code sequence `target` with 1 and every other with 0."""

    target: list[int] = []

    def rollout(self, records, config, keep_states=False):
        result, _, errors = super().rollout(records, config, keep_states)
        rewards = torch.tensor([float(codes == self.target) for codes in result.codes])
        return result, rewards, errors


def test_grpo_learns_the_one_rewarded_code_sequence(stage_one_b_checkpoint):
    """Two steps, K = 8: one of the 64 code sequences, with a start probability near 5%,
    earns reward 1; GRPO must make it the likely one."""
    module = TargetCodesRL(
        tiny_spec(),
        init_from=str(stage_one_b_checkpoint[0]),
        cola=TINY_COLA,
        optimizer=OptimizerConfig(lr=1e-2, min_lr=1e-2, warmup_steps=0),
        rl=RLConfig(group_size=8, kl_coef=0.0),
        rewards=[RewardSpec("tests.stages.test_rl:length_reward")],
        generation=GenerationConfig(max_new_tokens=2, token=Sampler(greedy=True)),
    )
    module.configure_model()
    data = TaskPromptDataModule(
        task="arithmetic", num_problems=8, tokenizer="bytes", batch_size=1, val_size=1
    )
    data.setup()
    data.splits["train"] = [data.splits["train"][0]] * 64  # one prompt, many steps
    prompt_ids = module.tokenizer(data.splits["train"][0]["prompt"]).input_ids
    sequences = [[a, b] for a in range(8) for b in range(8)]
    start, module.target = min(
        ((target_probability(module, prompt_ids, s), s) for s in sequences),
        key=lambda pair: abs(pair[0] - 0.05),
    )
    tiny_trainer(max_steps=40, limit_val_batches=0).fit(module, data)
    end = target_probability(module, prompt_ids, module.target)
    assert end > max(5 * start, 0.5), (start, end)


def test_a_raising_reward_is_counted_and_training_goes_on(stage_one_b_checkpoint):
    module = latent_rl(stage_one_b_checkpoint[0], reward="tests.stages.test_rl:raising_reward")
    trainer = tiny_trainer(max_steps=2, log_every_n_steps=1, limit_val_batches=0)
    trainer.fit(module, task_data())
    assert trainer.global_step == 2
    assert trainer.callback_metrics["rl/reward_errors"].item() > 0


def test_a_raising_reward_fails_fast_when_asked(stage_one_b_checkpoint):
    module = latent_rl(stage_one_b_checkpoint[0], reward="tests.stages.test_rl:raising_reward")
    module.reward.fail_fast = True
    with pytest.raises(RuntimeError, match="raising_reward"):
        tiny_trainer(max_steps=2, limit_val_batches=0).fit(module, task_data())


def token_rl(init_from, **rl) -> TokenRLModule:
    module = TokenRLModule(
        tiny_spec(),
        init_from=str(init_from),
        cola=TINY_COLA,
        optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0),
        rl=RLConfig(**rl),
        rewards=[RewardSpec("tests.stages.test_rl:length_reward")],
        accuracy_reward="arithmetic",
        generation=GenerationConfig(max_new_tokens=6, token=Sampler(temperature=1.0)),
    )
    module.configure_model()
    return module


def test_token_update_reads_the_head_at_the_responses_only(stage_one_b_checkpoint):
    """Log-probs from the response columns equal the rollout's, and are zero elsewhere."""
    module = token_rl(stage_one_b_checkpoint[0])
    module.set_training_modes()
    data = task_data()
    data.setup()
    records = data.splits["train"][:3]
    rollout, _, _ = module.rollout(records, module.generation)
    batch = action_batch(rollout, False, 256, "cpu")
    with torch.no_grad():
        logprobs, entropy, _ = module.action_logprobs(batch, with_reference=False)
    columns = batch.action_columns()
    assert columns.stop == batch.input_ids.shape[1] - 1
    assert columns.stop - columns.start == max(len(t) for t in rollout.token_ids)
    torch.testing.assert_close(logprobs[batch.action_mask], batch.old_logprobs[batch.action_mask])
    assert torch.count_nonzero(logprobs[:, : columns.start]) == 0
    assert torch.all(entropy[:, columns.start :][batch.action_mask[:, columns.start :]] > 0)


def test_token_rl_trains_only_the_backbone(stage_one_b_checkpoint):
    module = token_rl(stage_one_b_checkpoint[0])
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = tiny_trainer(max_steps=1, log_every_n_steps=1, limit_val_batches=1)
    trainer.fit(module, task_data())
    after = module.model.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert changed and all(k.startswith("backbone.") for k in changed)
    assert trainer.callback_metrics["rl/kl"].item() == 0.0


def test_ppo_gae_advantages_match_a_hand_computed_example():
    # Row 0: two actions, KL estimates 0.5 and -1, sequence reward 20 (clipped to 10).
    # Row 1: one action, no KL, reward -1.
    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 1, 0]], dtype=torch.bool)
    logprobs = torch.tensor([[0.0, -1.0, -2.0, 0.0], [0.0, 0.0, -0.3, 0.0]])
    reference = torch.tensor([[0.0, -1.5, -1.0, 0.0], [0.0, 0.0, -0.3, 0.0]])
    rewards = torch.tensor([20.0, -1.0])
    advantages = objectives.ppo_gae_advantages(rewards, logprobs, reference, mask, 0.1, 0.95)
    a12 = -0.1 * 1.0 * -1 + 10.0  # 10.1: -beta * KL_t plus the clipped reward
    a11 = -0.1 * 0.5 + 0.95 * a12  # 9.545: gamma 1, lambda 0.95, V = 0
    a22 = -1.0
    raw = torch.tensor([a11, a12, a22])
    whitened = (raw - raw.mean()) / raw.var(unbiased=False).add(1e-8).sqrt()
    expected = torch.tensor([[0.0, whitened[0], whitened[1], 0.0], [0.0, 0.0, whitened[2], 0.0]])
    torch.testing.assert_close(advantages, expected)


def test_clip_frac_counts_only_actions_on_the_clipped_branch():
    # ratios 1.5, 0.5, 0.5, 1.5 with advantages +, +, -, -: only the 1st and 3rd take the
    # clipped term (which has zero gradient); the 2nd and 4th are outside the range but
    # the unclipped term is the smaller one there.
    old = torch.zeros(1, 4)
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 0.5, 1.5]]))
    advantages = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4, dtype=torch.bool)
    _, clip_frac = objectives.clipped_policy_loss(logprobs, old, advantages, mask, 0.2)
    assert clip_frac.item() == 0.5


def test_first_pass_ratio_is_one_with_lora_dropout(stage_one_b_checkpoint):
    """Rollouts in eval mode, frozen parts in eval mode for the update: ratio 1 on fresh data."""
    from cola_lightning.models.adapters import LoraSpec

    module = LatentRLModule(
        dataclasses.replace(tiny_spec(), lora=LoraSpec(rank=4, alpha=8, dropout=0.05)),
        init_from=str(stage_one_b_checkpoint[0]),
        cola=TINY_COLA,
        rl=RLConfig(kl_coef=0.0),
        rewards=[RewardSpec("tests.stages.test_rl:length_reward")],
        accuracy_reward="arithmetic",
        generation=GenerationConfig(max_new_tokens=8),
    )
    module.configure_model()
    for name, parameter in module.model.named_parameters():
        if "lora_B" in name:  # as after a LoRA stage 2: adapters that change the features
            torch.nn.init.normal_(parameter, std=0.5)
    module.model.train()  # as Lightning leaves it
    data = task_data()
    data.setup()
    rollout, _, _ = module.rollout(data.splits["train"][:4], module.generation)
    batch = action_batch(rollout, True, 256, "cpu")
    module.model.train()
    module.set_training_modes()
    logprobs, _, _ = module.action_logprobs(batch, with_reference=False)
    delta = (logprobs - batch.old_logprobs)[batch.action_mask]
    assert delta.abs().max().item() < 1e-5
    assert module.model.policy.training and not module.model.backbone.training


def test_latent_parts_keep_float32_master_weights_under_a_bf16_backbone(stage_one_b_checkpoint):
    """RL's lr 5e-7 is below bf16's resolution: in bf16 weights most steps would round away."""
    spec = dataclasses.replace(tiny_spec(), dtype="bfloat16")
    module = latent_rl(stage_one_b_checkpoint[0], spec=spec, lr=5e-7, group_size=4)
    assert all(p.dtype == torch.bfloat16 for p in module.model.backbone.parameters())
    assert all(p.dtype == torch.float32 for p in module.model.policy.parameters())
    before = [p.detach().clone() for p in module.model.policy.parameters()]
    tiny_trainer(max_steps=3, limit_val_batches=0).fit(module, task_data(batch_size=4))
    after = list(module.model.policy.parameters())
    changed = sum((a != b).sum().item() for a, b in zip(after, before, strict=True))
    # every element with a gradient moves by about lr per Adam step (norm weights included)
    assert changed / sum(b.numel() for b in before) > 0.9


def test_logged_backbone_tokens_are_the_real_tokens_every_backbone_ran(stage_one_b_checkpoint):
    """`rl/backbone_tokens`, the compute the methods are compared by, counted by hooks instead."""
    for module in (latent_rl(stage_one_b_checkpoint[0]), token_rl(stage_one_b_checkpoint[0])):
        ran = []

        def count(_, args, kwargs, ran=ran):
            new = kwargs["input_ids"].shape[1]  # the mask's last columns are the new tokens
            ran.append(int(kwargs["attention_mask"][:, -new:].sum()))

        backbones = [module.model.backbone]
        if isinstance(module, TokenRLModule):
            backbones.append(module.reference)  # the KL reference is a second backbone
        for backbone in backbones:
            backbone.decoder.register_forward_pre_hook(count, with_kwargs=True)
        trainer = tiny_trainer(max_steps=1, log_every_n_steps=1, limit_val_batches=0)
        trainer.fit(module, task_data())
        assert trainer.callback_metrics["rl/backbone_tokens"] == sum(ran) > 0


def test_micro_batches_give_the_same_update_in_less_memory(stage_one_b_checkpoint):
    """Gradient accumulation over micro-batches of 3 rows equals one pass over all 8."""
    trained, rows = [], []
    for micro in (None, 3):
        module = token_rl(stage_one_b_checkpoint[0], micro_batch_size=micro)
        step = module.policy_step
        module.policy_step = lambda batch, adv, step=step: rows.append(len(adv)) or step(batch, adv)
        trainer = tiny_trainer(max_steps=2, log_every_n_steps=1, limit_val_batches=0)
        trainer.fit(module, task_data())
        trained.append(({k: v.clone() for k, v in module.model.state_dict().items()}, trainer))
    assert rows == [8, 8, 3, 3, 2, 3, 3, 2]  # two steps whole, then two steps in micro-batches
    (full, full_run), (micro, micro_run) = trained
    for key in full:
        torch.testing.assert_close(micro[key], full[key], atol=1e-5, rtol=1e-4)
    for tag in ("rl/kl", "rl/policy_entropy", "rl/policy_loss"):
        torch.testing.assert_close(
            micro_run.callback_metrics[tag], full_run.callback_metrics[tag], atol=1e-5, rtol=1e-4
        )
    with pytest.raises(ValueError, match="micro_batch_size"):
        RLConfig(micro_batch_size=0)


def test_greedy_rollout_actions_are_refused_with_the_setting_to_change():
    """A YAML `token: {temperature: 1.0}` keeps the default greedy token sampler: token RL
    would then roll out one episode per prompt G times, and every group would tie."""
    greedy_tokens = GenerationConfig(token=Sampler(greedy=True, temperature=1.0))
    with pytest.raises(ValueError, match=r"greedily \(generation.token.greedy is true\)"):
        TokenRLModule(tiny_spec(), cola=TINY_COLA, generation=greedy_tokens)
    with pytest.raises(ValueError, match=r"generation.code.greedy is true"):
        LatentRLModule(
            tiny_spec(), cola=TINY_COLA, generation=GenerationConfig(code=Sampler(greedy=True))
        )
    TokenRLModule(tiny_spec(), cola=TINY_COLA, generation=GenerationConfig(token=Sampler()))
