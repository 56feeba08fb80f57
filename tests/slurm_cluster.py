"""A real one-node SLURM cluster on this machine, for the tests of the job scripts.

:class:`SlurmCluster` runs Debian's SLURM 22.05 daemons as root, each in the foreground under the
test process: ``munged`` with its own key and socket, ``slurmctld`` and ``slurmd`` with a
``slurm.conf`` of their own (``SLURM_CONF``) on two free ports. Every key, state, pid and log file
lies under the cluster's folder; the folders that hold Unix sockets (munged's, and slurmd's spool,
where slurmstepd makes one per job step) lie in a short private temporary folder instead, because a
socket's path may not exceed 108 bytes and pytest's temporary paths grow with its run counter and
worker. The machine's own ``/etc/slurm`` and ``/run/munge`` are never used. :meth:`SlurmCluster.stop` cancels the jobs, stops the daemons by pid, kills any process a
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
import ipaddress
import itertools
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import pytest

from conftest import free_port

DAEMONS = ("munged", "slurmctld", "slurmd")
CLIENTS = ("sbatch", "scontrol", "scancel", "squeue", "sinfo", "srun")
PACKAGES = "slurmctld slurmd slurm-client munge"
NAMESPACE_TOOLS = ("ip", "nsenter", "unshare")
NODE_CPUS = 16
# Requeued jobs become eligible cred_expire + 1 s after the requeue (SLURM's minimum is 5).
CRED_EXPIRE_S = 5
# A job that ended (`scontrol requeue` makes a running job PENDING directly, without one of these).
FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
                "DEADLINE", "PREEMPTED"}
START_TIMEOUT_S = 60
# TwoNodeCluster: a node that does not answer slurmctld's pings for this long is DOWN (default 300 s).
SLURMD_TIMEOUT_S = 10
STOP_TIMEOUT_S = 60


def skip_reason(namespaces: bool = False) -> Optional[str]:
    """Why a cluster (with ``namespaces``: a :class:`TwoNodeCluster`) cannot run here, or ``None``."""
    missing = [name for name in (*DAEMONS, *CLIENTS) if shutil.which(name) is None
               and not Path("/usr/sbin", name).is_file()]
    if missing:
        return (f"SLURM is not installed ({', '.join(missing)} missing): run `make slurm` "
                f"(apt-get install {PACKAGES})")
    if os.geteuid() != 0:
        return "the SLURM tests run slurmd, which launches jobs, as root: run them as root"
    tools = [name for name in NAMESPACE_TOOLS if shutil.which(name) is None] if namespaces else []
    if tools:
        return f"the two-node cluster needs {', '.join(tools)} (iproute2, util-linux)"
    return None


def started(cluster_class: type, root: Path) -> Iterator["SlurmCluster"]:
    """For a module fixture (``yield from``): skip where the cluster cannot run; else start one of
    ``cluster_class`` rooted in ``root``, yield it and stop it afterwards, whatever happened."""
    reason = skip_reason(namespaces=cluster_class is TwoNodeCluster)
    if reason:
        pytest.skip(reason)
    cluster = cluster_class(root)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


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
        # Made by start() (tempfile.mkdtemp: private to this user), deleted by stop().
        self.sockets: Optional[Path] = None
        self.controller_addr = "127.0.0.1"  # where slurmd and the clients reach slurmctld
        self.nodes: List[str] = [self.host]
        self._daemons: Dict[str, subprocess.Popen] = {}
        # The clients' and jobs' environment: this cluster only, no SLURM_* of an enclosing job.
        self.env = {name: value for name, value in os.environ.items() if not name.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(self.conf)

    def _settings(self) -> Dict[str, object]:
        """``slurm.conf``'s settings, before the node and partition lines."""
        return {
            "ClusterName": "cloobtest",
            "SlurmctldHost": f"{self.host}({self.controller_addr})",
            "SlurmctldPort": free_port(),
            "SlurmdPort": free_port(),
            "AuthType": "auth/munge",
            "CredType": "cred/munge",
            "AuthInfo": f"socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}",
            "SlurmUser": "root",
            "SlurmdUser": "root",
            "StateSaveLocation": self.root / "state",
            # %n: the node's name, so that the slurmd of each node keeps its own files.
            "SlurmdSpoolDir": self.sockets / "spool" / "%n",
            "SlurmctldPidFile": self.root / "slurmctld.pid",
            "SlurmdPidFile": self.root / "slurmd-%n.pid",
            "SlurmctldLogFile": self.logs / "slurmctld.log",
            "SlurmdLogFile": self.logs / "slurmd-%n.log",
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

    def _node_lines(self) -> List[str]:
        """The ``NodeName=`` lines: this machine, on loopback."""
        return [f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} State=UNKNOWN"]

    @property
    def munge_socket(self) -> Path:
        """munged's socket, which the clients and daemons authenticate through."""
        return self.sockets / "munge.socket"

    def _write_config(self) -> None:
        self.sockets = Path(tempfile.mkdtemp(prefix="cloob-slurm-"))
        for folder in (self.root / "munge", self.root / "state", self.logs, *(self.sockets / "spool" / node
                                                                           for node in self.nodes)):
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        lines = [f"{name}={value}" for name, value in self._settings().items()]
        lines += [*self._node_lines(), "PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP"]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start_daemon(self, name: str, *args: str, key: Optional[str] = None,
                      wrapper: Sequence[str] = ()) -> None:
        """Start daemon ``name`` in the foreground, under ``wrapper`` (a command that execs the rest);
        ``key`` names it among the daemons (default: ``name``)."""
        # A session of its own: a Ctrl-C in the terminal reaches pytest, whose teardown cancels the
        # jobs before it stops the daemons.
        key = key or name
        with open(self.logs / f"{key}.stdout", "w") as out:
            self._daemons[key] = subprocess.Popen(
                [*wrapper, _executable(name), *args], cwd=self.root, env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_die_with_parent)

    def _start_slurmds(self) -> None:
        self._start_daemon("slurmd", "-D", "-f", str(self.conf))

    def _nodes_idle(self) -> bool:
        states = self.command("sinfo", "-h", "-N", "-o", "%N %t", check=False).split()
        return sorted(states[0::2]) == sorted(self.nodes) and set(states[1::2]) == {"idle"}

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
            self._start_slurmds()
            self._wait(self._nodes_idle, "the nodes to be idle")
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

    def submit(self, script: Optional[Path], *args: str, options: Sequence[str] = (), cwd: Path,
               env: Optional[Dict[str, str]] = None, nice: int = 0) -> int:
        """``sbatch [options] script args`` from ``cwd`` with the cluster's environment plus ``env``; the job id.

        ``script`` ``None``: the job is ``options``' ``--wrap``. The job's processes run ``nice`` steps
        nicer than the test process.
        """
        script_argv = [str(script), *args] if script is not None else list(args)
        result = subprocess.run(["nice", "-n", str(nice), "sbatch", "--parsable", *options, *script_argv],
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

    def wait_completed(self, job_id: int, restarts: int = 0, timeout: float = 900) -> Dict[str, str]:
        """Wait for the job's end; fail, with its output, unless it COMPLETED with status 0 after ``restarts`` requeues."""
        fields = self.wait_final(job_id, timeout)
        assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), \
            f"{fields}\n{self.job_output(fields)}"
        return fields

    @staticmethod
    def job_output(fields: Dict[str, str], chars: int = 4000) -> str:
        """The end of the job's output file."""
        path = Path(fields.get("StdOut", ""))
        return f"--- {path} ---\n{path.read_text(errors='replace')[-chars:]}" if path.is_file() else ""

    def leftovers(self) -> List[int]:
        """Processes of this cluster still alive: job steps (cwd here) and job processes (our SLURM_CONF)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) == os.getpid():
                continue
            try:
                cwd = Path(os.readlink(proc / "cwd"))
                inside = any(cwd.is_relative_to(folder) for folder in (self.root, self.sockets) if folder)
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
            try:
                self._kill_leftovers()
            finally:
                if self.sockets is not None:
                    shutil.rmtree(self.sockets, ignore_errors=True)

    def _cancel_jobs(self) -> None:
        jobs = self.command("squeue", "-h", "-o", "%A", check=False).split()
        if jobs:
            self.command("scancel", *jobs, check=False)
            deadline = time.monotonic() + STOP_TIMEOUT_S
            while self.command("squeue", "-h", "-o", "%A", check=False).split() and time.monotonic() < deadline:
                time.sleep(0.5)

    def _stop_daemons(self) -> None:
        # In the reverse order of their start: the slurmds, slurmctld, then munged, which they authenticate with.
        for name in reversed(list(self._daemons)):
            process = self._daemons.pop(name)
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def _kill_leftovers(self) -> None:
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (alive := self.leftovers()) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive:
            raise RuntimeError(f"SLURM test cluster: processes {alive} survived SIGKILL")


# Clusters made by this test process, for unique namespace and link names.
_CLUSTERS = itertools.count()


class TwoNodeCluster(SlurmCluster):
    """Two SLURM nodes, ``node1`` and ``node2``, each a network namespace of its own on this machine.

    Each node is a network namespace (``ip netns``) with one veth link to a bridge in the machine's
    own namespace, an address of its own on a private /24 that no route of the machine overlaps,
    and, in the UTS and mount namespaces its ``slurmd`` runs in (and with it every job process
    there), its node name as hostname and a ``hosts`` file of the cluster over ``/etc/hosts``. So the
    node names resolve to the nodes' addresses, as on a real cluster: ``scontrol show hostnames`` in
    the scripts, gloo (which binds to its hostname's address) and torchrun's c10d rendezvous need no
    special case. ``slurmctld`` and ``munged`` run in the machine's namespace; slurmctld listens on
    the bridge's address, the nodes reach munged through its socket file. Nothing leaves loopback,
    the bridge and the veth links.

    One departure more than :class:`SlurmCluster`'s, to keep the lost-node test short:
    ``SlurmdTimeout`` = :data:`SLURMD_TIMEOUT_S` (default 300 s), after which slurmctld marks a
    node that does not answer DOWN and fails (and requeues) its jobs.

    :meth:`stop` also deletes the namespaces and links, and fails if any of them remains.
    """

    NODES = ("node1", "node2")

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        token = f"{os.getpid():x}{next(_CLUSTERS)}"[-9:]  # link names have at most 15 characters
        self.nodes = list(self.NODES)
        self.namespaces = {node: f"cloob-{token}-{node}" for node in self.nodes}
        self.bridge = f"cb{token}"
        self.links = {node: f"cv{token}{index}" for index, node in enumerate(self.nodes)}
        subnet = _free_subnet()
        self.controller_addr = str(subnet[1])
        self.addresses = {node: str(subnet[index + 2]) for index, node in enumerate(self.nodes)}
        self.prefix = subnet.prefixlen
        self.hosts_file = root / "hosts"

    def _settings(self) -> Dict[str, object]:
        return {**super()._settings(), "SlurmdTimeout": SLURMD_TIMEOUT_S}

    def _node_lines(self) -> List[str]:
        return [f"NodeName={node} NodeAddr={address} CPUs={NODE_CPUS} State=UNKNOWN"
                for node, address in self.addresses.items()]

    def on_node(self, node: str, argv: Sequence[str]) -> List[str]:
        """``argv`` as a command run on ``node``: in its network namespace, with its hostname and hosts file."""
        # sh execs argv in place: a pid given to this command is argv's.
        script = 'hostname "$0" && mount --bind "$1" /etc/hosts && shift && exec "$@"'
        # nsenter, not `ip netns exec`, which mounts a /sys of its own (without the cgroup folder slurmd checks).
        return ["nsenter", f"--net=/run/netns/{self.namespaces[node]}", "unshare", "--uts", "--mount", "sh", "-c",
                script, node, str(self.hosts_file), *argv]

    def _start_slurmds(self) -> None:
        for node in self.nodes:
            self._start_daemon("slurmd", "-D", "-f", str(self.conf), key=f"slurmd-{node}",
                               wrapper=self.on_node(node, []))

    def start(self) -> None:
        """Create the namespaces and links, then start the daemons (:meth:`SlurmCluster.start`)."""
        try:
            self._create_network()
        except BaseException:
            self._delete_network()
            raise
        super().start()

    def _create_network(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.hosts_file.write_text("".join(
            f"{address} {name}\n" for name, address in
            [("localhost", "127.0.0.1"), (self.host, self.controller_addr), *self.addresses.items()]))
        _ip("link", "add", self.bridge, "type", "bridge")
        _ip("addr", "add", f"{self.controller_addr}/{self.prefix}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")
        for node, namespace in self.namespaces.items():
            _ip("netns", "add", namespace)
            _ip("link", "add", self.links[node], "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", self.links[node], "master", self.bridge, "up")
            _ip("-n", namespace, "addr", "add", f"{self.addresses[node]}/{self.prefix}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")

    def stop(self) -> None:
        """:meth:`SlurmCluster.stop`, then delete the namespaces and links; fail if one remains."""
        try:
            super().stop()
        finally:
            self._delete_network()
        left = self.network_leftovers()
        if left:
            raise RuntimeError(f"SLURM test cluster: {left} survived the cleanup")

    def _delete_network(self) -> None:
        for name in (*self.links.values(), self.bridge):  # deleting one end of a veth deletes both
            _ip("link", "del", name, check=False)
        for namespace in self.namespaces.values():
            _ip("netns", "del", namespace, check=False)

    def network_leftovers(self) -> List[str]:
        """The namespaces and links of this cluster that still exist."""
        namespaces = _ip("netns", "list", check=False).split()
        links = [line.split(":")[1].strip().split("@")[0] for line in _ip("-o", "link", check=False).splitlines()]
        return [name for name in (*self.namespaces.values(), *self.links.values(), self.bridge)
                if name in namespaces or name in links]

    def set_link(self, node: str, up: bool) -> None:
        """Connect ``node`` to the cluster's network, or cut it off (its packets are dropped, nothing is reset)."""
        _ip("link", "set", self.links[node], "up" if up else "down")

    def processes(self, node: str, job_id: int, step: Optional[int] = None) -> List[int]:
        """The pids of job ``job_id``'s processes on ``node``, or of its step ``step``'s tasks (by their environment)."""
        marker = {f"SLURM_JOB_ID={job_id}".encode(), f"SLURMD_NODENAME={node}".encode()}
        if step is not None:
            marker.add(f"SLURM_STEP_ID={step}".encode())
        found = []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and marker <= set((proc / "environ").read_bytes().split(b"\0")):
                    found.append(int(proc.name))
            except OSError:  # gone meanwhile
                continue
        return found


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped by a signal (``T`` in /proc/PID/stat); False once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    except (OSError, IndexError):
        return False


def _ip(*args: str, check: bool = True) -> str:
    """``ip ARGS``; its stdout."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise RuntimeError(f"ip {' '.join(args)}: exit {result.returncode}\n{result.stderr}")
    return result.stdout


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 in 10.128.0.0/9 that none of the machine's routes and addresses overlaps."""
    taken = [ipaddress.ip_network(line.split()[0], strict=False)
             for line in _ip("-4", "-o", "route", "show", "table", "all").splitlines()
             if line.split() and line.split()[0] not in ("default", "broadcast", "local", "unreachable")]
    taken += [ipaddress.ip_interface(line.split()[3]).network for line in _ip("-4", "-o", "addr").splitlines()]
    candidates = random.Random().sample(range(128 * 256, 256 * 256), 64)
    for index in candidates:
        subnet = ipaddress.ip_network(f"10.{index // 256}.{index % 256}.0/24")
        if not any(subnet.overlaps(other) for other in taken):
            return subnet
    raise RuntimeError("SLURM test cluster: no free /24 in 10.128.0.0/9")


# ---------------------------------------------------------------------------------------------
# Jobs of the scripts in scripts/, as the SLURM test modules submit and follow them

SCRIPTS = Path(__file__).parent.parent / "scripts"
# The scripts' #SBATCH --signal=USR1@180; slurmctld checks time limits (and sends those warnings) every 30 s.
WARN_S = 180
PERIODIC_S = 30


@dataclass
class Job:
    """A submitted job and the run folder its training writes."""

    id: int
    run: Path


def submit_job(cluster: SlurmCluster, script: str, args: Sequence[str], run: Path, options: Sequence[str],
               env: Optional[Dict[str, str]] = None, submit_dir: Optional[Path] = None, nice: int = 0) -> Job:
    """sbatch ``scripts/script`` from ``submit_dir``; the job works (and writes its output file) in the run's parent.

    The training's ranks rendezvous on a port free here (``MASTER_PORT``), compute on one thread each.
    """
    job_env = {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), **(env or {})}
    job_id = cluster.submit(SCRIPTS / script, *args, options=[*options, f"--chdir={run.parent}"],
                            cwd=submit_dir or run.parent, env=job_env, nice=nice)
    return Job(job_id, run)


def read_text(path: Path) -> str:
    """The file's text so far ('' before it exists)."""
    return path.read_text(errors="replace") if path.is_file() else ""


def run_seconds(fields: Dict[str, str]) -> int:
    """A job's ``RunTime`` ([days-]hh:mm:ss) in seconds."""
    days, _, clock = fields["RunTime"].rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def usr1_stops(output: str) -> List[int]:
    """The epoch step of each "Preempted: SIGUSR1" line the ranks wrote to a job's output (in order).

    A rank that learnt of the signal from another one writes "signal on another rank" instead.
    """
    return [int(step) for step in re.findall(r"Preempted: SIGUSR1: step \d+ \(epoch 0, step (\d+)\)", output)]


class Timeline:
    """What a test saw, in seconds since it started the clock; printed at the end."""

    def __init__(self) -> None:
        self.start, self.events = time.monotonic(), []

    def __call__(self, event: str) -> None:
        self.events.append((time.monotonic() - self.start, event))

    def __str__(self) -> str:
        return "\n".join(f"{seconds:7.1f} s  {event}" for seconds, event in self.events)


class PreemptedJob:
    """Waits on the attempts of a preempted job of ``world_size`` ranks, failing early if it ends."""

    def __init__(self, cluster: SlurmCluster, job: Job, timeline: Timeline, world_size: int,
                 timeout: float = 900) -> None:
        self.cluster, self.job, self.timeline = cluster, job, timeline
        self.world_size, self.timeout = world_size, timeout
        self.out_log = job.run / "out.log"

    @classmethod
    def release(cls, cluster: SlurmCluster, job: Job, world_size: int, timeout: float, how: str) -> "PreemptedJob":
        """Release the held ``job`` (submitted ``how``) and start the clock of its timeline."""
        cluster.command("scontrol", "release", str(job.id))
        timeline = Timeline()
        timeline(f"job {job.id} released ({how})")
        return cls(cluster, job, timeline, world_size, timeout)

    def wait(self, what: str, predicate: Callable[[Dict[str, str]], bool]) -> Dict[str, str]:
        def reached(fields: Dict[str, str]) -> bool:
            if fields["JobState"] in FINAL_STATES:
                pytest.fail(f"job {self.job.id} ended while waiting for {what}: {fields}\n"
                            f"{self.cluster.job_output(fields)}")
            return predicate(fields)

        return self.cluster.wait_job(self.job.id, reached, what, self.timeout)

    def warn_by_time_limit(self, steps: int, batch: int, full_limit_min: int) -> Path:
        """Preempt attempt 1 by SLURM's time-limit warning once it trained ``steps`` steps of ``batch``
        samples (global); returns the job's output file once every rank saved and stopped.

        The ranks are paused (SIGSTOP) so that the run cannot end before slurmctld's next 30 s check;
        SLURM sends SIGCONT before the warning signal. The time limit is cut to the longest whole
        minute whose warning is due at that check and restored to ``full_limit_min`` after the stop.
        """
        pattern = re.compile(r"Train Epoch: 0 \[\s*(\d+)/")
        fields = self.wait(f"attempt 1 to train {steps} steps", lambda _: any(
            int(n) >= steps * batch for n in pattern.findall(read_text(self.out_log))))
        output = Path(fields["StdOut"])
        self.timeline(f"attempt 1 trained {steps} steps (StartTime {fields['StartTime']})")
        self.cluster.command("scancel", "--signal=STOP", str(self.job.id))
        elapsed = run_seconds(self.cluster.job(self.job.id))
        # end - now <= 180 s + one 30 s check period: more than 150 s left for the warning, the stop
        # and the requeue.
        minutes = (WARN_S + PERIODIC_S + elapsed) // 60
        self.cluster.command("scontrol", "update", f"JobId={self.job.id}", f"TimeLimit={minutes}")
        self.timeline(f"ranks paused (scancel --signal=STOP); time limit cut to {minutes} min at {elapsed} s "
                      "of run time")
        self.wait_for_stop(1, output)
        # Restored before the requeue (the ranks take seconds to exit, a requeued job 6 s to start):
        # the next attempts run under the full limit.
        self.cluster.command("scontrol", "update", f"JobId={self.job.id}", f"TimeLimit={full_limit_min}")
        return output

    def wait_for_stop(self, stops: int, output: Path) -> None:
        """Until every rank logged stop number ``stops`` (the checkpoint is written)."""
        self.wait("the ranks to save and stop",
                  lambda _: len(usr1_stops(read_text(output))) >= self.world_size * stops)
        self.timeline(f"all {self.world_size} ranks logged 'Preempted: SIGUSR1: step "
                      f"{usr1_stops(read_text(output))[-1]}', exit 75")

    def wait_for_requeue(self, restarts: int) -> None:
        fields = self.wait("the requeue", lambda fields: fields["Restarts"] == str(restarts))
        self.timeline(f"requeued by the script: {fields['JobState']}, reason {fields['Reason']}, "
                      f"EligibleTime {fields['EligibleTime']}")

    def wait_for_resume(self, attempt: int, log_chars: int) -> None:
        """Until the attempt's rank 0 logged the resume (signal handlers are installed on every rank by then)."""
        fields = self.wait(f"attempt {attempt} to start", lambda fields: fields["JobState"] == "RUNNING")
        self.timeline(f"attempt {attempt} RUNNING (StartTime {fields['StartTime']})")
        self.wait(f"attempt {attempt} to resume",
                  lambda _: "Resuming inside epoch 0 after" in read_text(self.out_log)[log_chars:])
        self.timeline(f"attempt {attempt} logged 'Resuming inside epoch 0' (--resume latest)")
