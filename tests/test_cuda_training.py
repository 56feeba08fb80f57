"""``training.main`` on a CUDA GPU, on real images: mixed precision, step checkpoints, resume, compile.

Marked ``cuda``: skipped where torch sees no GPU; ``scripts/device_check.sh`` runs them on a GPU
machine. Four short runs of the tiny model on 256 Fashion-MNIST test images (8 steps of 32):

- ``--precision amp`` (float16 autocast, GradScaler) with a step checkpoint every 3 steps;
- a second process resuming that run from its step-6 checkpoint: it trains steps 7 and 8 with the
  same learning rates, batches, optimizer and GradScaler state, and ends where the uninterrupted
  run ended, up to the GPU's run-to-run rounding (OpenCLIP turns on cuDNN autotuning, whose
  kernel choice may differ between processes);
- ``--precision amp_bf16`` (bfloat16 autocast, no scaler) with step checkpoints;
- ``--torchcompile --precision amp_bf16``: the compiled model trains with the CLOOB loss and its
  step checkpoint holds the plain model's weights.
"""
import math
import re
from pathlib import Path

import open_clip
import pytest
import torch

from conftest import TINY_MODEL, TINY_MODEL_CONFIG, launch, tensorboard_scalars, wait_ok
from cloob_tools.data import write_fashion_mnist_dataset
from training.reliability import RESUME_KEY

pytestmark = [pytest.mark.cuda, pytest.mark.slow]

SAMPLES, BATCH_SIZE = 256, 32
STEPS = SAMPLES // BATCH_SIZE  # one epoch
RESUME_AFTER = 6  # the last step checkpoint of a run saving every 3 steps
RUN_TIMEOUT_S = 180  # a run that hangs fails the test instead of the device check's time limit
LOSS_LINE = re.compile(r"Train Epoch: 0 .* Cloob_loss: (\S+)")


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory, fashion_mnist_available) -> Path:
    return write_fashion_mnist_dataset(tmp_path_factory.mktemp("cuda_data"), "test", SAMPLES, seed=0)


def _train(logs: Path, name: str, data: Path, *flags: str) -> Path:
    """Run ``training.main`` on the GPU for one epoch; returns the run folder."""
    argv = ["--add-model-config", str(TINY_MODEL_CONFIG), "--model", TINY_MODEL, "--device", "cuda",
            "--train-data", str(data), "--batch-size", str(BATCH_SIZE), "--epochs", "1", "--lr", "1e-3",
            "--warmup", "2", "--workers", "0", "--seed", "0", "--log-every-n-steps", "1",
            "--report-to", "tensorboard", "--logs", str(logs), "--name", name, *flags]
    log = logs / f"{name}.stdout"
    wait_ok([launch(argv, log)], [log], timeout=RUN_TIMEOUT_S)
    return logs / name


@pytest.fixture(scope="module")
def logs(tmp_path_factory, tiny_model_config) -> Path:
    return tmp_path_factory.mktemp("cuda_runs")


@pytest.fixture(scope="module")
def amp_run(logs, train_csv) -> Path:
    return _train(logs, "amp", train_csv, "--precision", "amp", "--save-every-n-steps", "3")


@pytest.fixture(scope="module")
def resumed_run(logs, train_csv, amp_run) -> Path:
    step_checkpoint = amp_run / "checkpoints" / f"epoch_0_step_{RESUME_AFTER}.pt"
    return _train(logs, "resumed", train_csv, "--precision", "amp", "--resume", str(step_checkpoint))


@pytest.fixture(scope="module")
def bf16_run(logs, train_csv) -> Path:
    return _train(logs, "bf16", train_csv, "--precision", "amp_bf16", "--save-every-n-steps", "4")


@pytest.fixture(scope="module")
def compiled_run(logs, train_csv) -> Path:
    return _train(logs, "compiled", train_csv, "--precision", "amp_bf16", "--torchcompile", "--save-every-n-steps", "4")


def _params(run: Path) -> dict:
    return dict(line.split(": ", 1) for line in (run / "params.txt").read_text().splitlines())


def _losses(run: Path) -> list:
    return [float(value) for value in LOSS_LINE.findall((run / "out.log").read_text())]


