"""A real single-node SLURM cluster (slurmctld + slurmd, SLURM 22.05 from Debian) for the tests.

No munge: `AuthType=auth/none` and `CredType=cred/none`. Everything lives in a tmp dir, on free
ports, so nothing touches /etc/slurm or a cluster the machine may already belong to.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

BINARIES = ("slurmctld", "slurmd", "sbatch", "srun", "scontrol", "scancel", "sinfo", "squeue")
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"}
SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def require_slurm() -> dict[str, str]:
    """Paths of the SLURM binaries; a FAILED test (never a skip) naming the fix when missing."""
    found = {name: shutil.which(name, path=SEARCH_PATH) for name in BINARIES}
    missing = sorted(name for name, path in found.items() if path is None)
    if missing:
        pytest.fail(
            f"SLURM binaries not found: {', '.join(missing)}. Run the CI install, "
            "`bash scripts/install.sh` (it apt-installs slurmctld slurmd slurm-client)",
            pytrace=False,
        )
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_line(slurmd: str) -> str:
    """This machine as slurmd sees it (`slurmd -C`): name, CPUs, sockets, memory."""
    out = subprocess.run([slurmd, "-C"], capture_output=True, text=True, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("NodeName="))
    # The address by IP: the tests must not depend on the hostname resolving.
    return f"{line} NodeAddr=127.0.0.1 State=UNKNOWN"


def write_conf(root: Path, slurmd: str) -> Path:
    node = _node_line(slurmd)
    host = re.match(r"NodeName=(\S+)", node).group(1)
    for name in ("state", "spool"):
        (root / name).mkdir(parents=True, exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(
        f"""ClusterName=colatest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/none
CredType=cred/none
# A requeued job waits cred_expire + 1 s before it may start again (default 120 s).
AuthInfo=cred_expire=5
SlurmUser=root
SlurmdUser=root
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SchedulerType=sched/builtin
# The main scheduling pass runs every second, not every minute: a requeued job starts promptly.
SchedulerParameters=sched_interval=1
JobRequeue=1
MinJobAge=3600
ReturnToService=2
KillWait=5
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
{node}
PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
    )
    return conf


@dataclass
class Cluster:
    """A running test cluster: its config and the environment that reaches it."""

    conf: Path
    env: dict[str, str]
    bins: dict[str, str]

    def run(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(
            [self.bins.get(args[0], args[0]), *args[1:]],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr}{result.stdout}")
        return result.stdout

    def job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job` as key=value pairs (JobState, Restarts, StdOut...)."""
        return dict(re.findall(r"(\w+)=(\S*)", self.run("scontrol", "show", "job", job_id)))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Waits for a final JobState; fails with the job's log on a timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if job.get("JobState") in FINAL_STATES:
                return job
            time.sleep(1)
        self.run("scancel", job_id, check=False)
        log = Path(job.get("StdOut", "")).read_text() if job.get("StdOut") else ""
        raise AssertionError(f"job {job_id} not finished after {timeout} s: {job}\n{log[-4000:]}")

    def launch(self, cwd: Path, *args: str) -> str:
        """Runs the launcher with --submit in `cwd`; returns the job id it prints."""
        result = subprocess.run(
            [sys.executable, "-m", "cola_lightning.launch.slurm", "--submit", *args],
            cwd=cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        script, job_id = result.stdout.split()
        assert Path(script).is_file()
        return job_id


def job_env(conf: Path) -> dict[str, str]:
    """The submitting (and so the jobs') environment: no pytest or outer-SLURM variables."""
    drop = ("PYTEST", "LOCAL_RANK", "SLURM_", "MASTER_", "WORLD_SIZE", "RANK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        SLURM_CONF=str(conf),
        PATH=SEARCH_PATH,
        PYTHONPATH=str(REPO),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
        MASTER_ADDR="127.0.0.1",  # single node: gloo need not resolve the hostname
    )
    return env


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """Starts slurmctld and slurmd on a private config, waits for the node, stops them after."""
    bins = require_slurm()
    root = tmp_path_factory.mktemp("slurm")
    conf = write_conf(root, bins["slurmd"])
    cluster = Cluster(conf, job_env(conf), bins)
    daemons = []
    for name in ("slurmctld", "slurmd"):
        log = open(root / f"{name}.out", "w")  # noqa: SIM115 (closed at teardown)
        daemons.append(
            (
                subprocess.Popen(
                    [bins[name], "-D", "-f", str(conf)],
                    env=cluster.env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # a Ctrl-C in pytest must not reach them first
                ),
                log,
            )
        )
    try:
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline and state != "idle":
            time.sleep(0.5)
            state = cluster.run("sinfo", "-h", "-o", "%t", check=False).strip()
        if state != "idle":
            logs = "".join((root / f"{n}.out").read_text()[-2000:] for n in ("slurmctld", "slurmd"))
            pytest.fail(f"the test SLURM node did not become idle (state {state!r}):\n{logs}")
        yield cluster
    finally:
        # Jobs first: slurmstepd outlives slurmd, and its tasks would outlive the tests.
        cluster.run("scancel", f"--user={getpass.getuser()}", check=False)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and cluster.run("squeue", "-h", check=False).strip():
            time.sleep(0.5)
        for process, log in reversed(daemons):
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            log.close()
