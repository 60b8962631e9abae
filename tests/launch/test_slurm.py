"""The sbatch launcher: the script it writes, the configs it refuses, and real jobs on a real
single-node SLURM cluster (tests/launch/conftest.py): a 2-task DDP run, and a run that is sent
SIGUSR1 mid-training, checkpoints, requeues itself and resumes to the end."""

from __future__ import annotations

import glob
import shlex
import time
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cola_lightning.cli import main as cli_main
from cola_lightning.launch.slurm import PREEMPTION_CALLBACK, main
from tests.conftest import REPO

TEST_CONFIG = REPO / "configs/test/latent_actions.yaml"
SLURM_CONFIG = REPO / "configs/test/latent_actions_slurm.yaml"
CHECKPOINTS = Path("checkpoints/test_slurm/latent_actions")
RUNS = Path("runs/test_slurm/latent_actions")


def config_file(tmp_path: Path, base: Path = TEST_CONFIG, **trainer) -> Path:
    """A copy of `base` with trainer keys replaced (None removes the key)."""
    config = yaml.safe_load(base.read_text())
    for key, value in trainer.items():
        if value is None:
            config["trainer"].pop(key, None)
        else:
            config["trainer"][key] = value
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def launch(tmp_path: Path, monkeypatch, capsys, *args: str) -> tuple[str, list[str]]:
    """Runs the launcher in process from tmp_path; returns the script text and its srun args."""
    monkeypatch.chdir(tmp_path)
    main(list(args))
    script = Path(capsys.readouterr().out.split()[0])
    text = script.read_text()
    srun = [line for line in text.splitlines() if line.startswith("srun ")]
    assert len(srun) == 1, text
    return text, shlex.split(srun[0])[1:]


def test_gpu_script(tmp_path, monkeypatch, capsys):
    config = config_file(tmp_path, accelerator="gpu", devices=4, num_nodes=None)
    text, command = launch(
        tmp_path, monkeypatch, capsys,
        "--config", str(config), "--nodes", "2", "--gpus-per-node", "4", "--partition", "gpu",
        "--time", "24:00:00", "--account", "proj", "--job-name", "s1", "--output", "logs",
    )  # fmt: skip
    for line in (
        "#SBATCH --job-name=s1",
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=24:00:00",
        "#SBATCH --account=proj",
        "#SBATCH --signal=SIGUSR1@90",
        "#SBATCH --requeue",
        "#SBATCH --open-mode=append",
        f"#SBATCH --output={tmp_path}/logs/s1-%j.out",
        f"#SBATCH --chdir={tmp_path}",
    ):
        assert line in text.splitlines(), (line, text)
    assert "--cpus-per-task" not in text
    assert command[1:6] == ["-m", "cola_lightning", "fit", "--config", str(config)]
    assert command[6:8] == ["--trainer.num_nodes=2", "--trainer.devices=4"]
    # The config has no SlurmPreemption: the launcher adds it (which also turns off Lightning's
    # own auto-requeue), and the run resumes from the last checkpoint.
    assert f"--trainer.callbacks+={PREEMPTION_CALLBACK}" in command
    assert command[-2:] == ["--ckpt_path", "last"]


def test_cpu_array_script_with_fit_args(tmp_path, monkeypatch, capsys):
    config = config_file(tmp_path, base=SLURM_CONFIG)
    text, command = launch(
        tmp_path, monkeypatch, capsys,
        "--config", str(config), "--nodes", "1", "--gpus-per-node", "2", "--cpu",
        "--cpus-per-task", "3", "--array", "0-3", "--", "--trainer.max_steps=9",
    )  # fmt: skip
    assert "#SBATCH --gpus-per-node" not in text
    assert "#SBATCH --cpus-per-task=3" in text.splitlines()
    assert "#SBATCH --array=0-3" in text.splitlines()
    assert f"#SBATCH --output={tmp_path}/slurm/cola-config-%A_%a.out" in text.splitlines()
    assert not any(arg.startswith("--trainer.callbacks") for arg in command)  # already there
    assert command[-3:] == ["--trainer.max_steps=9", "--ckpt_path", "last"]


