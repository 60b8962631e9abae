"""The feature cache: training from cached states equals running the frozen backbone; a stale,
foreign, damaged or half-written cache is never read."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from cola_lightning.data.corpus import ArithmeticCorpus
from cola_lightning.data.feature_cache import (
    FeatureCacheConfig,
    FeatureCacheMismatch,
    load_or_build,
    open_cache,
    scan_rows,
)
from cola_lightning.data.feature_cache_files import MANIFEST, CacheJob, RankGroup, write_cache
from cola_lightning.data.sft import PromptResponseDataModule
from cola_lightning.models.tokenizer import byte_tokenizer
from cola_lightning.stages.behavior_cloning import BehaviorCloningModule
from cola_lightning.stages.feature_cache import tokenizer_identity, weights_fingerprint
from cola_lightning.stages.latent_actions import LatentActionModule
from tests.conftest import TINY, TINY_COLA, tiny_data, tiny_spec, tiny_trainer

STEPS = 4
WRITE_BATCH = 64  # rows per backbone pass while writing: few passes on the tiny corpus


class Losses(L.Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.values.append(outputs["loss"].item())


def cache(directory, dtype: str = "float32", **kwargs) -> dict:
    return {"dir": str(directory), "dtype": dtype, "batch_size": WRITE_BATCH, **kwargs}


def fit(module, data=None, path=None) -> list[float]:
    losses = Losses()
    trainer = tiny_trainer(max_steps=STEPS, callbacks=[losses])
    trainer.fit(module, data or tiny_data())
    if path is not None:
        trainer.save_checkpoint(path)
    return losses.values


def stage_one(seed: int = 0, **kwargs) -> LatentActionModule:
    L.seed_everything(seed, verbose=False)
    return LatentActionModule(tiny_spec(), cola=TINY_COLA, **kwargs)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Stage 1 without a cache, from a float32 one (checkpointed), from a bf16 one."""
    tmp = tmp_path_factory.mktemp("feature_cache")
    return {
        "tmp": tmp,
        "backbone": fit(stage_one()),
        "float32": fit(stage_one(feature_cache=cache(tmp / "f32")), path=tmp / "stage1.ckpt"),
        "bfloat16": fit(stage_one(feature_cache=cache(tmp / "bf16", "bfloat16"))),
    }


def test_training_from_the_cache_equals_running_the_backbone(runs):
    assert len(runs["backbone"]) == STEPS
    assert runs["float32"] == pytest.approx(runs["backbone"], rel=1e-6)
    assert runs["bfloat16"] == pytest.approx(runs["backbone"], rel=1e-3)
    assert runs["bfloat16"] != runs["backbone"]  # the bf16 states were rounded
    f32, bf16 = (json.loads((runs["tmp"] / d / MANIFEST).read_text()) for d in ("f32", "bf16"))
    train = f32["splits"]["train"]["shards"][0]
    size = (runs["tmp"] / "f32" / train["file"]).stat().st_size
    assert size == train["tokens"] * TINY["hidden_size"] * 4
    assert (runs["tmp"] / "bf16" / train["file"]).stat().st_size == size // 2
    assert f32["identity"]["corpus"] == bf16["identity"]["corpus"]


def test_stage_1b_reads_the_cache_stage_1_wrote(runs):
    directory, init = runs["tmp"] / "f32", str(runs["tmp"] / "stage1.ckpt")
    written = {p.name: p.stat().st_mtime_ns for p in directory.iterdir()}

    def stage_one_b(**kwargs) -> BehaviorCloningModule:
        L.seed_everything(0, verbose=False)
        return BehaviorCloningModule(tiny_spec(), init_from=init, cola=TINY_COLA, **kwargs)

    cached = fit(stage_one_b(feature_cache=cache(directory)))
    assert {p.name: p.stat().st_mtime_ns for p in directory.iterdir()} == written
    assert cached == pytest.approx(fit(stage_one_b()), rel=1e-6)
    # The re-clone's data: prompt/response rows of different lengths, right-padded per batch.
    padded = cache(runs["tmp"] / "padded")
    cached = fit(stage_one_b(feature_cache=padded), prompt_responses())
    assert cached == pytest.approx(fit(stage_one_b(), prompt_responses()), rel=1e-6)


def prompt_responses() -> PromptResponseDataModule:
    return PromptResponseDataModule(
        arithmetic=ArithmeticCorpus(num_problems=12),
        tokenizer="bytes",
        batch_size=4,
        val_fraction=0.5,
    )


