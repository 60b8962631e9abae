"""The paper-scale configs (configs/llama3_1_8b, configs/smollm2) parse and build, offline.

Each config goes through the project's LightningCLI in process, with the trainer left out (it
asks for 8 GPUs on 4 nodes); the backbone is swapped for an inline config of the same model and
the byte tokenizer, so nothing is downloaded, and the stage builds its CoLA model on the meta
device, so nothing is allocated. The parameter count must equal the one derived here from the
config's sizes, and, for Llama-3.1-8B, the paper's "about 11.2B".
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pytest
import torch
from lightning.pytorch.strategies import ModelParallelStrategy

from cola_lightning.cli import CoLACLI
from cola_lightning.models.cola import LATENT_PARTS
from tests.conftest import REPO

# The CLI is given `args` while pytest's own arguments are in sys.argv: expected here.
pytestmark = pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")

# Llama-3.1-8B's config.json, as far as the parameter count goes.
LLAMA_3_1_8B = {
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 131072,
    "rope_theta": 500000.0,
    "tie_word_embeddings": False,
}
SMOLLM2_135M = {
    "model_type": "llama",
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "tie_word_embeddings": True,
}
BACKBONES = {"llama3_1_8b": LLAMA_3_1_8B, "smollm2": SMOLLM2_135M}
# The totals the analytic count gives (asserted below to equal it), to read off at a glance.
TOTALS = {"llama3_1_8b": 11_235_602_432, "smollm2": 185_955_264}
PAPER_TOTAL = 11.2e9  # DESIGN.md section 1: "about 11.2B parameters in total"
STAGES = ("latent_actions", "behavior_cloning", "action_guided", "latent_rl")
CONFIGS = sorted(
    str(path.relative_to(REPO))
    for family in BACKBONES
    for path in (REPO / "configs" / family).glob("*.yaml")
)


class ParseOnlyCLI(CoLACLI):
    """The project's CLI up to the model and data module: no Trainer (no GPUs needed)."""

    def instantiate_trainer(self, **kwargs):
        return None


def family(config: str) -> str:
    return Path(config).parent.name


@cache
def parse(config: str) -> ParseOnlyCLI:
    """`config` through the CLI, with the backbone replaced by its inline config and bytes."""
    backbone = {"source": None, "config": BACKBONES[family(config)], "tokenizer": "bytes"}
    return ParseOnlyCLI(
        args=["--config", str(REPO / config), f"--model.init_args.backbone={json.dumps(backbone)}"],
        run=False,
    )


def expected_parameters(lm: dict, cola) -> dict[str, int]:
    """Parameters of each part of a CoLA model on a Llama-family backbone, from the sizes alone."""
    d, ffn, vocab = lm["hidden_size"], lm["intermediate_size"], lm["vocab_size"]
    kv_width = lm["num_key_value_heads"] * d // lm["num_attention_heads"]
    # q and o: d x d; k and v: d x kv_width; gate, up, down: d x ffn; two RMSNorms.
    block = 2 * d * d + 2 * d * kv_width + 3 * d * ffn + 2 * d
    embeddings = vocab * d * (1 if lm["tie_word_embeddings"] else 2)  # + untied lm_head
    merge_ffn = cola.merge_ffn_size or ffn
    return {
        "backbone": embeddings + lm["num_hidden_layers"] * block + d,  # + final norm
        # N blocks, a final norm and Linear(d -> K), no embedding of their own.
        "inverse_dynamics": cola.idm_layers * block + d + d * cola.num_codes,
        "codebook": cola.num_codes * d,  # Linear(K -> d, no bias)
        # per merge layer: gate and up 2d -> F, down F -> d, no bias.
        "world_model": cola.merge_layers * (2 * 2 * d * merge_ffn + merge_ffn * d),
        "policy": cola.policy_layers * block + d + d * cola.num_codes,
    }


def count(module: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in module.parameters())


