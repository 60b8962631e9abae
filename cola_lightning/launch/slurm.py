"""Write (and optionally submit) an sbatch script running a stage on SLURM, resumable after requeue.

    python -m cola_lightning.launch.slurm --config configs/x.yaml --nodes 2 --gpus-per-node 8 \\
        --partition gpu --time 24:00:00 --submit [-- --trainer.max_steps=1000 ...]

The script runs `srun python -m cola_lightning fit --config X --trainer.num_nodes=N
--trainer.devices=G --ckpt_path last`: one task per device, and a requeued job resumes from the
newest `last*.ckpt` (on the first run there is none: Lightning warns and starts fresh). SLURM sends
SIGUSR1 90 s before the time limit; `cola_lightning.launch.SlurmPreemption` (added to the run when
the config lacks it) then checkpoints, requeues the job and stops. Arguments after `--` are passed
to `fit` unchanged. `python` is the interpreter that runs the launcher (`--python` to change it),
so the job uses the same environment on a shared filesystem. The tasks of a job array all run the
same command and share the config's checkpoint and log directories.
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

PREEMPTION_CALLBACK = "cola_lightning.launch.preemption.SlurmPreemption"
SIGNAL_LEAD_S = 90
# Set only by the launcher's own flags, so that the script and the trainer cannot disagree.
RESERVED_OVERRIDES = ("--trainer.num_nodes", "--trainer.devices", "--trainer.accelerator")


class LaunchError(Exception):
    """A config or command line that would make the job fail or disagree with its script."""


@dataclass
class JobSpec:
    """What the sbatch script asks SLURM for and runs."""

    config: Path
    nodes: int
    gpus_per_node: int
    cpu: bool = False
    cpus_per_task: int | None = None
    partition: str | None = None
    time: str | None = None
    account: str | None = None
    job_name: str | None = None
    output: Path = Path("slurm")
    array: str | None = None
    python: str = sys.executable
    fit_args: list[str] = field(default_factory=list)


def load_config(path: Path) -> dict:
    """Reads the YAML config, refusing a missing file, malformed YAML or a non-mapping."""
    if not path.is_file():
        raise LaunchError(f"config file not found: {path}")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise LaunchError(f"{path} is not valid YAML:\n{error}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise LaunchError(f"{path} must be a YAML mapping (trainer:, model:, data:)")
    return config


def _device_count(devices: object) -> int | None:
    """The number of processes per node a `trainer.devices` value asks for; None: any ("auto")."""
    if isinstance(devices, bool):
        return None
    if isinstance(devices, int):
        return None if devices == -1 else devices
    if isinstance(devices, list):
        return len(devices)
    if isinstance(devices, str):
        text = devices.strip()
        if text.lstrip("-").isdigit():
            return _device_count(int(text))
        if "," in text:  # "0,1" lists device indices
            return len([part for part in text.split(",") if part.strip()])
    return None  # "auto": the --trainer.devices override decides


def _callbacks(trainer: dict) -> list:
    callbacks = trainer.get("callbacks") or []
    return callbacks if isinstance(callbacks, list) else [callbacks]


def _class_path(callback: object) -> str:
    return str(callback.get("class_path", "")) if isinstance(callback, dict) else str(callback)


def _init_args(callback: object) -> dict:
    return (callback.get("init_args") or {}) if isinstance(callback, dict) else {}


def preemption_signal(trainer: dict) -> str:
    """The signal the config's SlurmPreemption waits for (SIGUSR1 unless configured)."""
    for callback in _callbacks(trainer):
        if _class_path(callback).endswith("SlurmPreemption"):
            value = str(_init_args(callback).get("signal", "SIGUSR1")).upper()
            return value if value.isdigit() or value.startswith("SIG") else f"SIG{value}"
    return "SIGUSR1"


