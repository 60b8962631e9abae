"""SlurmPreemption in process, on a real tiny Trainer: the requeue id, the requeue call, and a
signal that checkpoints, stops, and resumes through `ckpt_path="last"`."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from cola_lightning.launch.preemption import SlurmPreemption, requeue_job, slurm_requeue_id
from cola_lightning.stages.latent_actions import LatentActionModule
from tests.conftest import TINY_COLA, tiny_data, tiny_spec, tiny_trainer

FAKE_SLURM = {  # enough for Lightning to detect a SLURM job of one task
    "SLURM_JOB_ID": "4242",
    "SLURM_NTASKS": "1",
    "SLURM_JOB_NAME": "cola-test",
    "SLURM_NODELIST": "localhost",
    "SLURM_PROCID": "0",
    "SLURM_LOCALID": "0",
    "SLURM_NODEID": "0",
}


def test_requeue_id():
    assert slurm_requeue_id({"SLURM_JOB_ID": "17"}) == "17"
    # An array task has its own SLURM_JOB_ID, but requeues as <array job>_<task>.
    array = {"SLURM_JOB_ID": "20", "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "3"}
    assert slurm_requeue_id(array) == "17_3"
    assert slurm_requeue_id({}) is None


def fake_scontrol(directory: Path, exit_code: int = 0) -> Path:
    """An `scontrol` that records its arguments."""
    script = directory / "scontrol"
    script.write_text(f'#!/bin/sh\necho "$@" > {directory}/args\necho nope >&2\nexit {exit_code}\n')
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return directory / "args"


def test_requeue_job_calls_scontrol_with_the_array_id(tmp_path):
    args = fake_scontrol(tmp_path)
    env = {"PATH": str(tmp_path), "SLURM_ARRAY_JOB_ID": "17", "SLURM_ARRAY_TASK_ID": "3"}
    assert requeue_job("/ckpt/last-preempted.ckpt", env)
    assert args.read_text().split() == ["requeue", "17_3"]


def test_requeue_job_warns_when_it_cannot(tmp_path):
    by_hand = "checkpoint was saved at /c.ckpt; the job must be resubmitted by hand"
    with pytest.warns(UserWarning, match=f"`scontrol` is not on PATH.*{by_hand}"):
        assert not requeue_job("/c.ckpt", {"PATH": str(tmp_path), "SLURM_JOB_ID": "5"})
    with pytest.warns(UserWarning, match=f"Not running under SLURM.*{by_hand}"):
        assert not requeue_job("/c.ckpt", {"PATH": str(tmp_path)})
    fake_scontrol(tmp_path, exit_code=1)
    with pytest.warns(UserWarning, match=f"`scontrol requeue 5` failed: nope. The {by_hand}"):
        assert not requeue_job("/c.ckpt", {"PATH": str(tmp_path), "SLURM_JOB_ID": "5"})


def test_filename_must_be_found_by_ckpt_path_last():
    with pytest.raises(ValueError, match="must start with 'last'"):
        SlurmPreemption(filename="preempted")
    preemption = SlurmPreemption(signal="USR2")
    assert preemption.signum == signal.SIGUSR2
    preemption._restore_handler()


def test_a_signal_before_training_is_kept_and_acted_on_at_the_first_step(tmp_path, monkeypatch):
    # Lightning runs the data module's setup before any callback's: the handler must already be
    # there, or the signal's default action kills the process while the run starts.
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    preemption = SlurmPreemption(requeue=False)
    assert signal.getsignal(signal.SIGUSR1) == preemption._on_signal  # else the kill ends pytest
    os.kill(os.getpid(), signal.SIGUSR1)
    with pytest.warns(UserWarning, match="requeue disabled"):
        trainer = fit(tmp_path / "ckpts", 100, preemption)
    assert preemption.preempted and trainer.global_step == 1


class SignalAt(L.Callback):
    """Sends the signal to this process at the end of one step, as SLURM would, and records
    what the signal handler and Lightning's SLURM environment look like during training."""

    def __init__(self, step: int, signum: int = signal.SIGUSR1) -> None:
        self.step, self.signum, self.seen = step, signum, {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.seen["handler"] = signal.getsignal(self.signum)
        self.seen["environment"] = trainer._accelerator_connector.cluster_environment

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


def fit(dirpath: Path, max_steps: int, *callbacks, ckpt_path=None) -> L.Trainer:
    # ModelCheckpoint writes last.ckpt (and a top-1 file) every 2 steps.
    checkpoint = ModelCheckpoint(dirpath=dirpath, save_last=True, every_n_train_steps=2)
    options = dict(enable_checkpointing=True, limit_val_batches=0)
    trainer = tiny_trainer(max_steps, callbacks=[*callbacks, checkpoint], **options)
    module = LatentActionModule(tiny_spec(), cola=TINY_COLA)
    trainer.fit(module, tiny_data(num_problems=8), ckpt_path=ckpt_path, weights_only=False)
    return trainer


def test_signal_checkpoints_stops_and_resumes(tmp_path, monkeypatch):
    for key, value in FAKE_SLURM.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                               if not (Path(p) / "scontrol").exists()))  # fmt: skip
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    dirpath = tmp_path / "ckpts"
    before = signal.getsignal(signal.SIGUSR1)
    preemption, signaller = SlurmPreemption(), SignalAt(step=5)
    no_scontrol = "`scontrol` is not on PATH: cannot requeue SLURM job 4242"
    with pytest.warns(UserWarning, match=no_scontrol):
        trainer = fit(dirpath, 100, signaller, preemption)

    # Lightning's auto-requeue (checkpoint inside its handler) is off; ours owned the signal.
    assert signaller.seen["environment"].auto_requeue is False
    assert signaller.seen["handler"] == preemption._on_signal
    assert signal.getsignal(signal.SIGUSR1) == before  # restored after fit
    assert trainer.should_stop and preemption.preempted
    assert trainer.global_step == 5
    saved = dirpath / "last-preempted.ckpt"
    assert torch.load(saved, weights_only=False)["global_step"] == 5
    # ModelCheckpoint did not write a newer last.ckpt while stopping: it is the step-4 one.
    assert torch.load(dirpath / "last.ckpt", weights_only=False)["global_step"] == 4
    assert by_mtime(dirpath)[-1] == "last-preempted.ckpt"

    resumed = fit(dirpath, 8, SlurmPreemption(), ckpt_path="last")
    assert resumed.ckpt_path == str(saved)
    assert resumed.global_step == 8
    assert by_mtime(dirpath)[-1] == "last.ckpt"  # afterwards ModelCheckpoint's is the newest


def by_mtime(directory: Path) -> list[str]:
    return [p.name for p in sorted(directory.iterdir(), key=lambda p: p.stat().st_mtime_ns)]


def test_needs_a_checkpoint_dirpath():
    trainer = tiny_trainer(2, enable_checkpointing=True, callbacks=[SlurmPreemption()])
    with pytest.raises(ValueError, match="needs a ModelCheckpoint callback with an explicit"):
        trainer.fit(LatentActionModule(tiny_spec(), cola=TINY_COLA), tiny_data(num_problems=8))
