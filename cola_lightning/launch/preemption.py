"""Checkpoint, requeue and stop when SLURM announces the end of a job (time limit or pre-emption).

SLURM sends a signal some time before it kills a job (`#SBATCH --signal=SIGUSR1@90`: SIGUSR1, 90 s
ahead). :class:`SlurmPreemption` turns that signal into a checkpoint that `--ckpt_path last` finds,
an `scontrol requeue`, and a clean stop; the requeued job then resumes at the same global step.
"""

from __future__ import annotations

import os
import shutil
import signal as _signal
import subprocess
import threading
from collections.abc import Mapping
from pathlib import Path

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn


def slurm_requeue_id(environ: Mapping[str, str] | None = None) -> str | None:
    """The id `scontrol requeue` needs for this job, or None outside SLURM.

    A task of a job array must be requeued as `<array job id>_<task id>`: its own SLURM_JOB_ID is
    a separate number, and requeueing the bare array id would requeue every task of the array.

    Args:
        environ: the environment to read (default: `os.environ`).
    """
    env = os.environ if environ is None else environ
    array_job, array_task = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
    if array_job and array_task:
        return f"{array_job}_{array_task}"
    return env.get("SLURM_JOB_ID") or None


def requeue_job(checkpoint_path: str | Path, environ: Mapping[str, str] | None = None) -> bool:
    """Runs `scontrol requeue` for this job; warns (and returns False) where that is impossible.

    Args:
        checkpoint_path: where the checkpoint was saved, named in the warnings so that a person
            can resubmit by hand.
        environ: the environment to read the job id and PATH from (default: `os.environ`).

    Returns:
        True if SLURM accepted the requeue.
    """
    env = os.environ if environ is None else environ
    by_hand = (
        f"The checkpoint was saved at {checkpoint_path}; the job must be resubmitted by hand "
        "(with `--ckpt_path last` it resumes from that checkpoint)."
    )
    job_id = slurm_requeue_id(env)
    if job_id is None:
        rank_zero_warn(f"Not running under SLURM (no SLURM_JOB_ID), nothing to requeue. {by_hand}")
        return False
    scontrol = shutil.which("scontrol", path=env.get("PATH", os.defpath))
    if scontrol is None:
        rank_zero_warn(f"`scontrol` is not on PATH: cannot requeue SLURM job {job_id}. {by_hand}")
        return False
    try:
        result = subprocess.run(
            [scontrol, "requeue", job_id],
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        rank_zero_warn(f"`scontrol requeue {job_id}` failed ({error}). {by_hand}")
        return False
    if result.returncode != 0:
        message = (result.stderr or result.stdout).strip()
        rank_zero_warn(f"`scontrol requeue {job_id}` failed: {message}. {by_hand}")
        return False
    rank_zero_info(f"Requeued SLURM job {job_id}; it resumes from {checkpoint_path}.")
    return True


def _signal_number(value: str | int) -> _signal.Signals:
    if isinstance(value, int) or str(value).isdigit():
        return _signal.Signals(int(value))
    name = str(value).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return _signal.Signals[name]
    except KeyError:
        raise ValueError(f"SlurmPreemption: unknown signal {value!r} (e.g. SIGUSR1)") from None


class SlurmPreemption(Callback):
    """Saves a resumable checkpoint, requeues the SLURM job and stops, on SLURM's warning signal.

    From YAML::

        trainer:
          callbacks:
            - class_path: lightning.pytorch.callbacks.ModelCheckpoint
              init_args: {dirpath: checkpoints/run, save_last: true}
            - class_path: cola_lightning.launch.SlurmPreemption

    `python -m cola_lightning.launch.slurm` adds this callback when the config lacks it, asks SLURM
    for the signal (`#SBATCH --signal=SIGUSR1@90`) and runs `fit --ckpt_path last`, so that a
    requeued job resumes. Outside SLURM, without the signal, the callback does nothing.

    How it works:

    * The signal handler only sets a flag: a checkpoint written from inside a handler can land in
      the middle of an optimizer step or a collective and deadlock or be inconsistent.
    * At the next optimizer-step boundary (`on_train_batch_end`) the ranks agree with
      `strategy.reduce_boolean_decision(flag, all=False)`: SLURM may signal only some of them,
      and every rank must take part in saving a sharded checkpoint.
    * The checkpoint is `<dirpath>/last-preempted.ckpt` in the first ModelCheckpoint's dirpath.
      `ckpt_path="last"` (Lightning 2.6, `_CheckpointConnector._parse_ckpt_path`) takes the
      newest file whose name starts with `last` in each ModelCheckpoint's dirpath, and is the
      only resolution the launcher relies on (`hpc_ckpt_*.ckpt` files are only read when no
      ckpt_path is given). A separate name keeps ModelCheckpoint's own `last.ckpt` bookkeeping
      intact. The ModelCheckpoints are then told that this step is saved (their private
      `_last_global_step_saved` and `_last_checkpoint_saved`, as in Lightning 2.6; the tests
      check the outcome), so that they do not write a newer `last.ckpt` while stopping: the
      pre-emption checkpoint stays the newest and is what resumes. An explicit dirpath is
      required: the default one lies inside the logger's version directory, which changes on
      every restart.
    * Then rank 0 runs `scontrol requeue <id>` (`<array job>_<task>` for job arrays), which kills
      and requeues the job, and `trainer.should_stop` is set. If `scontrol` is missing or the run
      is not a SLURM job, a warning names the checkpoint and says to resubmit by hand.

    * The handler is installed when the callback is built, not in `setup`: Lightning creates the
      logger's files, waits at a barrier and runs the data module's setup before any callback's
      `setup`, and a signal landing there would kill the process (its default action). A signal
      that arrives while the run starts is kept as the flag and acted on at the first step.

    Lightning's own SLURM auto-requeue checkpoints inside its SIGUSR1 handler, so it is switched
    off: `setup` sets `auto_requeue = False` on the trainer's `SLURMEnvironment`, and Lightning
    (`_SignalConnector.register_signal_handlers`, which runs after the setup hooks) leaves a
    signal that already has a handler alone. The equivalent trainer
    setting, for runs without this callback, is
    `plugins: [{class_path: lightning.pytorch.plugins.environments.SLURMEnvironment,
    init_args: {auto_requeue: false}}]`.

    When `should_stop` is set, Lightning may run the validation loop once more; under SLURM the
    requeue has already been issued and SLURM kills the job within seconds, which is harmless:
    everything is saved. Saving the checkpoint must fit in the signal's lead time (90 s).

    Args:
        signal: the signal SLURM sends (name or number); must match `#SBATCH --signal`.
        filename: checkpoint name without `.ckpt`; must start with `last` so that
            `--ckpt_path last` finds it.
        requeue: run `scontrol requeue` after saving; False only checkpoints and stops.
    """

    def __init__(
        self, signal: str | int = "SIGUSR1", filename: str = "last-preempted", requeue: bool = True
    ) -> None:
        if not filename.startswith(ModelCheckpoint.CHECKPOINT_NAME_LAST):
            raise ValueError(
                f"SlurmPreemption: filename {filename!r} must start with "
                f"{ModelCheckpoint.CHECKPOINT_NAME_LAST!r}, or `--ckpt_path last` will not find it"
            )
        self.signum = _signal_number(signal)
        self.filename = filename
        self.requeue = requeue
        self.checkpoint_path: str | None = None
        self.preempted = False
        self._received = False
        self._installed = False
        self._previous_handler = None
        self._install_handler()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        self.checkpoint_path = self._resolve_checkpoint_path(trainer)
        environment = getattr(trainer._accelerator_connector, "cluster_environment", None)
        if isinstance(environment, SLURMEnvironment):
            environment.auto_requeue = False
        self._install_handler()  # again: a previous fit's teardown restored the old handler

    def _resolve_checkpoint_path(self, trainer: L.Trainer) -> str:
        for callback in trainer.checkpoint_callbacks:
            # ModelCheckpoint resolves a missing dirpath only in its own setup, which Lightning
            # runs after this one (checkpoint callbacks are ordered last): None means "default".
            if isinstance(callback, ModelCheckpoint) and callback.dirpath is not None:
                return os.path.join(callback.dirpath, self.filename + callback.FILE_EXTENSION)
        raise ValueError(
            "SlurmPreemption needs a ModelCheckpoint callback with an explicit dirpath: "
            "`--ckpt_path last` only looks for last*.ckpt there, and the default dirpath changes "
            "with the logger version on every restart. Add to trainer.callbacks: "
            "{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
            "init_args: {dirpath: checkpoints/<run>, save_last: true}}"
        )

    def _install_handler(self) -> None:
        if self._installed:
            return
        if threading.current_thread() is not threading.main_thread():
            rank_zero_warn("SlurmPreemption: not in the main thread, no signal handler installed")
            return
        self._previous_handler = _signal.signal(self.signum, self._on_signal)
        self._installed = True

    def _on_signal(self, signum: int, frame: object) -> None:
        # Only a flag: anything heavier here could interrupt a collective or an optimizer step.
        self._received = True

    def _restore_handler(self) -> None:
        if self._installed:
            previous = self._previous_handler
            _signal.signal(self.signum, _signal.SIG_DFL if previous is None else previous)
            self._installed = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        # Mid gradient-accumulation is no step boundary: the partial gradients are not saved.
        if (batch_idx + 1) % trainer.accumulate_grad_batches:
            return
        # Every rank calls this at every step boundary (it is a collective), signalled or not.
        if not trainer.strategy.reduce_boolean_decision(self._received, all=False):
            return
        self._received = False
        self.preempt(trainer)

    def preempt(self, trainer: L.Trainer) -> None:
        """Saves the checkpoint on every rank, requeues from rank 0, and stops training."""
        if self.checkpoint_path is None:
            self.checkpoint_path = self._resolve_checkpoint_path(trainer)
        path = self.checkpoint_path
        step = trainer.global_step
        rank_zero_info(f"SlurmPreemption: signal received, saving {path} at step {step}")
        # Flush the logs first: after the requeue SLURM kills the job within seconds.
        for logger in trainer.loggers:
            logger.save()
        trainer.save_checkpoint(path)  # collective, ends with a barrier: complete on return
        self.preempted = True
        # While stopping, ModelCheckpoint would save last.ckpt again at this step (epoch end,
        # validation end, and on_train_end when it saved nothing yet); as the newer file it would
        # win `--ckpt_path last` over the pre-emption checkpoint. Tell it this step is saved.
        for callback in trainer.checkpoint_callbacks:
            if isinstance(callback, ModelCheckpoint):
                callback._last_global_step_saved = trainer.global_step
                callback._last_checkpoint_saved = path
        if trainer.is_global_zero:
            if self.requeue:
                requeue_job(path)
            else:
                rank_zero_warn(f"SlurmPreemption: requeue disabled; checkpoint saved at {path}")
        trainer.should_stop = True

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._restore_handler()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        # Lightning skips the teardown hooks when fit raises.
        self._restore_handler()
