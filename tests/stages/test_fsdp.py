"""FSDP2 on CPU: two gloo processes under `ModelParallelStrategy` train exactly as one process does.

Each test run goes through the CLI in a subprocess (Lightning launches the second rank itself).
"""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import REPO, TINY, run_cli

REPORT = "sharding_report.json"
STEPS = 6


class ReportSharding(L.Callback):
    """Rank 0 writes which parameters are DTensors and what each FSDP unit holds."""

    def on_train_start(self, trainer, pl_module) -> None:
        units = [m for m in pl_module.model.modules() if isinstance(m, FSDPModule)]
        report = {
            "all_dtensor": all(isinstance(p, DTensor) for p in pl_module.model.parameters()),
            "checkpointing": pl_module.model.inverse_dynamics.blocks.is_gradient_checkpointing,
            "units": [sorted({p.requires_grad for p in own_parameters(u)}) for u in units],
        }
        if trainer.global_rank == 0:
            with open(REPORT, "w") as file:
                json.dump(report, file)


def own_parameters(unit: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters a unit shards itself: its own minus those of the units nested in it."""
    nested = {
        id(p)
        for m in unit.modules()
        if m is not unit and isinstance(m, FSDPModule)
        for p in m.parameters()
    }
    return [p for p in unit.parameters() if id(p) not in nested]


def losses(logdir) -> dict[int, float]:
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def write_config(
    tmp_path,
    name: str,
    devices: int,
    sharding: dict | None = None,
    feature_cache: dict | None = None,
    world_model: dict | None = None,
    **trainer,
) -> str:
    """Stage 1 of configs/test on a saved tiny backbone: one rank x 4 rows or two x 2 rows."""
    config = yaml.safe_load((REPO / "configs/test/latent_actions.yaml").read_text())
    config["model"]["init_args"]["backbone"] = {"source": "tiny", "tokenizer": "bytes"}
    config["model"]["init_args"]["sharding"] = sharding
    config["model"]["init_args"]["feature_cache"] = feature_cache
    if world_model is not None:
        config["model"]["init_args"]["cola"]["world_model"] = world_model
    config["data"]["init_args"]["batch_size"] = 4 // devices
    config["trainer"].update(
        {"devices": devices, "max_steps": STEPS, "log_every_n_steps": 1, "limit_val_batches": 0}
    )
    config["trainer"].update(trainer)
    config["trainer"]["logger"]["init_args"]["name"] = name
    config["trainer"]["callbacks"][0]["init_args"]["dirpath"] = f"checkpoints/{name}"
    if devices > 1:
        config["trainer"]["strategy"] = {
            "class_path": "lightning.pytorch.strategies.ModelParallelStrategy"
        }
        config["trainer"]["callbacks"].append(
            {"class_path": "tests.stages.test_fsdp.ReportSharding"}
        )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A single-process run and a two-process FSDP2 run of the same stage-1 config."""
    tmp_path = tmp_path_factory.mktemp("fsdp")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type="llama", **TINY))
    lm.save_pretrained(tmp_path / "tiny")
    for name, devices in (("single", 1), ("sharded", 2)):
        result = run_cli(["fit", "--config", write_config(tmp_path, name, devices)], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path


def test_parameters_are_sharded_and_frozen_parts_are_separate_units(runs):
    report = json.loads((runs / REPORT).read_text())
    assert report["all_dtensor"]
    # Every unit shards only frozen or only trained parameters (or none: the root).
    assert all(len(kinds) <= 1 for kinds in report["units"])
    assert [False] in report["units"] and [True] in report["units"]
    # 2 backbone + 1 IDM + 1 policy blocks, 1 merge layer, 5 parts, the root.
    assert len(report["units"]) == 11


def test_two_processes_follow_the_single_process_loss_curve(runs):
    single = losses(runs / "runs/test/single/version_0")
    sharded = losses(runs / "runs/test/sharded/version_0")
    assert len(single) == STEPS
    assert sharded == pytest.approx(single, rel=1e-5, abs=0)
    assert single[0] != pytest.approx(single[STEPS - 1], rel=1e-3)  # the loss moved


def test_sharded_checkpoint_consolidates_and_exports(runs):
    sharded = runs / "checkpoints/sharded/last.ckpt"
    assert sharded.is_dir() and len(list(sharded.glob("*.distcp"))) == 2
    result = run_cli(
        ["--checkpoint", str(sharded), "--consolidate", "consolidated.ckpt", "--out", "hf"],
        runs,
        module="cola_lightning.export",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    consolidated = torch.load(runs / "consolidated.ckpt", weights_only=False)["state_dict"]
    single = torch.load(runs / "checkpoints/single/last.ckpt", weights_only=False)["state_dict"]
    assert set(single) < set(consolidated)  # the sharded one also keeps the frozen backbone
    for name, tensor in single.items():
        torch.testing.assert_close(consolidated[name], tensor, rtol=1e-5, atol=1e-6)
    # ... and on into the Hugging Face-style export, whose backbone plain transformers loads.
    exported = AutoModelForCausalLM.from_pretrained(runs / "hf")
    torch.testing.assert_close(
        exported.lm_head.weight, consolidated["model.backbone.lm.lm_head.weight"]
    )


def test_sharded_checkpoint_resumes(runs):
    config = runs / "runs/test/sharded/version_0/config.yaml"
    more = ["--trainer.max_steps", str(STEPS + 2)]
    result = run_cli(["fit", "--config", str(config), *more, "--ckpt_path", "last"], runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses(runs / "runs/test/sharded/version_1")) == [STEPS, STEPS + 1]


def test_bf16_and_activation_checkpointing_follow_the_float32_run(runs):
    sharding = {"mixed_precision": "bf16", "activation_checkpointing": True}
    config = write_config(runs, "bf16", 2, sharding=sharding, max_steps=2)
    result = run_cli(["fit", "--config", config], runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((runs / REPORT).read_text())["checkpointing"]
    bf16 = losses(runs / "runs/test/bf16/version_0")
    float32 = losses(runs / "runs/test/sharded/version_0")
    assert bf16 == pytest.approx({s: float32[s] for s in bf16}, rel=2e-2)
    assert bf16 != pytest.approx({s: float32[s] for s in bf16}, rel=1e-6)  # bf16 did compute


def test_two_processes_train_from_a_feature_cache_each_wrote_half_of(runs):
    cache = {"dir": str(runs / "feature_cache"), "dtype": "float32"}
    config = write_config(runs, "cached", 2, feature_cache=cache)
    result = run_cli(["fit", "--config", config], runs)
    assert result.returncode == 0, result.stderr[-3000:]
    cached = losses(runs / "runs/test/cached/version_0")
    assert cached == pytest.approx(losses(runs / "runs/test/single/version_0"), rel=1e-5, abs=0)
    train = json.loads((runs / "feature_cache/manifest.json").read_text())["splits"]["train"]
    (first_lo, first_hi), (second_lo, second_hi) = (s["rows"] for s in train["shards"])
    assert first_lo == 0 and first_hi == second_lo and second_hi == train["rows"]
    assert sorted(p.name for p in (runs / "feature_cache").glob("train-rows-*.bin")) == [
        s["file"] for s in train["shards"]
    ]


def test_the_inject_form_on_two_processes_follows_one(runs):
    inject = {"form": "inject", "layer": 1}
    for name, devices in (("inject_single", 1), ("inject_sharded", 2)):
        config = write_config(runs, name, devices, world_model=inject, max_steps=3)
        result = run_cli(["fit", "--config", config], runs)
        assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((runs / REPORT).read_text())["all_dtensor"]
    single = losses(runs / "runs/test/inject_single/version_0")
    sharded = losses(runs / "runs/test/inject_sharded/version_0")
    assert len(single) == 3 and sharded == pytest.approx(single, rel=1e-5, abs=0)
