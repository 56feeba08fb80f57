"""A real one-node SLURM cluster on this machine, for the tests of the job scripts.

:class:`SlurmCluster` runs Debian's SLURM 22.05 daemons as root, each in the foreground under the
test process: ``munged`` with its own key and socket, ``slurmctld`` and ``slurmd`` with a
``slurm.conf`` of their own (``SLURM_CONF``) on two free ports. Every key, state, spool, pid and log
file lies under the cluster's folder; the machine's own ``/etc/slurm`` and ``/run/munge`` are never
used. :meth:`SlurmCluster.stop` cancels the jobs, stops the daemons by pid, kills any process a
job left behind and fails if one survives.

The configuration is a plain single-node one (``proctrack/linuxproc``, ``task/none``, no
accounting, ``select/cons_tres``, ``KillOnBadExit=1``) with two departures from a production
cluster, both to keep the suite fast:

- ``AuthInfo=cred_expire=5``: SLURM holds a requeued job back for the job credential's lifetime
  plus one second (``EligibleTime``, reason ``BeginTime``); the default lifetime is 120 s, so
  requeued jobs wait about 2 minutes on a real cluster, here 6 seconds.
- The node declares :data:`NODE_CPUS` CPUs (``SlurmdParameters=config_overrides``), more than the
  machine has, so that the jobs of a test module run side by side instead of queueing; a job runs
  at the nice value it was submitted with (``PropagatePrioProcess=1``), so that a test can let the
  jobs it waits on go first.
"""
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import pytest

from conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"
NODE_CPUS = 16
# Requeued jobs become eligible cred_expire + 1 s after the requeue (SLURM's minimum is 5).
CRED_EXPIRE_S = 5
# A job that ended (`scontrol requeue` makes a running job PENDING directly, without one of these).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
START_TIMEOUT_S = 60
STOP_TIMEOUT_S = 60


