"""One ``srun`` task of the cross-node CloobLoss check of tests/test_slurm_nodes.py.

The task joins the process group the way ``training.main`` does: the run configuration parsed by
``training.params``, the hooks installed (``--dist-timeout``), OpenCLIP's ``init_distributed_device``,
which takes rank, local rank and world size from SLURM's variables and the rendezvous from
``MASTER_ADDR``/``MASTER_PORT``. Then every case of tests/test_distributed_loss.py runs on this
rank's slice of the global batch; the results are saved for the test, with the rank's host and
its view of the process group. Usage: ``srun python tests/slurm_loss_task.py OUT_DIR``.
"""
import socket
import sys

import open_clip_train.main as openclip_main
import torch

from test_distributed_loss import save_rank_results
from training.openclip_hooks import install_hooks
from training.params import parse_args


def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    args = parse_args(["--model", "RN50-cloob", "--device", "cpu", "--dist-timeout", "120"])
    install_hooks(args)
    openclip_main.init_distributed_device(args)
    save_rank_results(args.rank, args.world_size, out_dir, host=socket.gethostname(), local_rank=args.local_rank,
                      group_size=torch.distributed.get_world_size())
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