def _checkpoint(run: Path, name: str) -> dict:
    return torch.load(run / "checkpoints" / name, map_location="cpu", weights_only=True)


@pytest.mark.parametrize("name,precision", [("amp", "amp"), ("bf16", "amp_bf16"), ("compiled", "amp_bf16")])
def test_runs_train_on_the_gpu_with_the_cloob_loss(request, name, precision):
    run = request.getfixturevalue(f"{name}_run")
    params = _params(run)
    # OpenCLIP resolves --device cuda to "cuda" in a single process, "cuda:LOCAL_RANK" in DDP.
    assert params["device"].startswith("cuda") and params["precision"] == precision, params
    assert "Loss: CloobLoss (hopfield_beta 8, inv_tau 30.0, frozen)" in (run / "out.log").read_text()
    losses = _losses(run)
    assert len(losses) == STEPS and all(math.isfinite(loss) for loss in losses), losses
    final = _checkpoint(run, "epoch_1.pt")
    # GradScaler state with float16 autocast only (OpenCLIP makes no scaler for bfloat16).
    assert ("scaler" in final) == (precision == "amp")


def test_step_checkpoints_hold_the_step_and_the_gpu_random_state(amp_run, bf16_run):
    step = _checkpoint(amp_run, f"epoch_0_step_{RESUME_AFTER}.pt")
    assert step["epoch"] == 0 and step[RESUME_KEY]["step"] == RESUME_AFTER
    (rng,) = step[RESUME_KEY]["rng"]
    assert len(rng["cuda"]) == torch.cuda.device_count()
    assert _checkpoint(bf16_run, f"epoch_0_step_{STEPS}.pt")[RESUME_KEY]["step"] == STEPS


def test_resuming_a_step_checkpoint_continues_the_run_exactly(amp_run, resumed_run):
    amp, resumed = amp_run, resumed_run
    assert f"Resuming inside epoch 0 after {RESUME_AFTER} steps" in (resumed / "out.log").read_text()
    assert len(_losses(resumed)) == STEPS - RESUME_AFTER
    # Same learning rate at the same global steps (tensorboard numbers the resumed steps on).
    assert tensorboard_scalars(resumed, "train/lr") == tensorboard_scalars(amp, "train/lr")[RESUME_AFTER:]
    start = _checkpoint(amp, f"epoch_0_step_{RESUME_AFTER}.pt")
    expected, got = _checkpoint(amp, "epoch_1.pt"), _checkpoint(resumed, "epoch_1.pt")
    assert got["epoch"] == expected["epoch"] == 1
    assert got["scaler"] == expected["scaler"]
    steps = {key: state["step"] for key, state in got["optimizer"]["state"].items()}
    assert steps == {key: state["step"] for key, state in expected["optimizer"]["state"].items()}
    # The weights: what the two resumed steps changed, the resumed run changed the same way. A lost
    # optimizer or scaler state, another batch or learning rate would be off by the order of the
    # change itself; GPU rounding that differs between processes is orders of magnitude below 1%.
    deviations = {}
    for key, value in expected["state_dict"].items():
        moved = (value.double() - start["state_dict"][key].double()).norm()
        off = (got["state_dict"][key].double() - value.double()).norm()
        if moved == 0:
            assert off == 0, key  # frozen: logit_scale
        else:
            deviations[key] = (off / moved).item()
    worst = max(deviations, key=deviations.get)
    print(f"resumed vs uninterrupted: largest deviation {deviations[worst]:.2e} of the change ({worst}); "
          f"bit-identical tensors: {sum(v == 0 for v in deviations.values())} of {len(deviations)}")
    assert deviations[worst] <= 1e-2, (worst, deviations[worst])


def test_a_compiled_model_trains_and_saves_the_plain_weights(compiled_run):
    run = compiled_run
    assert "Compiling model..." in (run / "out.log").read_text()
    step = _checkpoint(run, f"epoch_0_step_{STEPS}.pt")
    assert not [key for key in step["state_dict"] if key.startswith("_orig_mod.")]
    open_clip.create_model(TINY_MODEL).load_state_dict(step["state_dict"])  # strict