def skip_reason() -> Optional[str]:
    """Why a cluster cannot run here, or ``None``."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None
               and not Path("/usr/sbin", name).is_file()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): run `make slurm` "
                f"(apt-get install {PACKAGES})")
    if os.geteuid() != 0:
        return "the SLURM tests run slurmd, which launches jobs, as root: run them as root"
    return None


def _executable(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _die_with_parent() -> None:
    """In a daemon about to start: SIGTERM when the test process dies, even by SIGKILL (Linux prctl)."""
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def parse_job(text: str) -> Dict[str, str]:
    """``scontrol show job -o`` output as ``{field: value}`` (values with spaces, e.g. ``Command``, rejoined)."""
    fields: Dict[str, str] = {}
    key = None
    for token in text.split():
        name, sep, value = token.partition("=")
        if sep and re.fullmatch(r"[A-Za-z][\w/:]*", name):
            key, fields[name] = name, value
        elif key is not None:
            fields[key] += " " + token
    return fields


class SlurmCluster:
    """One SLURM node (this machine, ``hostname -s``) with one partition, rooted in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.logs = root / "log"
        self.host = socket.gethostname().split(".")[0]
        self.munge_socket = root / "munge" / "munge.socket"
        self._daemons: Dict[str, subprocess.Popen] = {}
        # The clients' and jobs' environment: this cluster only, no SLURM_* of an enclosing job.
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(self.conf)

    def _write_config(self) -> None:
        for folder in ("munge", "state", "spool", "log"):
            (self.root / folder).mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        settings = {
            "ClusterName": "cloobtest",
            "SlurmctldHost": f"{self.host}(127.0.0.1)",
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": self.root / "state",
            "SlurmdSpoolDir": self.root / "spool",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd.pid",
            "SlurmctldLogFile": self.logs / "slurmctld.log",
            "SlurmdLogFile": self.logs / "slurmd.log",
            "ProctrackType": "proctrack/linuxproc",
            "TaskPlugin": "task/none",
            "JobAcctGatherType": "jobacct_gather/none",
            "AccountingStorageType": "accounting_storage/none",
            "SelectType": "select/cons_tres",
            "SelectTypeParameters": "CR_CPU",
            "SlurmdParameters": "config_overrides",
            "PropagatePrioProcess": 1,
            "MpiDefault": "none",
            "KillOnBadExit": 1,  # as on many production clusters: the job scripts must cope with it
            "MailProg": "/bin/true",
            "ReturnToService": 2,
            "MinJobAge": 3600,  # finished jobs stay visible to `scontrol show job` for the tests' checks
            # Schedule pending jobs every second (default 60 s): a requeued job starts once eligible.
            "SchedulerParameters": "sched_interval=1",
        }
        lines = [f"{name}={value}" for name, value in settings.items()]
        lines += [f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} State=UNKNOWN",
                  "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemon(self, name: str, *args: str) -> None:
        # A session of its own: a Ctrl-C in the terminal reaches pytest, whose teardown cancels the
        # jobs before it stops the daemons.
        with open(self.logs / f"{name}.stdout", "w") as out:
            self._daemons[name] = subprocess.Popen(
                [_executable(name), *args], cwd=self.root, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent)

    def start(self) -> None:
        """Write the configuration, start munged, slurmctld and slurmd; return once the node is idle."""
        self._write_config()
        try:
            # --force: munged refuses root otherwise; the socket's folder is private to root here.
            self._start_daemon("munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={self.root / 'munge' / 'munge.key'}",
                               f"--pid-file={self.root / 'munge' / 'munged.pid'}",
                               f"--seed-file={self.root / 'munge' / 'munged.seed'}",
                               f"--log-file={self.logs / 'munged.log'}")
            self._wait(self.munge_socket.exists, "munged's socket")
            self._start_daemon("slurmctld", "-D", "-i", "-f", str(self.conf))
            self._start_daemon("slurmd", "-D", "-f", str(self.conf))
            self._wait(lambda: self.command("sinfo", "-h", "-o", "%t", check=False).strip() == "idle",
                       "the node to be idle")
        except BaseException:
            self.stop()
            raise

    def _wait(self, predicate: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not predicate():
            dead = [name for name, process in self._daemons.items() if process.poll() is not None]
            if dead or time.monotonic() > deadline:
                raise RuntimeError(f"SLURM test cluster: {'exited: ' + ', '.join(dead) if dead else 'timed out'} "
                                   f"waiting for {what}\n{self.log_tails()}")
            time.sleep(0.2)

    def log_tails(self, chars: int = 2000) -> str:
        """The end of every daemon log, for failure messages."""
        return "\n".join(f"--- {path.name} ---\n{path.read_text(errors='replace')[-chars:]}"
                         for path in sorted(self.logs.glob("*")) if path.is_file())

    def command(self, *argv: str, check: bool = True, timeout: float = 60) -> str:
        """Run a SLURM client against this cluster; its stdout (stderr joins it in the error of a failure)."""
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return result.stdout

    def submit(self, script: Path, *args: str, options: Sequence[str] = (), cwd: Path,
               env: Optional[Dict[str, str]] = None, nice: int = 0) -> int:
        """``sbatch [options] script args`` from ``cwd`` with the cluster's environment plus ``env``; the job id.

        The job's processes run ``nice`` steps nicer than the test process.
        """
        result = subprocess.run(["nice", "-n", str(nice), "sbatch", "--parsable", *options, str(script), *args],
                                cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        if result.returncode:
            raise RuntimeError(f"sbatch {script}: exit {result.returncode}\n{result.stdout}{result.stderr}")
        return int(result.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> Dict[str, str]:
        """The job's fields as ``scontrol show job`` gives them (also for MinJobAge after it ended)."""
        return parse_job(self.command("scontrol", "show", "job", "-o", str(job_id)))

    def wait_job(self, job_id: int, predicate: Callable[[Dict[str, str]], bool], what: str,
                 timeout: float = 900) -> Dict[str, str]:
        """Poll the job until ``predicate(fields)`` holds; fail with the job's output and the logs on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            fields = self.job(job_id)
            if predicate(fields):
                return fields
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout} s waiting for job {job_id}: {what}\n{fields}\n"
                            f"{self.job_output(fields)}\n{self.log_tails()}")
            time.sleep(0.2)

    def wait_final(self, job_id: int, timeout: float = 900) -> Dict[str, str]:
        """Wait until the job has ended for good (a final state); its fields."""
        return self.wait_job(job_id, lambda fields: fields["JobState"] in FINAL_STATES, "a final state", timeout)

    @staticmethod
    def job_output(fields: Dict[str, str], chars: int = 4000) -> str:
        """The end of the job's output file."""
        path = Path(fields.get("StdOut", ""))
        return f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}" if path.is_file() else ""

    def _leftovers(self) -> List[int]:
        """Processes of this cluster still alive: job steps (cwd here) and job processes (our SLURM_CONF)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                inside = Path(os.readlink(proc / "cwd")).is_relative_to(self.root)
                if inside or marker in (proc / "environ").read_bytes().split(b"\0"):
                    found.append(int(proc.name))
            except (OSError, ValueError):  # gone meanwhile, or a kernel thread
                continue
        return found

    def stop(self) -> None:
        """Cancel every job, stop the daemons, kill what jobs left behind; fail if a process survives."""
        try:
            if "slurmctld" in self._daemons and self._daemons["slurmctld"].poll() is None:
                self._cancel_jobs()
        finally:
            self._stop_daemons()
            self._kill_leftovers()

    def _cancel_jobs(self) -> None:
        jobs = self.command("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.command("scancel", *jobs, check=False)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.command("squeue", "-h", "-o", "%A", check=False).split() and time.monotonic() < deadline:
                time.sleep(0.5)

    def _stop_daemons(self) -> None:
        for name in reversed(DAEMONS):  # slurmd, slurmctld, then munged, which they authenticate with
            process = self._daemons.pop(name, None)
            if process is None:
                continue
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _kill_leftovers(self) -> None:
        for pid in self._leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (alive := self._leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive:
            raise RuntimeError(f"SLURM test cluster: processes {alive} survived SIGKILL")
