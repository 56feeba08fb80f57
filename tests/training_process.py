"""``python -m training.main`` processes for the tests, forked from a process that has imported it.

Importing torch, OpenCLIP and their dependencies takes 8-10 s of CPU on the 2-core test machine, more
than most test runs train. :func:`start` therefore forks each run from multiprocessing's fork server,
which imports :mod:`training.main` once (``set_forkserver_preload``). The child is a process of its
own, started the way the entry point starts: ``sys.argv`` set, the given environment, stdout and
stderr to the log file, optionally a session of its own, then ``sys.exit(training.main.main())`` with
the interpreter's exit handlers run. It has a pid to signal, and its exit status is that of the entry
point (``-N`` when killed by signal N), as with ``subprocess.Popen``.

What a fork cannot reproduce stays a real ``python -m training.main`` subprocess: launches through
torchrun (whose workers are its own children) and the tests of the command line itself.
"""
import atexit
import multiprocessing
import os
import subprocess
import sys
from typing import Mapping, Optional, Sequence

CONTEXT = multiprocessing.get_context("forkserver")
# The suite's one fork server (the process-group workers of test_distributed_loss and
# test_reliability_faults come from it too) imports these once.
# It holds no threads, so forking it is safe. Python 3.11's fork server ignores the parent's
# sys.path: only modules that site-packages or PYTHONPATH reach can be preloaded.
# training.main imports OpenCLIP's training code and its hooks when it runs (a missing [train] extra
# is then a one-line error), so those are preloaded by name.
FORKSERVER_PRELOAD = ["pytest", "training.main", "training.openclip_hooks"]
CONTEXT.set_forkserver_preload(FORKSERVER_PRELOAD)


def _run(argv: Sequence[str], log_file: str, env: Mapping[str, str], new_session: bool) -> None:
    """The child: what ``python -m training.main ARGV > LOG_FILE 2>&1`` does after its imports."""
    if new_session:
        os.setsid()
    # A fork-server child defaults to starting its own children (data loader workers) the same way;
    # the entry point run as a program uses the platform's default.
    multiprocessing.set_start_method(None, force=True)
    os.environ.clear()
    os.environ.update(env)
    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)

    import torch
    import training.main

    sys.argv = [training.main.__file__, *argv]
    # The fork server's libraries read the environment when it imported them; apply the run's.
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", os.cpu_count() or 1)))
    try:
        status = training.main.main(list(argv))
    finally:
        # multiprocessing ends its children with os._exit, which skips these (tensorboard flushes there).
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    sys.exit(status)


class TrainingProcess:
    """A forked ``training.main`` run with the ``subprocess.Popen`` methods the tests use."""

    def __init__(self, argv: Sequence[str], log_file: os.PathLike, env: Mapping[str, str], new_session: bool):
        self.args = ["training.main", *argv]
        self._process = CONTEXT.Process(target=_run, args=(list(argv), os.fspath(log_file), dict(env), new_session))
        self._process.start()
        self.pid = self._process.pid

    @property
    def returncode(self) -> Optional[int]:
        return self._process.exitcode

    def poll(self) -> Optional[int]:
        return self._process.exitcode

    def wait(self, timeout: Optional[float] = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return self._process.exitcode

    def send_signal(self, signum: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signum)

    def kill(self) -> None:
        self._process.kill()


def start(argv: Sequence[str], log_file: os.PathLike, env: Mapping[str, str],
          start_new_session: bool = False) -> TrainingProcess:
    """Start ``training.main argv`` in a forked child (see the module docstring)."""
    return TrainingProcess(argv, log_file, env, start_new_session)