def other_tokenizer(tmp_path) -> str:
    """The byte tokenizer plus one extra token, saved where `load_tokenizer` finds it."""
    tokenizer = byte_tokenizer()
    tokenizer.add_tokens(["<extra>"])
    tokenizer.save_pretrained(tmp_path / "tok")
    (tmp_path / "tok" / "config.json").write_text(json.dumps({"model_type": "llama", **TINY}))
    return str(tmp_path / "tok")


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("backbone", "backbone: the cache has inline llama config"),
        ("tokenizer", "tokenizer: the cache has bytes"),
        ("seq_len", "sequence length: the cache has 48, this run has 32"),
    ],
)
def test_a_foreign_cache_is_refused_with_the_difference_named(runs, tmp_path, change, named):
    directory = runs["tmp"] / "f32"
    data = {
        "backbone": tiny_data(),
        "tokenizer": tiny_data(),
        "seq_len": tiny_data(seq_len=32),
    }[change]
    if change == "tokenizer":
        data.tokenizer_name = other_tokenizer(tmp_path)
    module = stage_one(seed=1 if change == "backbone" else 0, feature_cache=cache(directory))
    with pytest.raises(FeatureCacheMismatch, match="rebuild: true") as refused:
        fit(module, data)
    assert named in str(refused.value)
    assert str(refused.value).count("\n  - ") == 1 + (change == "seq_len")  # and the corpus


def tiny_job(data, interrupt_after: int | None = None) -> tuple[CacheJob, dict]:
    """What a stage would write for `data` with the tiny backbone, optionally killed mid-way."""
    module = stage_one()
    module.configure_model()
    model, passes = module.model.eval(), []

    def compute(batch: dict) -> torch.Tensor:
        passes.append(len(batch["input_ids"]))
        if interrupt_after is not None and len(passes) > interrupt_after:
            raise RuntimeError("killed")
        with torch.no_grad():
            return model.hidden_states(batch["input_ids"], batch["attention_mask"])[0]

    scanned = {name: scan_rows(rows) for name, rows in data.cache_splits().items()}
    identity = {
        "backbone": {"name": "tiny", "fingerprint": weights_fingerprint(model.backbone)},
        "tokenizer": tokenizer_identity("bytes", byte_tokenizer()),
        "seq_len": data.sequence_length,
        "corpus": {name: {"sha": sha, "rows": len(n)} for name, (sha, n) in scanned.items()},
        "dtype": "float32",
    }
    lengths = {name: n for name, (_, n) in scanned.items()}
    job = CacheJob(data.cache_splits(), lengths, data.collate_rows, compute, TINY["hidden_size"], 4)
    return job, identity


def test_padded_rows_get_exactly_their_states(tmp_path):
    data = prompt_responses()
    data.setup()
    job, identity = tiny_job(data)
    data.feature_cache, written = load_or_build(
        FeatureCacheConfig(str(tmp_path)), identity, job, RankGroup()
    )
    assert written
    batch = next(iter(data.val_dataloader()))
    mask = batch["attention_mask"].bool()
    assert not mask.all()  # rows of different lengths, right-padded
    expected = job.compute(batch)
    torch.testing.assert_close(batch["hidden"][mask], expected[mask], rtol=1e-5, atol=1e-5)
    assert (batch["hidden"][~mask] == 0).all()


def test_a_cache_killed_mid_way_is_never_read_as_complete(tmp_path):
    data = tiny_data(num_problems=12, seq_len=32)
    data.setup()
    config = FeatureCacheConfig(str(tmp_path))
    job, identity = tiny_job(data)
    complete, _ = load_or_build(config, identity, job, RankGroup())
    reference = complete.states("train")[3]
    killed, _ = tiny_job(data, interrupt_after=1)
    with pytest.raises(RuntimeError, match="killed"):
        write_cache(tmp_path, identity, killed, RankGroup())  # a rebuild that dies mid-way
    assert list(tmp_path.glob("train-rows-*.bin")) and open_cache(tmp_path, identity) is None
    with pytest.warns(UserWarning, match="no manifest"):
        rebuilt, written = load_or_build(config, identity, job, RankGroup())
    assert written
    assert torch.equal(rebuilt.states("train")[3], reference)


def test_a_damaged_cache_is_refused(tmp_path):
    data = tiny_data(num_problems=12, seq_len=32)
    data.setup()
    job, identity = tiny_job(data)
    load_or_build(FeatureCacheConfig(str(tmp_path)), identity, job, RankGroup())
    (shard,) = tmp_path.glob("train-rows-*.bin")
    shard.write_bytes(shard.read_bytes()[:-4])
    with pytest.raises(FeatureCacheMismatch, match="bytes, the manifest says"):
        open_cache(tmp_path, identity)
