"""The inject form through the CLI, in process: stage 1, behaviour cloning (1b) and generation."""

import json

import torch

from cola_lightning.cli import main
from tests.conftest import REPO

# Two training steps a stage are enough here (tests/stages/test_latent_actions_inject.py trains).
SHORT = ["--trainer.max_steps=2", "--trainer.val_check_interval=2", "--trainer.limit_val_batches=1"]
RUNS = (
    ("fit", "latent_actions_inject", SHORT),
    ("fit", "behavior_cloning_inject", SHORT),
    ("predict", "generate_inject", []),
)


def test_inject_configs_run_stage_one_behaviour_cloning_and_generation(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for command, name, overrides in RUNS:
        main([command, "--config", str(REPO / f"configs/test/{name}.yaml"), *overrides])
    states = {
        stage: torch.load(
            tmp_path / f"checkpoints/test/{stage}/last.ckpt", map_location="cpu", weights_only=False
        )["state_dict"]
        for stage in ("latent_actions_inject", "behavior_cloning_inject")
    }
    one, one_b = states["latent_actions_inject"], states["behavior_cloning_inject"]
    layers = [k for k in one if ".world_model.layers." in k]
    assert layers and all(
        torch.equal(one[k], one_b[k]) for k in layers
    )  # 1b trains the policy only
    assert any(not torch.equal(one[k], one_b[k]) for k in one if ".policy." in k)
    rows = [
        json.loads(line) for line in (tmp_path / "outputs/test/generations_inject.jsonl").open()
    ]
    assert len(rows) == 4  # two prompts, two samples each
    for row in rows:
        assert len(row["tokens"]) == len(row["codes"]) == len(row["token_logprobs"]) == 16
        assert all(0 <= code < 8 for code in row["codes"])
