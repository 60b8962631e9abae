"""The CLI end to end, in subprocesses: fit on every test config, TensorBoard read back, errors."""

import glob
import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cola_lightning.cli import main
from tests.conftest import REPO, run_cli

STAGE_ONE_TAGS = {
    "train/loss",
    "train/ce",
    "train/entropy",
    "codebook/perplexity",
    "codebook/alive",
    "perf/tokens_per_s",
    "val/wm_nll",
    "val/base_nll",
}
RL_TAGS = {
    "rl/reward_mean",
    "rl/reward_std",
    "rl/reward_errors",
    "rl/kl",
    "rl/policy_entropy",
    "rl/clip_frac",
    "timing/rollout_s",
    "timing/update_s",
    "perf/tokens_per_s",
    "val/accuracy",
}
BEHAVIOR_CLONING_TAGS = {
    "train/loss",
    "bc/accuracy",
    "perf/tokens_per_s",
    "val/wm_nll",
    "val/base_nll",
    "val/bc_accuracy",
    "val/wm_nll_policy",
}


def read_events(logdir: Path) -> EventAccumulator:
    files = glob.glob(str(logdir / "events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(files[0], size_guidance={"tensors": 0, "histograms": 0})
    events.Reload()
    return events


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def fit(config: str, cwd: Path, *overrides: str) -> None:
    result = run_cli(["fit", "--config", str(REPO / config), *overrides], cwd)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def test_runs(tmp_path_factory):
    """Stage 1 then stage 1b through the CLI, as the quickstart chains them."""
    cwd = tmp_path_factory.mktemp("cli")
    fit("configs/test/latent_actions.yaml", cwd)
    fit("configs/test/behavior_cloning.yaml", cwd)
    fit("configs/test/action_guided.yaml", cwd)
    fit("configs/test/latent_rl.yaml", cwd)
    fit("configs/test/token_rl.yaml", cwd)
    return cwd


@pytest.mark.parametrize("kind", ["latent", "token"])
def test_rl_logs(test_runs, kind):
    events = read_events(test_runs / f"runs/test/{kind}_rl/version_0")
    tags = set(events.Tags()["scalars"])
    assert tags >= RL_TAGS, RL_TAGS - tags
    assert [e.step for e in events.Scalars("rl/reward_mean")] == [0, 1, 2]
    assert 0.0 <= events.Scalars("val/accuracy")[-1].value <= 1.0


def test_action_guided_logs_and_saves_only_adapters_of_frozen_base(test_runs):
    events = read_events(test_runs / "runs/test/action_guided/version_0")
    assert {"train/loss", "val/wm_nll", "val/base_nll", "val/wm_nll_policy"} <= set(
        events.Tags()["scalars"]
    )
    checkpoint = torch.load(
        test_runs / "checkpoints/test/action_guided/last.ckpt", weights_only=False
    )
    assert any(".lora_A." in key for key in checkpoint["state_dict"])


def test_predict_writes_generations(test_runs):
    result = run_cli(["predict", "--config", str(REPO / "configs/test/generate.yaml")], test_runs)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = (test_runs / "outputs/test/generations.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 4  # 2 prompts x 2 samples
    for record in records:
        assert record["prompt"].startswith("Question:")
        assert 1 <= len(record["tokens"]) <= 16
        assert len(record["codes"]) == len(record["tokens"]) == len(record["code_logprobs"])
        assert all(0 <= code < 8 for code in record["codes"])
        assert all(lp <= 0 for lp in record["code_logprobs"] + record["token_logprobs"])
    again = run_cli(["predict", "--config", str(REPO / "configs/test/generate.yaml")], test_runs)
    assert again.returncode != 0 and "already exists" in again.stderr
    assert not (test_runs / "config.yaml").exists()  # no logger: no config dropped in the cwd


def test_stage_one_logs_and_checkpoint(test_runs):
    logdir = test_runs / "runs/test/latent_actions/version_0"
    events = read_events(logdir)
    assert set(events.Tags()["scalars"]) >= STAGE_ONE_TAGS
    assert "codebook/usage" in events.Tags()["histograms"]
    assert "samples/idm_codes/text_summary" in events.Tags()["tensors"]
    assert len(events.Scalars("val/wm_nll")) == 2
    saved = yaml.safe_load((logdir / "config.yaml").read_text())
    assert saved["model"]["class_path"].endswith("LatentActionModule")
    assert (test_runs / "checkpoints/test/latent_actions/last.ckpt").is_file()


def test_behavior_cloning_logs(test_runs):
    events = read_events(test_runs / "runs/test/behavior_cloning/version_0")
    assert set(events.Tags()["scalars"]) >= BEHAVIOR_CLONING_TAGS
    accuracy = [e.value for e in events.Scalars("val/bc_accuracy")]
    assert all(0.0 <= a <= 1.0 for a in accuracy)
    assert (test_runs / "checkpoints/test/behavior_cloning/last.ckpt").is_file()


def test_saved_config_reruns(test_runs):
    """The config saved beside the logs is a complete config: validate runs from it."""
    saved = test_runs / "runs/test/latent_actions/version_0/config.yaml"
    result = run_cli(["validate", "--config", str(saved)], test_runs)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val/wm_nll" in result.stdout


@pytest.mark.parametrize(
    "config", sorted(str(p.relative_to(REPO)) for p in REPO.glob("configs/**/*.yaml"))
)
def test_every_config_parses(config, capsys):
    """--print_config round trip, in process (parsing only: nothing is built or loaded)."""
    subcommand = "predict" if "generate" in config else "fit"
    with pytest.raises(SystemExit) as exit_info:
        main([subcommand, "--config", str(REPO / config), "--print_config"])
    assert exit_info.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    original = yaml.safe_load((REPO / config).read_text())
    assert printed["model"]["class_path"] == original["model"]["class_path"]
    assert printed["data"]["class_path"] == original["data"]["class_path"]


def test_unknown_config_key_is_a_clear_error(tmp_path):
    config = yaml.safe_load((REPO / "configs/test/latent_actions.yaml").read_text())
    config["model"]["init_args"]["gumbel_temperature"] = 1.0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(["fit", "--config", str(path)], tmp_path)
    assert result.returncode != 0
    assert "gumbel_temperature" in result.stderr


def test_malformed_yaml_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  class_path: [unclosed\n")
    result = run_cli(["fit", "--config", str(path)], tmp_path)
    assert result.returncode != 0
    assert f"{path} is not valid YAML" in result.stderr
    missing = run_cli(["fit", "--config", str(tmp_path / "nope.yaml")], tmp_path)
    assert "config file not found" in missing.stderr


def test_missing_model_path_is_a_clear_error(tmp_path):
    config = yaml.safe_load((REPO / "configs/test/latent_actions.yaml").read_text())
    config["model"]["init_args"]["backbone"] = {"source": "/no/such/model"}
    path = tmp_path / "missing_model.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli(["fit", "--config", str(path)], tmp_path)
    assert result.returncode != 0
    assert "Backbone path not found: /no/such/model" in result.stderr


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci/run").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("bash scripts/install.sh")]
    assert len(commands) == 2, commands
    assert commands[1] in ci


def test_validate_evaluates_and_writes_results(test_runs):
    result = run_cli(["validate", "--config", str(REPO / "configs/test/eval.yaml")], test_runs)
    assert result.returncode == 0, result.stderr[-3000:]
    logdir = test_runs / "runs/test/eval/version_0"
    results = json.loads((logdir / "results.json").read_text())
    assert set(results["metrics"]) == {"greedy_accuracy", "pass@1", "pass@2", "maj@1", "maj@2",
                                       "best_of_2"}  # fmt: skip
    assert len(results["records"]) == 4
    assert {"eval/greedy_accuracy", "eval/pass@2"} <= set(read_events(logdir).Tags()["scalars"])


def test_search_chain_samples_solutions_learns_q_and_searches(test_runs):
    """Sampled solutions feed the Q stage, whose checkpoint guides MCTS-Q, all through the CLI."""
    predict = ["predict", "--config"]
    result = run_cli([*predict, str(REPO / "configs/test/sample_solutions.yaml")], test_runs)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_jsonl(test_runs / "outputs/test/solutions.jsonl")
    assert rows and all(len(r["codes"]) > 0 and "reward" in r for r in rows)
    fit("configs/test/q_learning.yaml", test_runs)
    events = read_events(test_runs / "runs/test/q_learning/version_0")
    assert {"q/td_loss", "q/value_mean", "q/target_sync"} <= set(events.Tags()["scalars"])
    syncs = [e.value for e in events.Scalars("q/target_sync")]
    assert syncs[0] == 1.0 and 0.0 in syncs  # synced at step 0, not at every step
    result = run_cli([*predict, str(REPO / "configs/test/search.yaml")], test_runs)
    assert result.returncode == 0, result.stderr[-3000:]
    searched = read_jsonl(test_runs / "outputs/test/search.jsonl")
    assert searched and all(r["oracle"] is False and r["method"] == "mcts_q" for r in searched)
    assert all(r["cost"]["backbone_tokens"] > 0 and r["cost"]["nodes"] >= 1 for r in searched)
