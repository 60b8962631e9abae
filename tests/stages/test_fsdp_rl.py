"""Sharded RL on CPU: two gloo processes under `ModelParallelStrategy` (FSDP2) follow one process.

Latent RL runs the paper-scale config (configs/llama3_1_8b/latent_rl.yaml) on a tiny saved
backbone, with its KL reference sharded like the policy; token RL shards the backbone and its
reference. Stop strings make rollouts end at different lengths on the two ranks, so the ranks must
leave the decode loop together. Each rank writes its own statistics per step.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import yaml

from cola_lightning.models.sharding import local_shard
from tests.conftest import REPO, run_cli

STEPS = 3
LATENT_PAPER = "configs/llama3_1_8b/latent_rl.yaml"
TAGS = (
    "rl/policy_loss",
    "rl/kl",
    "rl/response_tokens",
    "rl/signal_frac",
    "rl/backbone_tokens",
    "timing/rollout_s",
    "timing/update_s",
)
AGENT_TAGS = ("agent/steps/train",)


class WriteRankStats(L.Callback):
    """Every rank appends its own logged RL values, per step, to rank_stats_<rank>.jsonl."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        metrics = trainer.callback_metrics
        tags = [t for t in (*TAGS, *AGENT_TAGS) if t in metrics]
        row = {"step": trainer.global_step, **{t: float(metrics[t]) for t in tags}}
        weight = next(pl_module.model.policy.parameters())
        row["shard_fraction"] = local_shard(weight).numel() / weight.numel()
        with open(f"rank_stats_{trainer.global_rank}.jsonl", "a") as file:
            file.write(json.dumps(row) + "\n")


class WritePolicyShard(L.Callback):
    """Every rank writes its shards' dtypes and the share of its policy elements training moved."""

    def on_train_start(self, trainer, pl_module) -> None:
        self.start = [local_shard(p).detach().clone() for p in pl_module.model.policy.parameters()]

    def on_train_end(self, trainer, pl_module) -> None:
        policy = [local_shard(p).detach() for p in pl_module.model.policy.parameters()]
        moved = sum((a != b).sum().item() for a, b in zip(policy, self.start, strict=True))
        backbone = pl_module.model.backbone.parameters()
        row = {
            "policy_dtypes": sorted({str(p.dtype) for p in policy}),
            "backbone_dtypes": sorted({str(local_shard(p).dtype) for p in backbone}),
            "moved": moved / sum(p.numel() for p in policy),
        }
        with open(f"policy_shard_{trainer.global_rank}.json", "w") as file:
            json.dump(row, file)


def write_config(tmp_path, base: str, name: str, devices: int) -> str:
    config = yaml.safe_load((REPO / base).read_text())
    args = config["model"]["init_args"]
    args.update(
        init_from=None,
        backbone={"source": "tiny", "tokenizer": "bytes"},
        cola={"num_codes": 8, "idm_layers": 1, "policy_layers": 1, "merge_layers": 1},
        optimizer={"lr": 1e-2, "min_lr": 1e-2, "warmup_steps": 0},
        # micro-batches of 2 rollouts: 4 on one process, 2 on each of two ranks
        rl={"algorithm": "grpo", "group_size": 2, "kl_coef": 0.1, "micro_batch_size": 2},
        rewards=[{"name": "tests.stages.test_rl:length_reward"}],
        accuracy_reward="arithmetic",
        sharding=None,
    )
    sampler = "code" if "latent" in base else "token"
    args["generation"] = {
        "max_new_tokens": 8,
        sampler: {"greedy": False, "temperature": 1.0},
        "stop_strings": list("0123456789 abcdefghijklmnop"),  # uneven lengths per rank
    }
    config["data"] = {
        "class_path": "cola_lightning.data.tasks.TaskPromptDataModule",
        "init_args": {
            "task": "arithmetic",
            "num_problems": 5,  # 4 train prompts: every step's global batch is all of them
            "tokenizer": "bytes",
            "batch_size": 4 // devices,
            "val_size": 1,
        },
    }
    set_trainer(config, devices)
    return save_config(tmp_path, config, name)


def set_trainer(config: dict, devices: int) -> None:
    """STEPS steps on `devices` CPU processes (FSDP2 when more than one), each writing its stats."""
    trainer = config["trainer"]
    trainer.update(
        accelerator="cpu",
        devices=devices,
        num_nodes=1,
        max_steps=STEPS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        enable_progress_bar=False,
        callbacks=[{"class_path": "tests.stages.test_fsdp_rl.WriteRankStats"}],
    )
    trainer["logger"] = False
    trainer.pop("val_check_interval", None)
    if devices > 1:
        trainer["strategy"] = {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy",
            "init_args": {"data_parallel_size": devices, "tensor_parallel_size": 1},
        }
    else:
        trainer.pop("strategy", None)


def save_config(tmp_path, config: dict, name: str) -> str:
    path = tmp_path / name / "config.yaml"
    path.parent.mkdir()
    (path.parent / "tiny").symlink_to(tmp_path / "tiny")
    path.write_text(yaml.safe_dump(config))
    return str(path)