def check_config(spec: JobSpec, config: dict) -> None:
    """Refuses a script whose resources disagree with the trainer config, naming both values."""
    if spec.nodes < 1 or spec.gpus_per_node < 1:
        raise LaunchError("--nodes and --gpus-per-node must be at least 1")
    for arg in spec.fit_args:
        if arg.split("=")[0] in RESERVED_OVERRIDES:
            raise LaunchError(
                f"{arg} after `--`: set nodes and devices with --nodes / --gpus-per-node (and "
                "the accelerator in the config), so that the sbatch script requests the same"
            )
    trainer = config.get("trainer") or {}
    where = f"{spec.config}"
    num_nodes = trainer.get("num_nodes")
    if num_nodes is not None and int(num_nodes) != spec.nodes:
        raise LaunchError(
            f"{where} sets trainer.num_nodes: {num_nodes} but --nodes is {spec.nodes}: make them "
            f"equal (or remove trainer.num_nodes from the config; the script sets it)"
        )
    devices = _device_count(trainer.get("devices"))
    if devices is not None and devices != spec.gpus_per_node:
        raise LaunchError(
            f"{where} sets trainer.devices: {trainer.get('devices')} but --gpus-per-node is "
            f"{spec.gpus_per_node}: make them equal (or remove trainer.devices from the config)"
        )
    accelerator = str(trainer.get("accelerator") or "auto").lower()
    if accelerator == "cpu" and not spec.cpu:
        raise LaunchError(
            f"{where} sets trainer.accelerator: cpu but the script would request "
            f"--gpus-per-node={spec.gpus_per_node} GPUs: pass --cpu to run "
            f"{spec.gpus_per_node} CPU processes per node, or set trainer.accelerator: gpu"
        )
    if spec.cpu and accelerator in ("gpu", "cuda", "mps", "tpu"):
        raise LaunchError(
            f"{where} sets trainer.accelerator: {accelerator} but --cpu requests no GPUs: "
            "drop --cpu, or set trainer.accelerator: cpu"
        )
    checkpoints = [c for c in _callbacks(trainer) if _class_path(c).endswith("ModelCheckpoint")]
    if not any(_init_args(c).get("dirpath") for c in checkpoints):
        raise LaunchError(
            f"{where} has no ModelCheckpoint with a dirpath in trainer.callbacks: a requeued job "
            "could not find its checkpoint (`--ckpt_path last` looks only there). Add "
            "{class_path: lightning.pytorch.callbacks.ModelCheckpoint, "
            "init_args: {dirpath: checkpoints/<run>, save_last: true}}"
        )


def fit_command(spec: JobSpec, config: dict) -> list[str]:
    """The command every task runs (one per device)."""
    command = [spec.python, "-m", "cola_lightning", "fit", "--config", str(spec.config)]
    command += [f"--trainer.num_nodes={spec.nodes}", f"--trainer.devices={spec.gpus_per_node}"]
    trainer = config.get("trainer") or {}
    if not any(_class_path(c).endswith("SlurmPreemption") for c in _callbacks(trainer)):
        # jsonargparse appends to the config's callback list with `+=`.
        command.append(f"--trainer.callbacks+={PREEMPTION_CALLBACK}")
    return [*command, *spec.fit_args, "--ckpt_path", "last"]


def sbatch_script(spec: JobSpec, config: dict) -> str:
    """The sbatch script text: resources, signal and requeue settings, and the srun line."""
    name = spec.job_name or f"cola-{spec.config.stem}"
    log = spec.output / (f"{name}-%A_%a.out" if spec.array else f"{name}-%j.out")
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={spec.nodes}",
        f"#SBATCH --ntasks-per-node={spec.gpus_per_node}",  # Lightning wants one task per device
    ]
    if spec.cpu:
        lines.append(f"#SBATCH --cpus-per-task={spec.cpus_per_task or 1}")
    else:
        lines.append(f"#SBATCH --gpus-per-node={spec.gpus_per_node}")
        if spec.cpus_per_task:
            lines.append(f"#SBATCH --cpus-per-task={spec.cpus_per_task}")
    for option, value in (
        ("partition", spec.partition),
        ("time", spec.time),
        ("account", spec.account),
        ("array", spec.array),
    ):
        if value:
            lines.append(f"#SBATCH --{option}={value}")
    lines += [
        # SlurmPreemption checkpoints and requeues on this signal, sent to the srun tasks only.
        f"#SBATCH --signal={preemption_signal(config.get('trainer') or {})}@{SIGNAL_LEAD_S}",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",  # a requeued run appends to the same log
        f"#SBATCH --output={log}",
        f"#SBATCH --chdir={Path.cwd()}",  # relative paths in the config resolve as here
        "",
        'echo "cola_lightning: job ${SLURM_JOB_ID} restart ${SLURM_RESTART_COUNT:-0} on'
        ' ${SLURM_JOB_NODELIST} at $(date -Is)"',
    ]
    if spec.cpu:
        lines.append("export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}")
    lines.append("srun " + shlex.join(fit_command(spec, config)))
    return "\n".join(lines) + "\n"