def test_signal_follows_the_callback_config(tmp_path, monkeypatch, capsys):
    config = yaml.safe_load(SLURM_CONFIG.read_text())
    config["trainer"]["callbacks"][1]["init_args"] = {"signal": "USR2"}
    path = tmp_path / "usr2.yaml"
    path.write_text(yaml.safe_dump(config))
    text, _ = launch(
        tmp_path, monkeypatch, capsys, "--config", str(path), "--nodes", "1",
        "--gpus-per-node", "2", "--cpu",
    )  # fmt: skip
    assert "#SBATCH --signal=SIGUSR2@90" in text.splitlines()


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")  # pytest's argv: expected
def test_added_callback_parses_in_the_cli(capsys):
    """`--trainer.callbacks+=...` appends to the config's list (parsing only, nothing built)."""
    with pytest.raises(SystemExit):
        cli_main(
            ["fit", "--config", str(TEST_CONFIG), f"--trainer.callbacks+={PREEMPTION_CALLBACK}"]
            + ["--ckpt_path", "last", "--print_config"]
        )
    printed = yaml.safe_load(capsys.readouterr().out)
    paths = [c["class_path"] for c in printed["trainer"]["callbacks"]]
    assert paths == ["lightning.pytorch.callbacks.ModelCheckpoint", PREEMPTION_CALLBACK]


@pytest.mark.parametrize(
    ("trainer", "flags", "message"),
    [
        ({"num_nodes": 2}, ["--nodes", "1", "--gpus-per-node", "1", "--cpu"],
         "trainer.num_nodes: 2 but --nodes is 1"),
        ({"devices": 4}, ["--nodes", "1", "--gpus-per-node", "2", "--cpu"],
         "trainer.devices: 4 but --gpus-per-node is 2"),
        ({"devices": [0, 1, 2]}, ["--nodes", "1", "--gpus-per-node", "2", "--cpu"],
         "trainer.devices: [0, 1, 2] but --gpus-per-node is 2"),
        ({"accelerator": "cpu"}, ["--nodes", "1", "--gpus-per-node", "1"],
         "accelerator: cpu but the script would request --gpus-per-node=1 GPUs: pass --cpu"),
        ({"accelerator": "gpu"}, ["--nodes", "1", "--gpus-per-node", "1", "--cpu"],
         "trainer.accelerator: gpu but --cpu requests no GPUs"),
        ({"callbacks": None}, ["--nodes", "1", "--gpus-per-node", "1", "--cpu"],
         "has no ModelCheckpoint with a dirpath"),
        ({}, ["--nodes", "1", "--gpus-per-node", "1", "--cpu", "--", "--trainer.devices=3"],
         "--trainer.devices=3 after `--`: set nodes and devices with --nodes / --gpus-per-node"),
    ],
)  # fmt: skip
def test_mismatches_are_refused(tmp_path, monkeypatch, trainer, flags, message):
    config = config_file(tmp_path, **trainer)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(config), *flags])
    assert message in str(exit_info.value)
    assert not (tmp_path / "slurm").exists()  # nothing written


def test_missing_and_malformed_configs(tmp_path):
    flags = ["--nodes", "1", "--gpus-per-node", "1", "--cpu"]
    with pytest.raises(SystemExit, match="config file not found: .*nope.yaml"):
        main(["--config", str(tmp_path / "nope.yaml"), *flags])
    bad = tmp_path / "bad.yaml"
    bad.write_text("trainer:\n  devices: [unclosed\n")
    with pytest.raises(SystemExit, match="bad.yaml is not valid YAML"):
        main(["--config", str(bad), *flags])


