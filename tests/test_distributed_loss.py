"""CloobLoss in real multi-process runs (torch.distributed, gloo on CPU) against one process.

Each rank holds a slice of one global float64 batch, computes its loss and backpropagates; the
parent compares values and feature gradients with the float64 reference on the whole batch, for
every variant of the paper's grid (InfoLOOB/InfoNCE, with/without Hopfield), the direct and the
memory-efficient path, and every mode. A DDP-style average of parameter gradients equals
(1/world_size) Σ_rank of each rank's feature gradients pushed through its own rows, so the
relations below are stated on feature gradients:

- with gather_with_grad (local or not): rank gradients / world_size == single-process gradient;
- default mode (gather without grad): rank gradients == single-process gradient;
- every mode: rank values (mean over ranks with local_loss) == single-process value, and the
  mean of the ranks' temperature gradients == the single-process temperature gradient.

One launch per world size runs everything: workers are forked from a forkserver that imported
torch and open_clip once, instead of each re-importing them (~10 s of CPU per worker here).
The same launch runs the loss through OpenCLIP's next ``gather_features`` signature (no
``use_horovod``), the collective ``CloobLoss.diagnostics``, and the remedies: a learnt β per memory
(log-β parameters, as ``--learnable-hopfield-beta`` gives the loss) with a Hopfield weight of a
warm-in, whose β gradients average over the ranks (as DDP averages them) to the single-process ones.
"""
import functools
import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import gather_features

import open_clip_cloob.loss as cloob_loss_module
from cloob_reference import reference_cloob, reference_hopfield_diagnostics, reference_spread, unit_rows
from conftest import free_port
from open_clip_cloob import CloobLoss

# objective, hopfield, beta_from_spread (each memory's β from the global batch's spread)
VARIANTS = [("infoloob", True, None), ("infonce", True, None), ("infoloob", False, None), ("infonce", False, None),
            ("infoloob", True, 2.0)]
PATHS = ["direct", "chunked"]
MODES = [  # local_loss, gather_with_grad
    (False, False),
    (False, True),
    (True, True),
    (True, False),
]
LOCAL_BATCH, DIM, BETA, INV_TAU = 3, 6, 8.0, 30.0
# The remedies' case: log β of the image memory and of the text memory, and the Hopfield weight λ.
LOG_BETAS, HOPFIELD_WEIGHT = (math.log(5.0), math.log(11.0)), 0.4
REMEDIES = "learnt betas, warm-in"
CASES = [(variant, path, mode) for variant in VARIANTS for path in PATHS for mode in MODES]


def _case_id(variant, path, mode):
    objective, hopfield, beta_from_spread = variant
    local_loss, gather_with_grad = mode
    return (f"{objective}-{'hopfield' if hopfield else 'plain'}{'-spread' if beta_from_spread else ''}-{path}-"
            f"{'local' if local_loss else 'global'}-{'gathergrad' if gather_with_grad else 'nogathergrad'}")


def _cases(select=lambda variant, path, mode: True):
    return [pytest.param(*case, id=_case_id(*case)) for case in CASES if select(*case)]


def _global_batch(world_size):
    n = LOCAL_BATCH * world_size
    return unit_rows(n, DIM, seed=world_size), unit_rows(n, DIM, seed=world_size + 50)


def gather_features_without_use_horovod(image_features, text_features, local_loss=False, gather_with_grad=False,
                                        rank=0, world_size=1):
    """OpenCLIP's development-branch signature of ``gather_features`` (it dropped ``use_horovod``),
    served by the installed function."""
    return gather_features(image_features, text_features, local_loss, gather_with_grad, rank, world_size)


def _rank_run(rank, world_size, variant, path, mode, log_betas=(), hopfield_weight=1.0):
    """This rank's loss value and gradients (features, temperature, then each log β) for one case; with
    ``log_betas`` the loss learns β from them (one per memory), with ``hopfield_weight`` it blends."""
    objective, hopfield, beta_from_spread = variant
    local_loss, gather_with_grad = mode
    image, text = _global_batch(world_size)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    x = image[rows].clone().requires_grad_()
    y = text[rows].clone().requires_grad_()
    scale = torch.tensor(INV_TAU, dtype=torch.float64, requires_grad=True)
    log_betas = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in log_betas]
    loss_fn = CloobLoss(hopfield_beta=BETA, local_loss=local_loss, gather_with_grad=gather_with_grad, rank=rank,
                        world_size=world_size, memory_efficient=path == "chunked", objective=objective,
                        hopfield=hopfield, beta_from_spread=beta_from_spread, hopfield_weight=hopfield_weight)
    if log_betas:
        loss_fn.learn_beta(*log_betas)
    loss = loss_fn(x, y, scale)
    loss.backward()
    return (loss.detach(), x.grad, y.grad, scale.grad, *(log_beta.grad for log_beta in log_betas))


def _worker(rank, world_size, port, out_dir):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    save_rank_results(rank, world_size, out_dir)
    dist.destroy_process_group()


