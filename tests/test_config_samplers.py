"""Every RL and evaluation config samples the actions its mode chooses.

A YAML `token: {temperature: 1.0}` keeps the token sampler's default `greedy: true`: token RL
rolled out greedily (every group tied) and token-mode pass@k equalled greedy accuracy before this
was caught. The stages refuse such settings when built; this checks every config in CI, without
the checkpoints the configs start from, by reading `generation` the way the CLI does.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonargparse import ArgumentParser

from cola_lightning.rollout.engine import GenerationConfig, require_sampled_actions
from tests.conftest import REPO


def sampling_configs() -> list[tuple[str, str]]:
    """(config, mode) for each RL config and each evaluation config that draws samples."""
    found = []
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        model = (yaml.safe_load(path.read_text()) or {}).get("model") or {}
        name, args = model.get("class_path", "").split(".")[-1], model.get("init_args") or {}
        if name.endswith("RLModule"):
            found.append((str(path.relative_to(REPO)), "latent" if "Latent" in name else "token"))
        elif name == "EvaluationModule" and args.get("samples"):
            found.append((str(path.relative_to(REPO)), args.get("mode", "latent")))
    return found


def generation_of(config: str) -> GenerationConfig:
    """The config's `generation`, parsed and built by jsonargparse as the CLI does."""
    values = yaml.safe_load(Path(REPO / config).read_text())["model"]["init_args"]["generation"]
    parser = ArgumentParser()
    parser.add_argument("--generation", type=GenerationConfig)
    return parser.instantiate_classes(parser.parse_object({"generation": values})).generation


def test_the_rl_and_evaluation_configs_are_all_found():
    modes = dict(sampling_configs())
    assert modes["configs/quickstart/token_rl.yaml"] == "token"
    assert modes["configs/quickstart/agent_latent_rl.yaml"] == "latent"
    assert modes["configs/eval/arithmetic.yaml"] == "latent"
    assert len(modes) >= 20


@pytest.mark.parametrize(("config", "mode"), sampling_configs())
def test_config_samples_its_modes_actions(config, mode):
    generation = generation_of(config)
    require_sampled_actions(generation, mode, f"{config} would draw identical samples")
    if mode == "latent":  # the published latent mode: codes sampled, tokens greedy
        assert generation.token.greedy, config


def test_a_greedy_token_sampler_from_yaml_is_refused():
    """The bug itself: a temperature alone leaves `greedy: true` on the token sampler."""
    parser = ArgumentParser()
    parser.add_argument("--generation", type=GenerationConfig)
    config = parser.parse_object({"generation": {"token": {"temperature": 1.0}}})
    generation = parser.instantiate_classes(config).generation
    with pytest.raises(ValueError, match=r"Token-mode tokens are chosen greedily"):
        require_sampled_actions(generation, "token", "every rollout would be the same")
