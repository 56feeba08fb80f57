"""The order tests/conftest.py gives the collected tests for the two pytest-xdist workers
(``--dist loadfile``: a module goes to one worker as a whole, in the order of the items)."""
from itertools import groupby

from conftest import schedule_rank


def test_each_module_runs_as_one_block_slurm_first_then_slow_then_fast(request):
    items = request.session.items
    blocks = [(path, list(tests)) for path, tests in groupby(items, key=lambda item: item.path)]
    paths = [path for path, _ in blocks]
    assert len(paths) == len(set(paths)), "a module's tests are split"
    ranks = [min(schedule_rank(item) for item in tests) for _, tests in blocks]
    assert ranks == sorted(ranks), list(zip([path.name for path in paths], ranks))


def test_one_module_trains_the_shared_learning_run(request):
    # tiny_cloob_run is a session fixture: a second module using it trains it again on the other worker.
    users = {item.path.name for item in request.session.items if "tiny_cloob_run" in getattr(item, "fixturenames", ())}
    assert users <= {"test_training_e2e.py"}, users
