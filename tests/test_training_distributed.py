"""Several processes on CPU (gloo): torchrun and a simulated 2-task SLURM launch of training.main."""
import math
import os
import sys

import pytest
import torch

from conftest import free_port, launch, run_training, training_argv, wait_ok

pytestmark = pytest.mark.slow

# Variables of an enclosing launcher would make OpenCLIP take the torchrun path instead of SLURM's.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory, fashion_mnist_data, tiny_model_config):
    """torchrun, 2 ranks: webdataset from two '::' sources, resampled, local loss with gathered gradients,
    and a learnable β per memory (model parameters used by the loss, outside the model's forward)."""
    logs = tmp_path_factory.mktemp("torchrun")
    shards = [str(path) for path in fashion_mnist_data["shards"]]
    argv = training_argv(
        logs, "torchrun",
        "--dataset-type", "webdataset", "--train-data", f"{shards[0]}::{shards[1]}", "--dataset-resampled",
        "--train-num-samples", "256", "--batch-size", "16", "--epochs", "1", "--lr", "1e-3", "--warmup", "2",
        "--local-loss", "--gather-with-grad", "--log-every-n-steps", "1", "--learnable-hopfield-beta", "per-modality")
    launcher = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
                "-m", "training.main")
    run_training(argv, logs / "torchrun.stdout", launcher=launcher)
    return logs / "torchrun"


def test_torchrun_trains_cloob_over_the_global_batch(torchrun_run):
    log = (torchrun_run / "out.log").read_text()
    assert "Process (global: 0, local 0), total 2." in log
    assert "Loss: CloobLoss (hopfield_beta 8, inv_tau 30.0, frozen) over a global batch of 32 = 16 per rank x " \
           "accum_freq 1 x world_size 2" in log
    # OpenCLIP counts samples globally: 256 / 32 = 8 steps.
    assert "Train Epoch: 0 [256/256 (100%)]" in log and "Cloob_loss" in log
    checkpoint = torch.load(torchrun_run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    # DDP saved the wrapped model; the frozen temperature stayed where it started.
    assert checkpoint["state_dict"]["module.logit_scale"].item() == pytest.approx(math.log(30.0))


def test_torchrun_trains_the_learnable_betas_through_ddp(torchrun_run):
    # DDP (without find_unused_parameters) stops a run at the next step when a parameter it owns was
    # not reduced: 8 steps that end normally mean the log βs, used only by the loss, were averaged.
    checkpoint = torch.load(torchrun_run / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    image, text = (checkpoint["state_dict"][f"module.{key}"].item()
                   for key in ("logit_scale_hopfield", "logit_scale_hopfield_text"))
    assert image != pytest.approx(math.log(8.0), abs=1e-4) and text != pytest.approx(image, abs=1e-4)


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory, fashion_mnist_data, tiny_model_config):
    """Two processes started the way ``srun`` starts tasks: SLURM_* variables and a rendezvous address."""
    logs = tmp_path_factory.mktemp("slurm")
    argv = training_argv(
        logs, "slurm", "--train-data", str(fashion_mnist_data["small_csv"]), "--batch-size", "16", "--epochs", "1",
        "--lr", "1e-3", "--warmup", "2", "--learnable-inv-tau", "--log-every-n-steps", "4")
    base_env = {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}
    port = str(free_port())
    processes, log_files = [], []
    for rank in range(2):
        env = {**base_env, "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NTASKS": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        log_files.append(logs / f"task{rank}.stdout")
        processes.append(launch(argv, log_files[-1], env=env))
    wait_ok(processes, log_files)
    return logs


def test_simulated_slurm_launch_trains_on_two_tasks_with_a_learnable_temperature(slurm_run):
    log = (slurm_run / "slurm" / "out.log").read_text()
    assert "Process (global: 0, local 0), total 2." in log
    assert "inv_tau 30.0, learnable) over a global batch of 32 = 16 per rank x accum_freq 1 x world_size 2" in log
    assert "Process (global: 1, local 1), total 2." in (slurm_run / "task1.stdout").read_text()
    # The csv sampler splits 512 samples over the 2 ranks: 16 global steps of 32.
    assert "Train Epoch: 0 [512/512 (100%)]" in log
    checkpoint = torch.load(slurm_run / "slurm" / "checkpoints" / "epoch_1.pt", map_location="cpu", weights_only=True)
    assert checkpoint["state_dict"]["module.logit_scale"].item() != pytest.approx(math.log(30.0))
    assert checkpoint["cloob"]["learnable_inv_tau"] is True