def test_submit_without_sbatch_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch there
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="`sbatch` is not on PATH, so --submit cannot submit"):
        main(["--config", str(SLURM_CONFIG), "--nodes", "1", "--gpus-per-node", "2", "--cpu"]
             + ["--submit"])  # fmt: skip
    assert (tmp_path / "slurm/cola-latent_actions_slurm.sbatch").is_file()


# --- real jobs ------------------------------------------------------------------------------


def logged_steps(logdir: Path, tag: str = "train/loss") -> list[int]:
    """The steps logged so far (none while the event file or the tag does not exist yet)."""
    files = glob.glob(str(logdir / "events.out.tfevents.*"))
    if not files:
        return []
    events = EventAccumulator(files[0])
    events.Reload()
    return [e.step for e in events.Scalars(tag)] if tag in events.Tags()["scalars"] else []


def scalars(logdir: Path, tag: str = "train/loss") -> list[int]:
    """The steps at which `tag` was logged in the one event file under logdir."""
    files = glob.glob(str(logdir / "events.out.tfevents.*"))
    assert len(files) == 1, files
    events = EventAccumulator(files[0])
    events.Reload()
    assert tag in events.Tags()["scalars"], events.Tags()["scalars"]
    return [event.step for event in events.Scalars(tag)]


def global_step(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["global_step"]


LAUNCH = ("--config", str(SLURM_CONFIG), "--nodes", "1", "--gpus-per-node", "2", "--cpu")


def test_two_task_job_completes(slurm_cluster, tmp_path):
    job_id = slurm_cluster.launch(tmp_path, *LAUNCH)
    job = slurm_cluster.wait(job_id, timeout=180)
    log = Path(job["StdOut"]).read_text()
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert job["NumTasks"] == "2"
    assert "All distributed processes registered. Starting with 2 processes" in log
    # First run: `--ckpt_path last` finds nothing, warns, and starts from scratch.
    assert 'ckpt_path="last") is set, but there is no last checkpoint available' in log
    assert scalars(tmp_path / RUNS / "version_0") == list(range(6))
    assert global_step(tmp_path / CHECKPOINTS / "last.ckpt") == 6


def test_preempted_job_checkpoints_requeues_and_resumes(slurm_cluster, tmp_path):
    max_steps = 300  # ~12 s of training on 2 cores: the signal lands mid-run
    job_id = slurm_cluster.launch(tmp_path, *LAUNCH, "--", f"--trainer.max_steps={max_steps}")
    first_events = tmp_path / RUNS / "version_0"
    deadline = time.monotonic() + 120
    # Training has started on both ranks once a step is logged (each step is a DDP collective).
    while not logged_steps(first_events):
        assert time.monotonic() < deadline, slurm_cluster.job(job_id)
        time.sleep(0.2)
    # Without --full/--batch, scancel signals every task of the job's steps (all srun ranks) but
    # not the batch shell, which SIGUSR1 would kill: the same delivery as `--signal=USR1@90`.
    slurm_cluster.run("scancel", "--signal=USR1", job_id)
    job = slurm_cluster.wait(job_id, timeout=240)
    log = Path(job["StdOut"]).read_text()
    assert job["JobState"] == "COMPLETED", log[-4000:]
    assert job["Restarts"] == "1", job

    preempted = tmp_path / CHECKPOINTS / "last-preempted.ckpt"
    stopped_at = global_step(preempted)
    assert 0 < stopped_at < max_steps
    assert f"Requeued SLURM job {job_id}" in log
    assert f"Restoring states from the checkpoint path at {preempted}" in log
    assert global_step(tmp_path / CHECKPOINTS / "last.ckpt") == max_steps
    # Two runs in the logs: steps 0..stopped_at-1, then the resumed run carries on from there.
    before, after = scalars(first_events), scalars(tmp_path / RUNS / "version_1")
    assert before[0] == 0 and before[-1] < stopped_at
    assert after[0] == stopped_at > 0
    assert after[-1] == max_steps - 1
