"""Fixtures of the stage tests that run the CLI on a saved backbone."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from tests.conftest import TINY


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A folder holding a tiny random Llama saved as `tiny/`, for configs that load it by path."""
    tmp_path = tmp_path_factory.mktemp("saved_tiny")
    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type="llama", **TINY))
    lm.save_pretrained(tmp_path / "tiny")
    return tmp_path