def save_rank_results(rank, world_size, out_dir, **extra):
    """Every case on this rank of the initialised process group, saved (with ``extra``) as ``out_dir/rank{rank}.pt``.

    Also run across the nodes of a SLURM cluster (tests/slurm_loss_task.py).
    """
    # A tiny chunk budget makes the memory-efficient path run several odd-sized chunks.
    cloob_loss_module.CHUNK_ELEMENTS = 5 * LOCAL_BATCH * world_size
    results = {case: _rank_run(rank, world_size, *case) for case in CASES}
    # The same loss through OpenCLIP's next gather_features signature (CloobLoss decides at construction).
    cloob_loss_module.gather_features = gather_features_without_use_horovod
    for path in PATHS:
        for mode in MODES:
            results["without use_horovod", path, mode] = _rank_run(rank, world_size, VARIANTS[0], path, mode)
    cloob_loss_module.gather_features = gather_features
    for path in PATHS:
        for mode in MODES:
            results[REMEDIES, path, mode] = _rank_run(rank, world_size, VARIANTS[0], path, mode, LOG_BETAS,
                                                      HOPFIELD_WEIGHT)
    image, text = _global_batch(world_size)
    rows = slice(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH)
    loss_fn = CloobLoss(hopfield_beta=BETA, rank=rank, world_size=world_size)
    results["diagnostics"] = loss_fn.diagnostics(image[rows].clone().requires_grad_(), text[rows])
    torch.save({**results, **extra}, os.path.join(out_dir, f"rank{rank}.pt"))


@functools.lru_cache(maxsize=None)
def _single_process(world_size, variant, anchor_indices=None):
    """The float64 reference's value and gradients (features, temperature) on the global batch."""
    image, text = _global_batch(world_size)
    x, y = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(INV_TAU, dtype=torch.float64, requires_grad=True)
    objective, hopfield, beta_from_spread = variant
    betas = (BETA, BETA) if beta_from_spread is None else (
        beta_from_spread / reference_spread(image), beta_from_spread / reference_spread(text))
    loss = reference_cloob(x, y, scale, betas[0], anchor_indices, objective=objective, hopfield=hopfield,
                           text_beta=betas[1])
    loss.backward()
    return loss.detach(), x.grad, y.grad, scale.grad


@functools.lru_cache(maxsize=None)
def _single_process_remedies(world_size, anchor_indices=None):
    """The float64 reference of the remedies' case on the global batch: value and gradients
    (features, temperature, both log βs); (1 − λ) · L_plain + λ · L_hopfield, β = exp(log β)."""
    image, text = _global_batch(world_size)
    x, y = image.clone().requires_grad_(), text.clone().requires_grad_()
    scale = torch.tensor(INV_TAU, dtype=torch.float64, requires_grad=True)
    log_betas = [torch.tensor(value, dtype=torch.float64, requires_grad=True) for value in LOG_BETAS]
    loss = ((1 - HOPFIELD_WEIGHT) * reference_cloob(x, y, scale, BETA, anchor_indices, hopfield=False)
            + HOPFIELD_WEIGHT * reference_cloob(x, y, scale, log_betas[0].exp(), anchor_indices,
                                                text_beta=log_betas[1].exp()))
    loss.backward()
    return (loss.detach(), x.grad, y.grad, scale.grad, *(log_beta.grad for log_beta in log_betas))


@pytest.fixture(scope="module", params=[2, 4], ids=lambda w: f"world{w}")
def distributed_run(request, tmp_path_factory):
    world_size = request.param
    out_dir = tmp_path_factory.mktemp(f"world{world_size}")
    # The forkserver preloads what conftest's training_process sets (torch, OpenCLIP, this package).
    mp.start_processes(_worker, args=(world_size, free_port(), str(out_dir)), nprocs=world_size, join=True,
                       start_method="forkserver")
    ranks = [torch.load(out_dir / f"rank{r}.pt") for r in range(world_size)]
    return world_size, ranks