def test_every_stage_has_a_config():
    for name in BACKBONES:
        assert {Path(c).stem for c in CONFIGS if family(c) == name} == set(STAGES)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_with_the_expected_parameter_count(config):
    cli = parse(config)
    stage = cli.model
    assert type(stage).__name__ == cli.config.model.class_path.rsplit(".", 1)[-1]
    assert cli.datamodule is not None
    stage.init_from = None  # the previous stage's checkpoint does not exist here
    with torch.device("meta"):
        stage.configure_model()
    model = stage.model
    assert all(parameter.is_meta for parameter in model.parameters())
    expected = expected_parameters(BACKBONES[family(config)], stage.cola_config)
    found = {part: count(getattr(model, part)) for part in ("backbone", *LATENT_PARTS)}
    assert found == expected
    total = count(model)
    assert total == sum(expected.values()) == TOTALS[family(config)]
    if family(config) == "llama3_1_8b":
        assert abs(total - PAPER_TOTAL) / PAPER_TOTAL < 0.02
        assert found["backbone"] == 8_030_261_248  # Llama-3.1-8B's own count


@pytest.mark.parametrize("config", [c for c in CONFIGS if family(c) == "llama3_1_8b"])
def test_llama_configs_shard_over_every_gpu(config):
    cli = parse(config)
    trainer = cli.config.trainer
    assert (trainer.accelerator, trainer.devices, trainer.num_nodes) == ("gpu", 8, 4)
    assert isinstance(cli.config_init.trainer.strategy, ModelParallelStrategy)
    strategy = trainer.strategy.init_args
    assert strategy.data_parallel_size == trainer.devices * trainer.num_nodes
    assert strategy.tensor_parallel_size == 1
    assert strategy.save_distributed_checkpoint
    assert cli.model.sharding_config.mixed_precision == "bf16"


@pytest.mark.parametrize("config", [c for c in CONFIGS if Path(c).stem in STAGES[:2]])
def test_stage_one_global_batch_is_512_sequences_of_2048(config):
    cli = parse(config)
    trainer, data = cli.config.trainer, cli.config.data.init_args
    global_batch = (
        trainer.devices * trainer.num_nodes * data.batch_size * trainer.accumulate_grad_batches
    )
    assert global_batch == 512
    assert data.seq_len == 2048


@pytest.mark.parametrize("config", CONFIGS)
def test_published_hyper_parameters(config):
    cli = parse(config)
    stage, trainer = cli.model, cli.config.trainer
    optimizer, stem = stage.optimizer_config, Path(config).stem
    assert stage.cola_config.num_codes == 64
    if stem in STAGES[:2]:
        assert (optimizer.lr, optimizer.min_lr, optimizer.warmup_steps) == (1e-4, 4e-5, 100)
        assert optimizer.weight_decay == 0.01
        assert trainer.gradient_clip_val == 1.0
    elif stem == "action_guided":
        assert (optimizer.lr, tuple(optimizer.betas)) == (5e-6, (0.9, 0.95))
        assert trainer.max_epochs == 1
    else:
        assert (stage.rl.algorithm, stage.rl.group_size) == ("grpo", 4)
        assert (optimizer.lr, stage.rl.kl_coef) == (5e-7, 1e-3)
        assert (optimizer.weight_decay, tuple(optimizer.betas)) == (0.0, (0.9, 0.95))


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_each_stage_starts_from_the_previous_stages_checkpoint(name):
    def last_checkpoint(stage: str) -> str:
        callbacks = parse(f"configs/{name}/{stage}.yaml").config.trainer.callbacks
        (checkpoint,) = [c for c in callbacks if c.class_path.endswith("ModelCheckpoint")]
        return f"{checkpoint.init_args.dirpath}/last.ckpt"

    assert parse(f"configs/{name}/{STAGES[0]}.yaml").config.model.init_args.init_from is None
    for previous, stage in zip(STAGES, STAGES[1:], strict=False):
        init_from = parse(f"configs/{name}/{stage}.yaml").config.model.init_args.init_from
        assert init_from == last_checkpoint(previous), stage
