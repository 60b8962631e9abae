"""Tiny random-init backbones and helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# One intra-op thread for the tests and the processes they start (set before torch loads). The
# tests run tiny models: thousands of microsecond-sized ops, where a second thread only adds
# synchronisation. Measured on a 2-core CPU: tests/stages/test_rl.py, tests/rollout and
# tests/evaluation/test_module.py take 6.6 s on one thread and 62 s on two; two-rank gloo tests
# would otherwise run four threads on two cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import lightning as L  # noqa: E402
import pytest  # noqa: E402

from cola_lightning.data.corpus import ArithmeticCorpus, TextCorpusDataModule  # noqa: E402
from cola_lightning.models.backbone import Backbone, BackboneSpec  # noqa: E402
from cola_lightning.models.cola import CoLAConfig, CoLAModel  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# CI runs the suite on two pytest-xdist workers, a file per worker at a time (`--dist loadfile`).
# These files take one to six minutes each (subprocesses, two-rank gloo runs, a SLURM cluster);
# started last, one of them would leave a worker idle at the end, so they are collected first.
LONG_FILES = (
    "tests/test_cli.py",
    "tests/stages/test_fsdp_rl.py",
    "tests/stages/test_fsdp.py",
    "tests/launch/test_slurm.py",
)

TINY = {
    "vocab_size": 259,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
    "initializer_range": 0.2,
}
TINY_COLA = CoLAConfig(num_codes=8, idm_layers=1, policy_layers=1, merge_layers=1)


def tiny_spec(model_type: str = "llama") -> BackboneSpec:
    return BackboneSpec(config={"model_type": model_type, **TINY}, tokenizer="bytes")


def tiny_model(model_type: str = "llama", cola: CoLAConfig = TINY_COLA) -> CoLAModel:
    return CoLAModel(Backbone.from_spec(tiny_spec(model_type)), cola)


def tiny_data(num_problems: int = 40, seq_len: int = 48, batch_size: int = 4):
    return TextCorpusDataModule(
        arithmetic=ArithmeticCorpus(num_problems=num_problems),
        seq_len=seq_len,
        batch_size=batch_size,
        val_fraction=0.2,
        tokenizer="bytes",
    )


def tiny_trainer(max_steps: int, **kwargs) -> L.Trainer:
    defaults = dict(
        accelerator="cpu",
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1,
    )
    return L.Trainer(**{**defaults, **kwargs})


def run_cli(
    args: list[str],
    cwd: Path,
    extra_env: dict[str, str] | None = None,
    module: str = "cola_lightning",
) -> subprocess.CompletedProcess:
    """Runs `python -m MODULE ARGS` in a subprocess with a clean environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "LOCAL_RANK"))}
    env["PYTHONPATH"] = str(REPO)
    env.update(extra_env or {})
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (a stable sort: the order within each file is kept)."""

    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO).as_posix()
        return LONG_FILES.index(path) if path in LONG_FILES else len(LONG_FILES)

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _seed():
    L.seed_everything(0, verbose=False)


def fit_and_save(module, path: Path, max_steps: int = 3) -> tuple[Path, dict]:
    """Fits a stage for a few steps, saves its checkpoint, returns (path, model state copy)."""
    trainer = tiny_trainer(max_steps=max_steps)
    trainer.fit(module, tiny_data())
    trainer.save_checkpoint(path)
    return path, {k: v.clone() for k, v in module.model.state_dict().items()}


@pytest.fixture(scope="session")
def stage_one_checkpoint(tmp_path_factory):
    """A tiny stage-1 checkpoint and the state it was saved with."""
    from cola_lightning.stages.latent_actions import LatentActionModule

    L.seed_everything(0, verbose=False)
    module = LatentActionModule(tiny_spec(), cola=TINY_COLA)
    return fit_and_save(module, tmp_path_factory.mktemp("stage1") / "stage1.ckpt")


@pytest.fixture(scope="session")
def stage_one_b_checkpoint(tmp_path_factory, stage_one_checkpoint):
    """A tiny stage-1b checkpoint (from the stage-1 one) and its state."""
    from cola_lightning.stages.behavior_cloning import BehaviorCloningModule

    L.seed_everything(0, verbose=False)
    init = str(stage_one_checkpoint[0])
    module = BehaviorCloningModule(tiny_spec(), init_from=init, cola=TINY_COLA)
    return fit_and_save(module, tmp_path_factory.mktemp("stage1b") / "stage1b.ckpt")
