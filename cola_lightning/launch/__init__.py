"""SLURM support: the sbatch launcher (`python -m cola_lightning.launch.slurm`) and the preemption
callback that checkpoints, requeues and lets `--ckpt_path last` resume."""

from cola_lightning.launch.preemption import SlurmPreemption, requeue_job, slurm_requeue_id

__all__ = ["SlurmPreemption", "requeue_job", "slurm_requeue_id"]
