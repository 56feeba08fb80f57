"""The SLURM job scripts run by a real SLURM: a one-node cluster on this machine (:mod:`slurm_cluster`).

Every job is a real ``sbatch`` of a script in scripts/ running the tiny model on real Fashion-MNIST
images on CPU; the jobs of the module are submitted together and run side by side:

- ``train_slurm.sbatch``, 2 tasks (``srun``, gloo), trains to the end: the reference run.
- The same run, stopped twice inside its epoch and requeued by the script each time: first by
  SLURM's time-limit warning (``#SBATCH --signal=USR1@180``, once the test shortened the job's time
  limit), then by ``scancel --batch --signal=USR1`` to the batch script. Each time both ranks save
  the step and exit 75 through ``srun``, the script runs ``scontrol requeue``, and the next attempt
  resumes with ``--resume latest``; the final weights equal the reference's bit for bit, and the
  job's output file keeps the record of every attempt.
- A job whose training fails ends FAILED with the training's exit status, without a requeue.
- ``yfcc15m.sbatch`` (2 tasks, webdataset shards) and ``cc3m_rn50.sh`` (1 task, with validation),
  submitted from the repository root with their recipe flags overridden down to a tiny run, go
  through ``train_slurm.sbatch`` and train.
"""
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import pytest
import torch

from conftest import TINY_MODEL, free_port, small_csv_argv, training_argv
from slurm_cluster import FINAL_STATES, SlurmCluster, skip_reason
from training.reliability import RESUME_KEY

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).parent.parent
SCRIPTS = REPO / "scripts"
WORLD_SIZE = 2
BATCH_SIZE = 16  # per rank (small_csv_argv)
STEPS = 512 // (WORLD_SIZE * BATCH_SIZE)  # one epoch of small_csv's 512 images
TIME_LIMIT_MIN = 30
WARN_S = 180  # the scripts' --signal=USR1@180
PERIODIC_S = 30  # slurmctld checks time limits, and sends the --signal warnings, every 30 s
TIMEOUT_S = 900
# The preemption job's attempts run one after the other and wait on SLURM in between; the other jobs
# run nicer, on the CPU time those attempts leave.
BACKGROUND_NICE = 10


