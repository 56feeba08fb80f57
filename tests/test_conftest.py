"""The suite's own machinery in tests/conftest.py: the order it gives the collected tests for the two
pytest-xdist workers (``--dist loadfile``: a module goes to one worker as a whole, in the order of the
items), and the ports it hands out for rendezvous and daemons."""
import socket
from itertools import groupby

from conftest import FIRST_TEST_PORT, first_ephemeral_port, free_port, schedule_rank


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


def test_free_ports_lie_below_the_ephemeral_range_are_bindable_and_never_repeat(monkeypatch):
    low = first_ephemeral_port()
    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw1")
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    first = free_port()
    with socket.socket() as taken:  # the next port of this worker's class, bound elsewhere: passed over
        try:
            taken.bind(("127.0.0.1", first + 2))
        except OSError:  # another process holds it already, which serves as well
            pass
        ports = [first] + [free_port() for _ in range(4)]
    assert first + 2 not in ports, ports
    assert len(set(ports)) == len(ports), ports
    assert all(FIRST_TEST_PORT <= port < low and port % 2 == (FIRST_TEST_PORT + 1) % 2 for port in ports), ports
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
