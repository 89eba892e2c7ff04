"""A real one-node SLURM cluster for the tests, on loopback, in a folder of its own.

`start_cluster(folder)` installs Debian's `slurmctld`/`slurmd` when they are missing (apt-get,
as root), writes `slurm.conf` and `gres.conf` into `folder`, starts both daemons in the
foreground (`-D`) on free ports and waits until the node is idle. `Cluster.stop()` cancels every
job of this cluster and stops the two daemons by their PIDs; nothing else is touched, so a
SLURM that someone else started on this machine keeps running. Should the test process die
without calling it, the daemons get SIGTERM from the kernel (PR_SET_PDEATHSIG).

The cluster: one node with 2 CPUs, 4000 MB and two fake GPUs (`Gres=gpu:2`, devices
`/dev/null` and `/dev/zero`, so `--gres=gpu:1` schedules and SLURM sets CUDA_VISIBLE_DEVICES to
the job's own GPU, 0 or 1); two partitions, `cpu` (default) and `gpu`; memory is enforced
(`jobacct_gather/linux` every second with `OverMemoryKill`: a job over its `--mem` is killed
whole, with SIGKILL); finished jobs are logged by `jobcomp/filetxt` and read with `sacct -c`.
"""

from __future__ import annotations

import ctypes
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

NODE = "aiod1"
PARTITIONS = {"cpu": "cpu", "gpu": "gpu"}
NODE_MEMORY_MB = 4000

SLURM_CONF = """\
ClusterName=aiodtest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/none
CredType=cred/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
MpiDefault=none
GresTypes=gpu
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=1
JobAcctGatherParams=OverMemoryKill
JobCompType=jobcomp/filetxt
JobCompLoc={dir}/jobcomp.log
StateSaveLocation={dir}/state
SlurmdSpoolDir={dir}/spool
SlurmctldPidFile={dir}/slurmctld.pid
SlurmdPidFile={dir}/slurmd.pid
SlurmctldLogFile={dir}/slurmctld.log
SlurmdLogFile={dir}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName={node} NodeAddr=127.0.0.1 NodeHostname={host} CPUs=2 RealMemory={memory} Gres=gpu:2 State=UNKNOWN
PartitionName={cpu} Nodes={node} Default=YES MaxTime=INFINITE State=UP
PartitionName={gpu} Nodes={node} MaxTime=INFINITE State=UP
"""

GRES_CONF = "NodeName={node} Name=gpu File=/dev/null\nNodeName={node} Name=gpu File=/dev/zero\n"


@dataclass
class Cluster:
    folder: Path
    env: dict[str, str]                    # SLURM_CONF for the client commands (sbatch, squeue, ...)
    pids: list[int] = field(default_factory=list)
    procs: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A SLURM client command (`squeue`, `scancel`, `sacct`, `scontrol`) against this cluster."""
        proc = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60)
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr}")
        return proc

    def finished_jobs(self) -> dict[str, dict[str, str]]:
        """Finished jobs by job ID, as `sacct -c` reads them from the jobcomp/filetxt log."""
        fields = ["JobID", "JobName", "Partition", "Account", "State", "ExitCode", "Start", "End", "WorkDir"]
        out = self.run("sacct", "-c", "-n", "-P", "-o", ",".join(fields)).stdout
        rows = [dict(zip(fields, line.split("|"))) for line in out.splitlines() if line.strip()]
        jobs = {row["JobID"]: row for row in rows}
        for job_id, array_id in self.array_elements().items():  # also under the id Nextflow knows
            if job_id in jobs:
                jobs[array_id] = jobs[job_id]
        return jobs

    def array_elements(self) -> dict[str, str]:
        """Job ID -> 'ARRAYID_INDEX' of every finished job array element. Slurm 22.05's `sacct -c`
        cannot print the array fields that its jobcomp log records, so they are read there."""
        log = self.folder / "jobcomp.log"
        text = log.read_text() if log.exists() else ""
        found = re.findall(r"^JobId=(\d+) .* ArrayJobId=(\d+) ArrayTaskId=(\d+) ", text, re.M)
        return {job_id: f"{array}_{index}" for job_id, array, index in found}

    def queue(self) -> list[tuple[str, str, str, Path]]:
        """(job ID, job name, state, work dir) of every job not finished yet."""
        out = self.run("squeue", "-h", "-o", "%i|%j|%T|%Z", check=False).stdout
        rows = [line.split("|") for line in out.splitlines() if line.strip()]
        return [(job_id, name, state, Path(workdir)) for job_id, name, state, workdir in rows]

    def log(self) -> str:
        return "\n".join((self.folder / f"{name}.log").read_text()[-3000:]
                         for name in ("slurmctld", "slurmd") if (self.folder / f"{name}.log").exists())

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop its daemons by PID (TERM, then KILL)."""
        if self.procs and self.procs[0].poll() is None:  # slurmctld still answers
            self.run("scancel", "--user", pwd.getpwuid(os.getuid()).pw_name, check=False)
            deadline = time.time() + 30
            while self.queue() and time.time() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)


def install_slurm() -> None:
    """Debian's slurmctld and slurmd (22.05 on Debian 12), when missing."""
    if shutil.which("slurmctld") and shutil.which("slurmd") and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        raise RuntimeError("slurmctld/slurmd are missing and installing them needs root: apt-get install slurmctld slurmd")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "slurmctld", "slurmd", "slurm-client"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=True)
        proc = subprocess.run(install, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"apt-get install slurmctld slurmd failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def _die_with_parent() -> None:
    """In the daemon, before exec: SIGTERM when the test process dies, even if it is killed."""
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_cluster(folder: Path, timeout: float = 90) -> Cluster:
    """Start a fresh cluster in `folder`; the caller must call `stop()` (use try/finally)."""
    install_slurm()
    folder = Path(folder)
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    ctld_port, slurmd_port = free_ports(2)
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=socket.gethostname(), ctld_port=ctld_port, slurmd_port=slurmd_port,
                                      dir=folder, node=NODE, memory=NODE_MEMORY_MB, **PARTITIONS))
    (folder / "gres.conf").write_text(GRES_CONF.format(node=NODE))
    cluster = Cluster(folder=folder, env={"SLURM_CONF": str(conf)})
    env = {**os.environ, **cluster.env}
    try:
        for command in (["slurmctld", "-D", "-c", "-i", "-f", str(conf)],
                        ["slurmd", "-D", "-N", NODE, "-f", str(conf)]):
            with open(folder / f"{command[0]}.out", "w") as out:
                proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        start_new_session=True, preexec_fn=_die_with_parent)
            cluster.procs.append(proc)
            cluster.pids.append(proc.pid)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in cluster.procs):
                raise RuntimeError(f"a SLURM daemon exited at start:\n{cluster.log()}")
            state = cluster.run("sinfo", "-h", "-N", "-n", NODE, "-o", "%t", check=False).stdout.split()
            if state and state[0] == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"node {NODE} not idle after {timeout} s:\n{cluster.log()}")
    except BaseException:
        cluster.stop()
        raise
