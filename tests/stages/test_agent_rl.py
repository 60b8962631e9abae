"""Agent stages: RL on episodes through the CLI and in process, and the gold-trajectory data."""

import torch

from cola_lightning.data.agents import AgentTaskDataModule, AgentTrajectoryDataModule
from cola_lightning.data.corpus import TextCorpusDataModule
from cola_lightning.data.trajectories import AgentCorpus, AgentTasks
from cola_lightning.rewards.registry import RewardSpec
from cola_lightning.rollout.engine import GenerationConfig
from cola_lightning.rollout.episodes import EpisodeConfig, EpisodeFormat
from cola_lightning.rollout.sampling import Sampler
from cola_lightning.stages.action_guided import ActionGuidedFinetuneModule
from cola_lightning.stages.agent_rl import TokenAgentRLModule
from cola_lightning.stages.optim import OptimizerConfig
from tests.conftest import REPO, TINY_COLA, run_cli, tiny_spec, tiny_trainer
from tests.test_cli import read_events

AGENT_TAGS = {
    f"agent/{name}/{split}"
    for name in ("success", "score", "steps", "invalid_actions", "truncated_actions")
    for split in ("train", "seen", "unseen")
}
TASKS = AgentTasks(tasks=["place", "cool_place"], val_per_task=1, max_train_per_task=4)
FORMAT = EpisodeFormat(instruction="")


def distinct_bytes(prompt: str, response: str, example: dict) -> float:
    """A reward a random model's actions vary in (the score alone is 0 for all of them)."""
    return len(set(response)) / 8.0


def changed_keys(before: dict, after: dict) -> set[str]:
    return {k for k, v in before.items() if not torch.equal(v, after[k])}


def test_latent_agent_rl_through_the_cli_trains_only_the_policy(tmp_path, stage_one_b_checkpoint):
    path, start = stage_one_b_checkpoint
    reward = "[{name: tests.stages.test_agent_rl:distinct_bytes, weight: 1.0}]"
    args = ["--model.init_args.init_from", str(path), "--model.init_args.rewards", reward]
    config = str(REPO / "configs/test/agent_latent_rl.yaml")
    result = run_cli(["fit", "--config", config, *args], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    saved = torch.load(tmp_path / "checkpoints/test/agent_latent_rl/last.ckpt", weights_only=False)
    state = saved["state_dict"]
    after = {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.")}
    changed = changed_keys(start, after)
    assert changed and all(k.startswith("policy.") for k in changed)
    reference = {k.removeprefix("reference."): v for k, v in state.items() if "reference." in k}
    policy = {k.removeprefix("policy."): v for k, v in start.items() if k.startswith("policy.")}
    assert reference.keys() == policy.keys() and not changed_keys(policy, reference)
    events = read_events(tmp_path / "runs/test/agent_latent_rl/version_0")
    tags = set(events.Tags()["scalars"])
    assert tags >= AGENT_TAGS | {"rl/reward_mean", "rl/kl"}, AGENT_TAGS - tags
    assert [e.value for e in events.Scalars("agent/steps/unseen")] == [3.0]


def test_token_agent_rl_trains_only_the_backbone():
    module = TokenAgentRLModule(
        tiny_spec(),
        cola=TINY_COLA,
        optimizer=OptimizerConfig(lr=1e-3, min_lr=1e-3, warmup_steps=0),
        episodes=EpisodeConfig(max_turns=2, format=FORMAT),
        rewards=[RewardSpec("tests.stages.test_agent_rl:distinct_bytes")],
        generation=GenerationConfig(max_new_tokens=4, token=Sampler(temperature=1.0)),
    )
    module.configure_model()
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    trainer = tiny_trainer(max_steps=1, log_every_n_steps=1, val_check_interval=1)
    trainer.fit(module, AgentTaskDataModule(TASKS, batch_size=1, val_batch_size=1))
    changed = changed_keys(before, module.model.state_dict())
    assert changed and all(k.startswith("backbone.") for k in changed)
    metrics = trainer.callback_metrics
    assert metrics["rl/kl"].item() == 0.0
    assert metrics["agent/steps/seen"] == metrics["agent/steps/unseen"] == 2.0


def test_stage_two_fits_on_gold_trajectories(stage_one_b_checkpoint):
    data = AgentTrajectoryDataModule(TASKS, FORMAT, max_length=512, batch_size=2, tokenizer="bytes")
    data.setup()
    assert len(data.splits["train"]) == 8 and len(data.splits["val"]) == 2
    for row in data.splits["train"]:
        assert 0 < sum(row["loss_mask"]) < len(row["input_ids"])
    module = ActionGuidedFinetuneModule(
        tiny_spec(), init_from=str(stage_one_b_checkpoint[0]), cola=TINY_COLA
    )
    trainer = tiny_trainer(max_steps=2, limit_val_batches=1, val_check_interval=2)
    trainer.fit(module, data)
    assert torch.isfinite(trainer.callback_metrics["val/wm_nll"])


def test_agent_corpus_documents_are_gold_episodes():
    corpus = AgentCorpus(TASKS, FORMAT)
    documents = corpus.documents()
    assert len(documents) == 8
    assert all(d.startswith("Your task is to: put a ") and d.endswith("\n") for d in documents)
    data = TextCorpusDataModule(agent=corpus, seq_len=64, val_fraction=0.25, tokenizer="bytes")
    data.setup()
    assert data.train_set.tokens.shape[1] == 64 and len(data.val_set) > 0