def write_script(spec: JobSpec) -> Path:
    """Checks the config against the resources asked for, writes the script, returns its path."""
    config = load_config(spec.config)
    check_config(spec, config)
    spec.output.mkdir(parents=True, exist_ok=True)
    path = spec.output / f"{spec.job_name or f'cola-{spec.config.stem}'}.sbatch"
    path.write_text(sbatch_script(spec, config))
    return path


def submit(script: Path) -> str:
    """Submits with `sbatch --parsable`; returns the job id."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise LaunchError(
            f"`sbatch` is not on PATH, so --submit cannot submit. The script is written: run "
            f"`sbatch {script}` on a machine with the SLURM client tools (Debian: slurm-client)"
        )
    result = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True)
    if result.returncode != 0:
        raise LaunchError(f"sbatch {script} failed: {(result.stderr or result.stdout).strip()}")
    return result.stdout.strip().split(";")[0]  # "<id>;<cluster>" on federated clusters


def parse_args(argv: list[str]) -> tuple[JobSpec, bool]:
    """The job spec and whether to submit, from the command line."""
    if "--" in argv:  # everything after `--` goes to `fit` unchanged
        split = argv.index("--")
        argv, fit_args = argv[:split], argv[split + 1 :]
    else:
        fit_args = []
    parser = argparse.ArgumentParser(
        prog="python -m cola_lightning.launch.slurm",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, required=True, help="stage YAML config")
    parser.add_argument("--nodes", type=int, required=True)
    parser.add_argument("--gpus-per-node", type=int, required=True, help="= tasks per node")
    parser.add_argument("--cpu", action="store_true", help="CPU-only: no --gpus-per-node request")
    parser.add_argument("--cpus-per-task", type=int, help="(--cpu: default 1)")
    parser.add_argument("--partition")
    parser.add_argument("--time", help="time limit, e.g. 24:00:00")
    parser.add_argument("--account")
    parser.add_argument("--job-name")
    parser.add_argument("--output", type=Path, default=Path("slurm"), help="script and log dir")
    parser.add_argument("--array", help="job array spec, e.g. 0-3")
    parser.add_argument("--python", default=sys.executable, help="interpreter on the nodes")
    parser.add_argument("--submit", action="store_true", help="also run sbatch")
    args = parser.parse_args(argv)
    return JobSpec(
        # Absolute paths: the job may start in another directory and on another machine.
        config=args.config.resolve(),
        nodes=args.nodes,
        gpus_per_node=args.gpus_per_node,
        cpu=args.cpu,
        cpus_per_task=args.cpus_per_task,
        partition=args.partition,
        time=args.time,
        account=args.account,
        job_name=args.job_name,
        output=args.output.resolve(),
        array=args.array,
        python=args.python,
        fit_args=fit_args,
    ), args.submit


def main(argv: list[str] | None = None) -> None:
    spec, do_submit = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        script = write_script(spec)
        print(script)
        if do_submit:
            print(submit(script))
    except LaunchError as error:
        raise SystemExit(f"cola_lightning.launch.slurm: {error}") from None


if __name__ == "__main__":
    main()
