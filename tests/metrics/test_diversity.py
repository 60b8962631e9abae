"""Semantic diversity with the embedded MiniLM encoder on hand-made groups."""

import pytest
import torch

from cola_lightning.metrics.diversity import (
    SemanticDiversity,
    SentenceEncoder,
    mean_pairwise_cosine,
)


@pytest.fixture(scope="module")
def encoder():
    return SentenceEncoder()


def diversity(encoder, group):
    metric = SemanticDiversity(encoder)
    metric.update([group])
    return metric.compute()


def test_identical_texts_have_similarity_one(encoder):
    result = diversity(encoder, ["The cat sat on the mat."] * 3)
    assert result["similarity"].item() == pytest.approx(1.0, abs=1e-5)
    assert result["quality_diversity"].item() == pytest.approx(1.0, abs=1e-5)


def test_paraphrases_are_more_similar_than_unrelated_texts(encoder):
    paraphrases = [
        "Tom bought five apples at the market.",
        "At the market, Tom purchased 5 apples.",
        "Tom got five apples from the market.",
    ]
    unrelated = [
        "Tom bought five apples at the market.",
        "The stock exchange closed lower on Friday.",
        "Photosynthesis converts light into chemical energy.",
    ]
    similar, different = diversity(encoder, paraphrases), diversity(encoder, unrelated)
    assert similar["similarity"] > different["similarity"] + 0.3
    assert different["quality_diversity"] > similar["quality_diversity"]


def test_groups_are_averaged(encoder):
    metric = SemanticDiversity(encoder)
    groups = [["a red car", "a red car"], ["a red car", "quantum field theory"]]
    metric.update(groups)
    expected = (1.0 + mean_pairwise_cosine(encoder(groups[1])).item()) / 2
    assert metric.compute()["similarity"].item() == pytest.approx(expected, abs=1e-5)


def test_mean_pairwise_cosine_ignores_self_pairs():
    unit = torch.eye(3)
    assert mean_pairwise_cosine(unit).item() == 0.0
    with pytest.raises(ValueError, match="at least two"):
        mean_pairwise_cosine(unit[:1])


def test_missing_encoder_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="Could not load the sentence encoder"):
        SentenceEncoder(str(tmp_path / "no_encoder"))
