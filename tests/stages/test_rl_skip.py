"""`rl.skip_no_signal`: a step whose rollouts all tie moves nothing, on one process and two ranks.

Without the option such a step still steps AdamW, whose momentum from the last step with a signal
keeps moving the policy; with it the step is skipped, and sharded ranks skip or update together
(a rank alone in a collective would hang the run).
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.distributed as dist
import yaml

from cola_lightning.stages.rl import LatentRLModule
from tests.conftest import run_cli, tiny_trainer
from tests.stages.test_fsdp_rl import LATENT_PAPER, rank_stats, write_config
from tests.stages.test_rl import latent_rl, length_reward, task_data


def tie_reward(prompt: str, response: str, example: dict) -> float:
    return 1.0


def rank_zero_length_reward(prompt: str, response: str, example: dict) -> float:
    """The length reward on rank 0; a tie on every other rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    return length_reward(prompt, response, example) if rank == 0 else 1.0


class FirstStepSignalRL(LatentRLModule):
    """The length reward at the first optimiser step, then every rollout ties."""

    def rollout(self, records, config, keep_states=False):
        result, rewards, errors = super().rollout(records, config, keep_states)
        return result, rewards if self.global_step == 0 else torch.ones_like(rewards), errors


class PolicyAfterEachBatch(L.Callback):
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.policies = getattr(self, "policies", [])
        self.policies.append([p.detach().clone() for p in pl_module.model.policy.parameters()])
        self.skipped = [*getattr(self, "skipped", []), trainer.callback_metrics["rl/skipped"]]


@pytest.mark.parametrize("skip", [False, True])
def test_a_step_without_signal_moves_the_policy_only_when_not_skipped(stage_one_b_checkpoint, skip):
    module = latent_rl(
        stage_one_b_checkpoint[0], cls=FirstStepSignalRL, kl_coef=0.0, skip_no_signal=skip
    )
    start = [p.detach().clone() for p in module.model.policy.parameters()]
    seen = PolicyAfterEachBatch()
    trainer = tiny_trainer(
        max_steps=2, max_epochs=1, limit_train_batches=2, limit_val_batches=0, callbacks=[seen]
    )
    trainer.fit(module, task_data())
    first, second = seen.policies
    assert any(not torch.equal(a, b) for a, b in zip(start, first, strict=True))
    unmoved = all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
    assert unmoved == skip
    assert [float(s) for s in seen.skipped] == [0.0, float(skip)]
    assert trainer.global_step == (1 if skip else 2)  # a skipped step is no optimiser step


def sharded_run(tiny_dir, name: str, reward: str) -> list[list[dict]]:
    """Two latent-RL epochs of one batch per rank, with `rl.skip_no_signal`, on two ranks."""
    path = write_config(tiny_dir, LATENT_PAPER, name, 2)
    config = yaml.safe_load(Path(path).read_text())
    args = config["model"]["init_args"]
    args["rl"]["skip_no_signal"] = True
    args["rewards"] = [{"name": f"tests.stages.test_rl_skip:{reward}"}]
    config["trainer"].update(max_epochs=2, limit_train_batches=1)
    config["trainer"]["callbacks"].append(
        {"class_path": "tests.stages.test_fsdp_rl.WritePolicyShard"}
    )
    Path(path).write_text(yaml.safe_dump(config))
    result = run_cli(["fit", "--config", path], tiny_dir / name)
    assert result.returncode == 0, result.stderr[-3000:]
    moved = [json.loads((tiny_dir / name / f"policy_shard_{r}.json").read_text()) for r in (0, 1)]
    return [rank_stats(tiny_dir / name, r) for r in (0, 1)], [m["moved"] for m in moved]


def test_sharded_ranks_update_when_any_rank_has_a_signal(tiny_dir):
    (rank0, rank1), moved = sharded_run(tiny_dir, "skip_one_rank", "rank_zero_length_reward")
    assert [s["rl/signal_frac"] for s in rank1] == [0.0, 0.0]
    assert any(s["rl/signal_frac"] > 0 for s in rank0)
    assert [s["step"] for s in rank0] == [s["step"] for s in rank1]
    assert rank1[-1]["step"] > 0 and all(m > 0 for m in moved)  # rank 1 updated with rank 0


def test_sharded_ranks_all_skip_when_no_rank_has_a_signal(tiny_dir):
    (rank0, rank1), moved = sharded_run(tiny_dir, "skip_all", "tie_reward")
    assert [s["step"] for s in rank0 + rank1] == [0, 0, 0, 0]
    assert moved == [0.0, 0.0]
