"""Exact resume: a run killed mid-way and resumed from its last checkpoint trains as if unbroken."""

from __future__ import annotations

import os
import signal

import lightning as L
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from tests.conftest import REPO, run_cli

KILL_AT = "COLA_TEST_KILL_AT_STEP"


class KillAt(L.Callback):
    """SIGKILLs its own process after the optimiser step that $COLA_TEST_KILL_AT_STEP names."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if str(trainer.global_step) == os.environ.get(KILL_AT):
            os.kill(os.getpid(), signal.SIGKILL)


def losses(logdir) -> dict[int, float]:
    (events_file,) = logdir.glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file))
    events.Reload()
    return {e.step: e.value for e in events.Scalars("train/loss")}


def test_sigkill_and_resume_gives_the_same_losses(tmp_path):
    """Model, optimiser, schedule, random state (Gumbel noise) and data position all restored."""
    config = str(REPO / "configs" / "test" / "latent_actions.yaml")
    common = [
        "--trainer.max_steps=10",
        "--model.init_args.optimizer.lr=0.02",  # large, so that every batch moves the loss
        "--trainer.log_every_n_steps=1",
        "--trainer.callbacks+=tests.stages.test_resume.KillAt",
        "--trainer.callbacks+=ModelCheckpoint",
        "--trainer.callbacks.dirpath=resumable",
        "--trainer.callbacks.every_n_train_steps=4",
        "--trainer.callbacks.save_last=true",
    ]
    whole = run_cli(
        ["fit", "--config", config, *common, "--trainer.logger.init_args.name=whole"], tmp_path
    )
    assert whole.returncode == 0, whole.stderr[-3000:]
    broken = ["fit", "--config", config, *common, "--trainer.logger.init_args.name=broken"]
    killed = run_cli(broken, tmp_path, {KILL_AT: "6"})
    assert killed.returncode == -signal.SIGKILL
    first = tmp_path / "runs/test/broken/version_0"
    resumed = run_cli(
        ["fit", "--config", str(first / "config.yaml"), "--ckpt_path", "last"], tmp_path
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    reference = losses(tmp_path / "runs/test/whole/version_0")
    after = losses(tmp_path / "runs/test/broken/version_1")
    assert min(after) == 4  # the step count continues from the checkpoint
    assert max(losses(first)) >= 4  # the first run got past the checkpoint before it was killed
    assert after == pytest.approx({s: reference[s] for s in after}, rel=1e-6, abs=0)
    assert len(set(reference.values())) == len(reference)  # every step's loss is different