def write_agent_config(tmp_path, name: str, devices: int) -> str:
    """The test agent RL config on the saved tiny backbone; 2 episodes a step in all."""
    config = yaml.safe_load((REPO / "configs/test/agent_latent_rl.yaml").read_text())
    args = config["model"]["init_args"]
    args.update(
        backbone={"source": "tiny", "tokenizer": "bytes"},
        rl={"algorithm": "grpo", "group_size": 2, "kl_coef": 0.1},
        rewards=[{"name": "tests.stages.test_agent_rl:distinct_bytes"}],
        optimizer={"lr": 1e-2, "min_lr": 1e-2, "warmup_steps": 0},
    )
    args["generation"]["stop_strings"] = list("0123456789 abcdefghijklmnop")
    args["episodes"]["max_context_tokens"] = 235  # episodes end after 1 to 3 turns: uneven per rank
    config["data"]["init_args"]["batch_size"] = 2 // devices
    set_trainer(config, devices)
    return save_config(tmp_path, config, name)


def rank_stats(folder, rank: int) -> list[dict]:
    lines = (folder / f"rank_stats_{rank}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize("base", [LATENT_PAPER, "configs/test/token_rl.yaml"])
def test_two_ranks_follow_one_process_with_uneven_rollouts(tiny_dir, base):
    kind = "latent" if "latent" in base else "token"
    runs = {}
    for name, devices in ((f"{kind}_single", 1), (f"{kind}_sharded", 2)):
        config = write_config(tiny_dir, base, name, devices)
        result = run_cli(["fit", "--config", config], tiny_dir / name)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = [rank_stats(tiny_dir / name, r) for r in range(devices)]
    (single,), (rank0, rank1) = runs[1], runs[2]
    assert len(single) == len(rank0) == len(rank1) == STEPS
    # The ranks' rollouts had different lengths at some step, and the run still finished.
    lengths = [
        (a["rl/response_tokens"], b["rl/response_tokens"])
        for a, b in zip(rank0, rank1, strict=True)
    ]
    assert any(a != b for a, b in lengths), lengths
    # data_parallel 2 x tensor_parallel 1, as the paper configs: each rank holds half a tensor
    assert {step["shard_fraction"] for step in rank0 + rank1} == {0.5}
    for one, a, b in zip(single, rank0, rank1, strict=True):
        # float32 sums in another order (two ranks, FSDP's gradient reduction) move the KL,
        # a small difference of log-probs after full-backbone steps at lr 1e-2, by ~1e-3.
        for tag, rel in (("rl/policy_loss", 1e-4), ("rl/response_tokens", 1e-6), ("rl/kl", 5e-3)):
            assert (a[tag] + b[tag]) / 2 == pytest.approx(one[tag], rel=rel, abs=1e-6), tag
        # each rank holds half the groups: the shares average, the token counts add up
        assert (a["rl/signal_frac"] + b["rl/signal_frac"]) / 2 == pytest.approx(
            one["rl/signal_frac"]
        )
        assert a["rl/backbone_tokens"] + b["rl/backbone_tokens"] == one["rl/backbone_tokens"]
    assert any(step["rl/kl"] > 0 for step in single[1:])  # the policy moved from the reference
    if kind == "latent":  # (token rollouts of the tiny model all stop at their first byte)
        assert any(step["rl/signal_frac"] > 0 for step in single)


def test_agent_episodes_on_two_ranks_follow_one_process(tiny_dir):
    """Episodes end at different turns on the two ranks; the ranks still take turns together."""
    runs = {}
    for name, devices in (("agent_single", 1), ("agent_sharded", 2)):
        config = write_agent_config(tiny_dir, name, devices)
        result = run_cli(["fit", "--config", config], tiny_dir / name)
        assert result.returncode == 0, result.stderr[-3000:]
        runs[devices] = [rank_stats(tiny_dir / name, r) for r in range(devices)]
    (single,), (rank0, rank1) = runs[1], runs[2]
    assert len(single) == len(rank0) == len(rank1) == STEPS
    steps = "agent/steps/train"
    turns = [(a[steps], b[steps]) for a, b in zip(rank0, rank1, strict=True)]
    assert any(a != b for a, b in turns), turns
    for one, a, b in zip(single, rank0, rank1, strict=True):
        for tag, rel in (("rl/policy_loss", 1e-4), ("rl/response_tokens", 1e-6), ("rl/kl", 5e-3)):
            assert (a[tag] + b[tag]) / 2 == pytest.approx(one[tag], rel=rel, abs=1e-6), tag


def test_sharded_latent_parts_keep_float32_master_weights_under_a_bf16_backbone(tiny_dir):
    """The paper's lr 5e-7 is below bf16's resolution; sharded, the policy still trains in fp32."""
    config = yaml.safe_load(Path(write_config(tiny_dir, LATENT_PAPER, "bf16_base", 2)).read_text())
    args = config["model"]["init_args"]
    args["backbone"]["dtype"] = "bfloat16"
    args["optimizer"] = {"lr": 5e-7, "min_lr": 5e-7, "warmup_steps": 0, "weight_decay": 0.0}
    config["trainer"]["callbacks"] = [{"class_path": "tests.stages.test_fsdp_rl.WritePolicyShard"}]
    path = tiny_dir / "bf16_base" / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(["fit", "--config", str(path)], path.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in range(2):
        row = json.loads((path.parent / f"policy_shard_{rank}.json").read_text())
        assert row["policy_dtypes"] == ["torch.float32"]
        assert row["backbone_dtypes"] == ["torch.bfloat16"]
        assert row["moved"] > 0.9  # Adam moves every element with a gradient by about lr