def check_values(world_size, ranks, variant, path, mode):
    """Each rank's loss value (their mean with local_loss) is the single-process value."""
    values = torch.stack([r[variant, path, mode][0] for r in ranks])
    single = _single_process(world_size, variant)[0]
    local_loss, _ = mode
    if local_loss:
        for rank, value in enumerate(values):
            own_anchors = tuple(range(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH))
            torch.testing.assert_close(value, _single_process(world_size, variant, own_anchors)[0],
                                       rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(values.mean(), single, rtol=1e-10, atol=1e-12)
    else:
        torch.testing.assert_close(values, single.expand(world_size), rtol=1e-10, atol=1e-12)


def check_feature_gradients(world_size, ranks, variant, path, mode):
    """The ranks' feature gradients are the single-process ones (times world_size with gather_with_grad)."""
    _, grad_image, grad_text, _ = _single_process(world_size, variant)
    # A gather with gradient sums every rank's contribution into the owner's rows: world_size times
    # the gradient of the mean loss. Without it, each rank keeps only its own rows' share of its
    # (full) loss, like ClipLoss: DDP's average then is the single-process gradient / world_size.
    _, gather_with_grad = mode
    scale = world_size if gather_with_grad else 1
    got_image = torch.cat([r[variant, path, mode][1] for r in ranks]) / scale
    got_text = torch.cat([r[variant, path, mode][2] for r in ranks]) / scale
    torch.testing.assert_close(got_image, grad_image, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_text, grad_text, rtol=1e-9, atol=1e-12)


def check_temperature_gradient(world_size, ranks, variant, path, mode):
    """The mean of the ranks' temperature gradients is the single-process one."""
    averaged = torch.stack([r[variant, path, mode][3] for r in ranks]).mean()
    torch.testing.assert_close(averaged, _single_process(world_size, variant)[3], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("variant,path,mode", _cases())
def test_values_match_single_process(distributed_run, variant, path, mode):
    check_values(*distributed_run, variant, path, mode)


@pytest.mark.parametrize("variant,path,mode", _cases(lambda variant, path, mode: mode != (True, False)))
def test_feature_gradients_match_single_process(distributed_run, variant, path, mode):
    check_feature_gradients(*distributed_run, variant, path, mode)


@pytest.mark.parametrize("variant,path,mode", _cases())
def test_temperature_gradient_averages_to_single_process(distributed_run, variant, path, mode):
    check_temperature_gradient(*distributed_run, variant, path, mode)


@pytest.mark.parametrize("variant,path,mode", _cases(lambda variant, path, mode: mode == (True, False)))
def test_local_loss_without_gather_grad_drops_cross_rank_gradient(distributed_run, variant, path, mode):
    # Documented limitation (as with ClipLoss): the value is right but other ranks' anchors no
    # longer reach this rank's features. This pins the warning's claim.
    world_size, ranks = distributed_run
    _, grad_image, _, _ = _single_process(world_size, variant)
    got = torch.cat([r[variant, path, mode][1] for r in ranks]) / world_size
    assert not torch.allclose(got, grad_image, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"local{m[0]:d}-gathergrad{m[1]:d}")
def test_gather_features_without_use_horovod_gives_the_same_results(distributed_run, path, mode):
    _, ranks = distributed_run
    for r in ranks:
        for got, want in zip(r["without use_horovod", path, mode], r[VARIANTS[0], path, mode]):
            assert torch.equal(got, want)


def check_diagnostics(world_size, ranks):
    """Every rank's collective Hopfield diagnostics are those of the global batch."""
    want = reference_hopfield_diagnostics(*_global_batch(world_size), BETA)
    for r in ranks:
        assert r["diagnostics"] == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_diagnostics_of_every_rank_are_those_of_the_global_batch(distributed_run):
    check_diagnostics(*distributed_run)


# ---------------------------------------------------------------------------------------------
# OpenCLIP's gather_features with and without use_horovod, decided when the loss is built


def test_installed_gather_features_gets_use_horovod():
    assert CloobLoss(use_horovod=False)._gather_keywords == {"use_horovod": False}


def test_gather_features_without_use_horovod(monkeypatch):
    monkeypatch.setattr(cloob_loss_module, "gather_features", gather_features_without_use_horovod)
    assert CloobLoss()._gather_keywords == {}
    with pytest.raises(ValueError, match="use_horovod=True, but this OpenCLIP's open_clip.loss.gather_features"):
        CloobLoss(use_horovod=True)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", MODES, ids=lambda m: f"local{m[0]:d}-gathergrad{m[1]:d}")
def test_remedies_match_single_process_and_beta_gradients_average_to_it(distributed_run, path, mode):
    world_size, ranks = distributed_run
    got = [r[REMEDIES, path, mode] for r in ranks]
    single = _single_process_remedies(world_size)
    local_loss, gather_with_grad = mode
    values = torch.stack([rank[0] for rank in got])
    if local_loss:
        for rank, value in enumerate(values):
            own_anchors = tuple(range(rank * LOCAL_BATCH, (rank + 1) * LOCAL_BATCH))
            torch.testing.assert_close(value, _single_process_remedies(world_size, own_anchors)[0],
                                       rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(values.mean(), single[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(torch.stack([rank[3] for rank in got]).mean(), single[3], rtol=1e-9, atol=1e-12)
    if mode == (True, False):
        return  # the documented mode that drops other ranks' gradients (features and β alike)
    scale = world_size if gather_with_grad else 1
    for index in (1, 2):  # features: as check_feature_gradients
        torch.testing.assert_close(torch.cat([rank[index] for rank in got]) / scale, single[index],
                                   rtol=1e-9, atol=1e-12)
    for index in (4, 5):  # log β of each memory: DDP's average over the ranks
        torch.testing.assert_close(torch.stack([rank[index] for rank in got]).mean(), single[index],
                                   rtol=1e-9, atol=1e-12)
