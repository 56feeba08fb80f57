"""A finished epoch checkpoint removes the step checkpoints it supersedes.

``epoch_E_step_S.pt`` is written inside epoch E (E epochs completed); once OpenCLIP writes
``epoch_N.pt`` with N > E, ``--resume latest`` never takes the step checkpoint again. A run preempted
in an epoch used to keep it after the run finished (found by the SLURM tests, tests/test_slurm.py).
"""
import torch

from training.reliability import atomic_save


def _names(folder) -> list:
    return sorted(path.name for path in folder.iterdir())


def test_epoch_checkpoint_removes_step_checkpoints_of_earlier_epochs_only(tmp_path):
    for name in ("epoch_1.pt", "epoch_0_step_7.pt", "epoch_1_step_3.pt", "epoch_2_step_5.pt", "epoch_1_step_3.pt.bak",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"x")

    atomic_save({"epoch": 2, "state_dict": {"w": torch.ones(2)}}, tmp_path / "epoch_2.pt")

    # epoch_2_step_5.pt lies inside epoch 2, after epoch_2.pt: newer, kept.
    assert _names(tmp_path) == ["epoch_1.pt", "epoch_1_step_3.pt.bak", "epoch_2.pt", "epoch_2_step_5.pt", "notes.txt"]
    assert torch.equal(torch.load(tmp_path / "epoch_2.pt", weights_only=True)["state_dict"]["w"], torch.ones(2))


def test_other_checkpoints_remove_nothing(tmp_path):
    (tmp_path / "epoch_0_step_7.pt").write_bytes(b"x")
    for name in ("epoch_latest.pt", "epoch_1_step_2.pt", "model.pt"):
        atomic_save({"epoch": 1}, tmp_path / name)
    assert _names(tmp_path) == ["epoch_0_step_7.pt", "epoch_1_step_2.pt", "epoch_latest.pt", "model.pt"]
