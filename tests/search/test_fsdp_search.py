"""Sharded search: MCTS-Q under `ModelParallelStrategy` (FSDP2 over two gloo processes) gives
the rows one process gives, and FSDP2-wrapped models search as plain ones.

The two ranks form one shard group (data_parallel 1, tensor_parallel 2: Lightning's default on one
node), so both search every problem in step, each forward gathering the other rank's shards.
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import torch.distributed as dist
import yaml
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from cola_lightning.data.tasks import TaskPromptDataModule
from cola_lightning.models.sharding import ShardingConfig, shard_cola_model
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.search.config import SearchConfig
from cola_lightning.search.scorers import Scorer, ScorerConfig
from cola_lightning.search.searcher import Searcher
from cola_lightning.stages.q_learning import QLearningModule
from cola_lightning.stages.search import SearchModule
from tests.conftest import REPO, TINY, TINY_COLA, run_cli, tiny_model, tiny_trainer

DATA = {"task": "arithmetic", "num_problems": 8, "val_size": 3, "val_batch_size": 2}


class WriteRankRows(L.Callback):
    """Every rank appends the rows it predicted to rows_<rank>.jsonl, after a first line saying
    whether each of the CoLA model's parameters is a shard (a DTensor smaller than its whole)."""

    def on_predict_start(self, trainer, module) -> None:
        shards = [
            isinstance(p, DTensor) and p.to_local().numel() < p.numel()
            for p in module.model.parameters()
        ]
        with open(f"rows_{trainer.global_rank}.jsonl", "w") as file:
            file.write(json.dumps({"all_sharded": all(shards)}) + "\n")

    def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
        with open(f"rows_{trainer.global_rank}.jsonl", "a") as file:
            file.writelines(json.dumps(row) + "\n" for row in outputs)


def search_config(tmp_path) -> dict:
    """configs/test/search.yaml (MCTS-Q) on a saved tiny backbone, scored by a random Q-model."""
    config = yaml.safe_load((REPO / "configs/test/search.yaml").read_text())
    args = config["model"]["init_args"]
    args.update(
        init_from=None,
        backbone={"source": str(tmp_path / "tiny"), "tokenizer": "bytes"},
        q_from=str(tmp_path / "q.ckpt"),
        scorer={"kind": "q_value"},
        stop_strings=list("0123456789"),  # rollouts of uneven lengths
    )
    args["search"].update(rounds=3, depth=12, simulation_tokens=6, answer_tokens=6)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("fsdp_search")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type="llama", **TINY))
    lm.save_pretrained(tmp_path / "tiny")
    q_stage = QLearningModule({"source": str(tmp_path / "tiny"), "tokenizer": "bytes"},
                              cola=TINY_COLA, q={"layers": 1})  # fmt: skip
    q_stage.configure_model()
    torch.nn.init.normal_(q_stage.q_model.head.weight, std=0.05)
    torch.save({"state_dict": q_stage.state_dict()}, tmp_path / "q.ckpt")

    config = search_config(tmp_path)
    config["data"]["init_args"].update(DATA, tokenizer="bytes")
    config["trainer"].update(
        devices=2,
        logger=False,
        strategy={"class_path": "lightning.pytorch.strategies.ModelParallelStrategy"},
        callbacks=[
            {"class_path": "tests.search.test_fsdp_search.WriteRankRows"},
            {
                "class_path": "cola_lightning.rollout.writer.JsonlPredictionWriter",
                "init_args": {"path": str(tmp_path / "search.jsonl")},
            },
        ],
    )
    (tmp_path / "sharded.yaml").write_text(yaml.safe_dump(config))
    command = ["predict", "--config", str(tmp_path / "sharded.yaml")]
    result = run_cli(command, tmp_path, {"OMP_NUM_THREADS": "1"})  # as tests/search/conftest.py
    assert result.returncode == 0, result.stderr[-3000:]

    L.seed_everything(0, verbose=False)  # the CLI's seed_everything: the same latent parts
    module = SearchModule(**search_config(tmp_path)["model"]["init_args"])
    data = TaskPromptDataModule(**DATA, tokenizer="bytes")
    single = [row for rows in tiny_trainer(1).predict(module, data) for row in rows]
    return tmp_path, single


def test_two_shard_ranks_search_as_one_process(runs):
    tmp_path, single = runs
    assert len(single) == 3
    for expected in single:
        expected["cost"].pop("wall_s", None)
    for rank in (0, 1):
        lines = (tmp_path / f"rows_{rank}.jsonl").read_text().splitlines()
        head, *rows = [json.loads(line) for line in lines]
        assert head == {"all_sharded": True} and len(rows) == 3
        for row, expected in zip(rows, single, strict=True):
            row["cost"].pop("wall_s")
            assert row == expected
    # the output file: the shard group's rows once (its first rank writes them), no part files
    written = [json.loads(line) for line in (tmp_path / "search.jsonl").read_text().splitlines()]
    for row in written:
        row["cost"].pop("wall_s")
    assert written == single and not list(tmp_path.glob("search.jsonl.part*"))


@pytest.mark.parametrize("method", ["mcts", "mcts_token"])
def test_an_fsdp_wrapped_model_searches_as_the_plain_one(method):
    """One process, one shard: FSDP2 gathers its parameters in every forward, which it cannot do
    inside `torch.inference_mode` (the search decodes under `no_grad` for this)."""
    torch.manual_seed(0)
    plain = tiny_model().eval()
    wrapped = tiny_model().eval()
    wrapped.load_state_dict(plain.state_dict())
    config = SearchConfig(method, rounds=3, chunk_tokens=2, max_chunks=2, simulation_tokens=4)
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        shard_cola_model(wrapped, init_device_mesh("cpu", (1,)), ShardingConfig())
        results = [
            Searcher(model, byte_tokenizer(), config, Scorer(ScorerConfig())).search(
                "Q: 1+1=", {}, torch.Generator().manual_seed(0)
            )
            for model in (plain, wrapped)
        ]
    finally:
        dist.destroy_process_group()
    assert results[0].tokens == results[1].tokens
    assert results[0].cost.backbone_tokens == results[1].cost.backbone_tokens