def _cpu_job(tasks: int) -> List[str]:
    """sbatch options replacing the scripts' 4 GPU tasks of 8 CPUs per node."""
    return [f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", f"--time={TIME_LIMIT_MIN}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> SlurmCluster:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@dataclass
class Job:
    """A submitted job and the run folder its training writes."""

    id: int
    run: Path


def _submit(cluster: SlurmCluster, script: str, args: Sequence[str], run: Path, options: Sequence[str],
            env: Optional[Dict[str, str]] = None, submit_dir: Optional[Path] = None,
            nice: int = BACKGROUND_NICE) -> Job:
    """sbatch ``script`` from ``submit_dir``; the job works (and writes its output file) in the run's parent."""
    job_env = {"PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port()), **(env or {})}
    job_id = cluster.submit(SCRIPTS / script, *args, options=[*options, f"--chdir={run.parent}"],
                            cwd=submit_dir or run.parent, env=job_env, nice=nice)
    return Job(job_id, run)


@pytest.fixture(scope="module")
def jobs(cluster, tmp_path_factory, fashion_mnist_data, tiny_model_config) -> Dict[str, Job]:
    """Every job of the module, submitted at once; the preemption job is held until its test releases it."""
    logs = tmp_path_factory.mktemp("slurm_jobs")
    data = fashion_mnist_data
    one_epoch = ("--epochs", "1")
    recipe_run = ("--batch-size", str(BATCH_SIZE), "--epochs", "1", "--warmup", "2")
    shards = data["shards"]
    shard_pattern = str(shards[0].parent / ("train-{000000..%06d}.tar" % (len(shards) - 1)))
    yfcc = f"yfcc15m-{TINY_MODEL}"  # the recipe's --name
    return {
        "reference": _submit(cluster, "train_slurm.sbatch", small_csv_argv(logs, "reference", data, *one_epoch),
                             logs / "reference", _cpu_job(WORLD_SIZE)),
        "preempted": _submit(cluster, "train_slurm.sbatch", small_csv_argv(logs, "preempted", data, *one_epoch),
                             logs / "preempted", [*_cpu_job(WORLD_SIZE), "--hold"], nice=0),
        "failing": _submit(cluster, "train_slurm.sbatch",
                           training_argv(logs, "failing", "--train-data", str(logs / "missing.csv")),
                           logs / "failing", _cpu_job(1)),
        # The recipes find train_slurm.sbatch via SLURM_SUBMIT_DIR: submitted from the repository root.
        "yfcc": _submit(cluster, "yfcc15m.sbatch", training_argv(logs, yfcc, *recipe_run), logs / yfcc,
                        [*_cpu_job(WORLD_SIZE), "--nodes=1"],
                        {"TRAIN_DATA": shard_pattern, "TRAIN_NUM_SAMPLES": "512", "MODEL": TINY_MODEL}, REPO),
        "cc3m": _submit(cluster, "cc3m_rn50.sh", training_argv(logs, "cc3m", *recipe_run), logs / "cc3m",
                        _cpu_job(1), {"TRAIN_DATA": str(data["small_csv"]), "VAL_DATA": str(data["val_csv"])}, REPO),
    }


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


def _params(run: Path) -> Dict[str, str]:
    return dict(re.findall(r"^(\w+): (.*)$", _read(run / "params.txt"), flags=re.MULTILINE))


def _final_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)


def _wait_completed(cluster: SlurmCluster, job: Job, restarts: int = 0) -> Dict[str, str]:
    fields = cluster.wait_final(job.id, TIMEOUT_S)
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("COMPLETED", "0:0", str(restarts)), \
        f"{fields}\n{cluster.job_output(fields)}"
    return fields


def _run_seconds(fields: Dict[str, str]) -> int:
    """``RunTime`` ([days-]hh:mm:ss) in seconds."""
    days, _, clock = fields["RunTime"].rpartition("-")
    hours, minutes, seconds = (int(part) for part in clock.split(":"))
    return ((int(days or 0) * 24 + hours) * 60 + minutes) * 60 + seconds


def _stops(output: str) -> List[int]:
    """The step of each "Preempted" line the ranks wrote to the job's output (in order)."""
    return [int(step) for step in re.findall(r"Preempted: SIGUSR1: step \d+ \(epoch 0, step (\d+)\)", output)]


class Timeline:
    """What the preemption test saw, in seconds since the job was released; printed at the end."""

    def __init__(self) -> None:
        self.start, self.events = time.monotonic(), []

    def __call__(self, event: str) -> None:
        self.events.append((time.monotonic() - self.start, event))

    def __str__(self) -> str:
        return "\n".join(f"{seconds:7.1f} s  {event}" for seconds, event in self.events)


class PreemptedJob:
    """Waits on the attempts of the preemption job, failing early if it ends."""

    def __init__(self, cluster: SlurmCluster, job: Job, timeline: Timeline) -> None:
        self.cluster, self.job, self.timeline = cluster, job, timeline
        self.out_log = job.run / "out.log"

    def wait(self, what: str, predicate) -> Dict[str, str]:
        def reached(fields: Dict[str, str]) -> bool:
            if fields["JobState"] in FINAL_STATES:
                pytest.fail(f"job {self.job.id} ended while waiting for {what}: {fields}\n"
                            f"{self.cluster.job_output(fields)}")
            return predicate(fields)

        return self.cluster.wait_job(self.job.id, reached, what, TIMEOUT_S)

    def wait_for_stop(self, stops: int, output: Path) -> None:
        """Until both ranks logged stop number ``stops`` (the checkpoint is written)."""
        self.wait("the ranks to save and stop", lambda _: len(_stops(_read(output))) >= WORLD_SIZE * stops)
        self.timeline(f"both ranks logged 'Preempted: SIGUSR1: step {_stops(_read(output))[-1]}', exit 75")

    def wait_for_requeue(self, restarts: int) -> None:
        fields = self.wait("the requeue", lambda fields: fields["Restarts"] == str(restarts))
        self.timeline(f"requeued by the script: {fields['JobState']}, reason {fields['Reason']}, "
                      f"EligibleTime {fields['EligibleTime']}")

    def wait_for_resume(self, attempt: int, log_chars: int) -> None:
        """Until the attempt's rank 0 logged the resume (signal handlers are installed on every rank by then)."""
        fields = self.wait(f"attempt {attempt} to start", lambda fields: fields["JobState"] == "RUNNING")
        self.timeline(f"attempt {attempt} RUNNING (StartTime {fields['StartTime']})")
        self.wait(f"attempt {attempt} to resume",
                  lambda _: "Resuming inside epoch 0 after" in _read(self.out_log)[log_chars:])
        self.timeline(f"attempt {attempt} logged 'Resuming inside epoch 0' (--resume latest)")


def test_preempted_job_saves_exits_75_is_requeued_and_resumes_to_the_uninterrupted_weights(cluster, jobs):
    job, reference = jobs["preempted"], jobs["reference"]
    cluster.command("scontrol", "release", str(job.id))
    timeline = Timeline()
    timeline(f"job {job.id} released (submitted held: sbatch --hold scripts/train_slurm.sbatch)")
    attempts = PreemptedJob(cluster, job, timeline)

    # 1. SLURM's time-limit warning. Once the ranks trained 2 steps they are paused (SIGSTOP), so the
    # run cannot end before slurmctld's next 30 s check; SLURM sends SIGCONT before the warning signal.
    pattern = re.compile(r"Train Epoch: 0 \[\s*(\d+)/")
    fields = attempts.wait("attempt 1 to train 2 steps", lambda _: any(
        int(n) >= 2 * WORLD_SIZE * BATCH_SIZE for n in pattern.findall(_read(attempts.out_log))))
    output = Path(fields["StdOut"])
    timeline(f"attempt 1 trained 2 steps (StartTime {fields['StartTime']})")
    cluster.command("scancel", "--signal=STOP", str(job.id))
    elapsed = _run_seconds(cluster.job(job.id))
    # The longest whole-minute limit whose warning is due at the next check (end - now <= 180 s + one
    # 30 s check period): more than 150 s left for the warning, the stop and the requeue.
    minutes = (WARN_S + PERIODIC_S + elapsed) // 60
    cluster.command("scontrol", "update", f"JobId={job.id}", f"TimeLimit={minutes}")
    timeline(f"ranks paused (scancel --signal=STOP); time limit cut to {minutes} min at {elapsed} s of run time")
    attempts.wait_for_stop(1, output)
    # Restored before the requeue (the ranks take seconds to exit, a requeued job 6 s to start): the
    # next attempts run under the full limit.
    cluster.command("scontrol", "update", f"JobId={job.id}", f"TimeLimit={TIME_LIMIT_MIN}")
    attempts.wait_for_requeue(1)

    # 2. scancel --batch: SIGUSR1 to the batch script only, which passes it to srun and on to the ranks.
    attempts.wait_for_resume(2, len(_read(attempts.out_log)))
    cluster.command("scancel", "--batch", "--signal=USR1", str(job.id))
    timeline("scancel --batch --signal=USR1")
    attempts.wait_for_stop(2, output)
    attempts.wait_for_requeue(2)

    attempts.wait_for_resume(3, len(_read(attempts.out_log)))
    fields = _wait_completed(cluster, job, restarts=2)
    timeline(f"attempt 3 ended: {fields['JobState']}, ExitCode {fields['ExitCode']} (EndTime {fields['EndTime']})")
    print(f"\nPreemption job timeline (seconds since release):\n{timeline}")

    # One output file for all three attempts (--open-mode=append): each stop by both ranks at the same
    # step, srun's status 75 and the script's requeue.
    text = _read(output)
    stops = _stops(text)
    assert len(stops) == 2 * WORLD_SIZE and stops[0] == stops[1] and stops[2] == stops[3], text
    assert 2 <= stops[0] < stops[2] < STEPS, stops
    assert len(re.findall(r"srun: error: \S+: tasks? [\d,-]+: Exited with exit code 75", text)) >= 2, text
    assert text.count(f"requeueing job {job.id}") == 2, text
    assert [int(step) for step in re.findall(r"Resuming inside epoch 0 after (\d+) steps", _read(attempts.out_log))] \
        == [stops[0], stops[2]]

    expected = _final_checkpoint(reference.run)["state_dict"]
    resumed = _final_checkpoint(job.run)["state_dict"]
    assert resumed.keys() == expected.keys()
    assert not [key for key, value in expected.items() if not torch.equal(value, resumed[key])]
    # The finished run keeps no step checkpoint next to its final one.
    assert sorted(path.name for path in (job.run / "checkpoints").iterdir()) == ["epoch_1.pt"]


def test_train_slurm_sbatch_trains_to_the_end_on_two_ranks(cluster, jobs):
    job = jobs["reference"]
    fields = _wait_completed(cluster, job)
    output = cluster.job_output(fields, sys.maxsize)
    assert "Process (global: 1, local 1), total 2." in output
    assert "lacks support for cpu binding" not in output  # srun options the cluster does not support
    assert (_params(job.run)["world_size"], _params(job.run)["save_every_n_steps"]) == ("2", "1000")
    checkpoint = _final_checkpoint(job.run)
    assert checkpoint["epoch"] == 1 and RESUME_KEY not in checkpoint


def test_failing_training_ends_the_job_with_its_status_without_requeue(cluster, jobs):
    job = jobs["failing"]
    fields = cluster.wait_final(job.id, TIMEOUT_S)
    output = cluster.job_output(fields, sys.maxsize)
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("FAILED", "1:0", "0"), output
    assert "BadDataError" in output and "missing.csv" in output
    assert re.search(r"srun: error: \S+: task 0: Exited with exit code 1", output), output
    assert "requeueing" not in output


# The recipe's own settings, train_slurm.sbatch's defaults and the overrides, as the run recorded them.
RECIPE = {"model": TINY_MODEL, "loss": "cloob", "lr": "0.001", "wd": "0.1", "lr_scheduler": "cosine",
          "restart_cycles": "10", "init_inv_tau": "30.0", "hopfield_beta": "8.0", "learnable_inv_tau": "False",
          "save_every_n_steps": "1000", "batch_size": str(BATCH_SIZE), "epochs": "1"}


@pytest.mark.parametrize("name, settings", [
    ("yfcc", {"dataset_type": "webdataset", "train_num_samples": "512", "world_size": "2"}),
    ("cc3m", {"world_size": "1"}),
])
def test_recipe_submitted_with_sbatch_trains_through_train_slurm_sbatch(cluster, jobs, name, settings):
    job = jobs[name]
    _wait_completed(cluster, job)
    expected = {**RECIPE, **settings}
    params = _params(job.run)
    assert {key: params.get(key) for key in expected} == expected
    assert _final_checkpoint(job.run)["epoch"] == 1


def test_cc3m_recipe_validates_on_its_val_data(cluster, jobs):
    job = jobs["cc3m"]
    _wait_completed(cluster, job)
    assert "cloob_val_loss" in _read(job.run / "checkpoints" / "results.jsonl")
