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
- The preempted run, resubmitted (a new ``sbatch``) with an edited flag, another β: the job fails
  before any step with one message naming the change, is not requeued and leaves the run's
  checkpoint as it was; resubmitted with ``--allow-changed-settings`` it trains on with the new β and
  its checkpoint records the old settings in its history.
- A job whose training fails ends FAILED with the training's exit status, without a requeue.
- ``yfcc15m.sbatch`` (2 tasks, webdataset shards) and ``cc3m_rn50.sh`` (1 task, with validation),
  submitted from the repository root with their recipe flags overridden down to a tiny run, go
  through ``train_slurm.sbatch`` and train.
"""
import re
import sys
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import pytest
import torch

from conftest import TINY_MODEL, small_csv_argv, training_argv
from slurm_cluster import Job, PreemptedJob, SlurmCluster, read_text, started, submit_job, usr1_stops
from open_clip_cloob.checkpoint import HISTORY_KEY
from training.reliability import RESUME_KEY

pytestmark = [pytest.mark.slow, pytest.mark.slurm]

REPO = Path(__file__).parent.parent
WORLD_SIZE = 2
BATCH_SIZE = 16  # per rank (small_csv_argv)
STEPS = 512 // (WORLD_SIZE * BATCH_SIZE)  # one epoch of small_csv's 512 images
TIME_LIMIT_MIN = 30
TIMEOUT_S = 900
# The preemption job's attempts run one after the other and wait on SLURM in between; the other jobs
# run nicer, on the CPU time those attempts leave.
BACKGROUND_NICE = 10


def _cpu_job(tasks: int) -> List[str]:
    """sbatch options replacing the scripts' 4 GPU tasks of 8 CPUs per node."""
    return [f"--ntasks-per-node={tasks}", "--gpus-per-node=0", "--cpus-per-task=1", f"--time={TIME_LIMIT_MIN}"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[SlurmCluster]:
    yield from started(SlurmCluster, tmp_path_factory.mktemp("slurm"))


def _submit(cluster: SlurmCluster, script: str, args: Sequence[str], run: Path, options: Sequence[str],
            env: Optional[Dict[str, str]] = None, submit_dir: Optional[Path] = None,
            nice: int = BACKGROUND_NICE) -> Job:
    return submit_job(cluster, script, args, run, options, env, submit_dir, nice)


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


def _params(run: Path) -> Dict[str, str]:
    return dict(re.findall(r"^(\w+): (.*)$", read_text(run / "params.txt"), flags=re.MULTILINE))


def _final_checkpoint(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)


def _wait_completed(cluster: SlurmCluster, job: Job, restarts: int = 0) -> Dict[str, str]:
    return cluster.wait_completed(job.id, restarts, TIMEOUT_S)


def test_preempted_job_saves_exits_75_is_requeued_and_resumes_to_the_uninterrupted_weights(cluster, jobs):
    job, reference = jobs["preempted"], jobs["reference"]
    attempts = PreemptedJob.release(cluster, job, WORLD_SIZE, TIMEOUT_S,
                                    "submitted held: sbatch --hold scripts/train_slurm.sbatch")
    timeline = attempts.timeline

    # 1. SLURM's time-limit warning, once the ranks trained 2 steps.
    output = attempts.warn_by_time_limit(2, WORLD_SIZE * BATCH_SIZE, TIME_LIMIT_MIN)
    attempts.wait_for_requeue(1)

    # 2. scancel --batch: SIGUSR1 to the batch script only, which passes it to srun and on to the ranks.
    attempts.wait_for_resume(2, len(read_text(attempts.out_log)))
    cluster.command("scancel", "--batch", "--signal=USR1", str(job.id))
    timeline("scancel --batch --signal=USR1")
    attempts.wait_for_stop(2, output)
    attempts.wait_for_requeue(2)

    attempts.wait_for_resume(3, len(read_text(attempts.out_log)))
    fields = _wait_completed(cluster, job, restarts=2)
    timeline(f"attempt 3 ended: {fields['JobState']}, ExitCode {fields['ExitCode']} (EndTime {fields['EndTime']})")
    print(f"\nPreemption job timeline (seconds since release):\n{timeline}")

    # One output file for all three attempts (--open-mode=append): each stop by both ranks at the same
    # step, srun's status 75 and the script's requeue.
    text = read_text(output)
    stops = usr1_stops(text)
    assert len(stops) == 2 * WORLD_SIZE and stops[0] == stops[1] and stops[2] == stops[3], text
    assert 2 <= stops[0] < stops[2] < STEPS, stops
    assert len(re.findall(r"srun: error: \S+: tasks? [\d,-]+: Exited with exit code 75", text)) >= 2, text
    assert text.count(f"requeueing job {job.id}") == 2, text
    assert [int(step) for step in re.findall(r"Resuming inside epoch 0 after (\d+) steps", read_text(attempts.out_log))] \
        == [stops[0], stops[2]]

    expected = _final_checkpoint(reference.run)["state_dict"]
    resumed = _final_checkpoint(job.run)["state_dict"]
    assert resumed.keys() == expected.keys()
    assert not [key for key, value in expected.items() if not torch.equal(value, resumed[key])]
    # The finished run keeps no step checkpoint next to its final one.
    assert sorted(path.name for path in (job.run / "checkpoints").iterdir()) == ["epoch_1.pt"]


def test_a_preempted_run_resubmitted_with_changed_flags_stops_unless_allowed(cluster, jobs, fashion_mnist_data):
    preempted = jobs["preempted"]
    _wait_completed(cluster, preempted, restarts=2)
    finished = preempted.run / "checkpoints" / "epoch_1.pt"
    recorded = _final_checkpoint(preempted.run)["cloob"]
    before = finished.read_bytes()
    edited = small_csv_argv(preempted.run.parent, preempted.run.name, fashion_mnist_data, "--epochs", "2",
                            "--hopfield-beta", "16")  # the script adds --resume latest
    refused = _submit(cluster, "train_slurm.sbatch", edited, preempted.run, _cpu_job(WORLD_SIZE), nice=0)
    fields = cluster.wait_final(refused.id, TIMEOUT_S)
    output = cluster.job_output(fields, sys.maxsize)
    assert (fields["JobState"], fields["ExitCode"], fields["Restarts"]) == ("FAILED", "1:0", "0"), output
    assert (f"ChangedSettingsError: {finished} was trained with other CLOOB settings than this command line's: "
            "hopfield_beta 8.0 in the checkpoint, 16.0 now.") in output
    assert "requeueing" not in output and finished.read_bytes() == before

    allowed = _submit(cluster, "train_slurm.sbatch", [*edited, "--allow-changed-settings"], preempted.run,
                      _cpu_job(WORLD_SIZE), nice=0)
    _wait_completed(cluster, allowed)
    extended = torch.load(preempted.run / "checkpoints" / "epoch_2.pt", map_location="cpu", weights_only=True)
    assert extended["cloob"] == {**recorded, "hopfield_beta": 16.0}
    assert extended[HISTORY_KEY] == [{"settings": recorded, "until_epoch": 1, "until_step": 0,
                                      "checkpoint": str(finished)}]


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
    assert "cloob_val_loss" in read_text(job.run / "checkpoints" / "results.jsonl")


def test_the_clusters_socket_paths_stay_short_under_a_deep_folder(tmp_path):
    # A Unix socket's path may not exceed 108 bytes; slurmstepd makes one per job step in slurmd's
    # spool folder, named <node>_<job>.<step> (a batch step is 4294967291).
    deep = SlurmCluster(tmp_path / ("d" * 100) / ("e" * 100))
    deep._write_config()
    try:
        spool = str(deep._settings()["SlurmdSpoolDir"]).replace("%n", deep.host)
        longest_step_socket = f"{spool}/{deep.host}_{10 ** 9}.4294967291"
        assert len(longest_step_socket.encode()) <= 108 and len(str(deep.munge_socket).encode()) <= 108
        assert Path(spool).is_dir() and str(deep.root) in (deep.root / "slurm.conf").read_text()
    finally:
        deep.stop()
    assert not deep.sockets.exists()
