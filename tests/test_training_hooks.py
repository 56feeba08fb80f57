"""The hooks into OpenCLIP still fit the installed version: fail loudly instead of training CLIP."""
import builtins
import datetime
import importlib
import inspect
import random
import signal

import pytest
import torch

from training import openclip_hooks
from training.data_checks import BadSampleCounter, WebdatasetSampleCheck
from training.openclip_hooks import CALLED, HOOKS, install_hooks
from training.params import parse_args
from training.reliability import PREEMPTION_SIGNALS, init_process_group_with_timeouts

# The names replaced only while OpenCLIP builds a webdataset pipeline (openclip_hooks._while_building_webdataset).
WHILE_BUILDING_WEBDATASET = {hook.name for hook in HOOKS if hook.caller == "open_clip_train.data.get_wds_dataset"}
# The names replaced only while OpenCLIP initialises the process group (openclip_hooks._process_group_timeouts).
WHILE_INITIALISING = {hook.name for hook in HOOKS
                      if hook.caller == "open_clip_train.distributed.init_distributed_device_so"}


def _resolve(dotted: str):
    """The object named by a dotted path ``package.module.attr[.attr]``."""
    parts = dotted.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attr in parts[split:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _parameters(obj) -> list:
    # A class's signature is its constructor's (without self); builtins such as enumerate have one too.
    return [name for name in inspect.signature(obj).parameters if name != "self"]


def _relies_on(obj, expected) -> bool:
    """All ``expected`` parameter names exist, in this order."""
    return [name for name in _parameters(obj) if name in expected] == list(expected)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: f"{hook.module}.{hook.name}")
def test_hooked_name_exists_with_expected_signature_and_is_looked_up_by_its_caller(hook):
    module = importlib.import_module(hook.module)
    upstream = getattr(module, hook.name) if hasattr(module, hook.name) else getattr(builtins, hook.name)
    assert _relies_on(upstream, hook.params), (hook, _parameters(upstream))
    caller = _resolve(hook.caller)
    # A name replaced in a module's globals only takes effect if the caller still looks it up at
    # call time (attribute and global names both land in co_names).
    assert hook.name in caller.__code__.co_names, f"{hook.caller} no longer uses {hook.name}"


@pytest.mark.parametrize("dotted", sorted(CALLED))
def test_called_upstream_function_exists_with_expected_signature(dotted):
    assert _relies_on(_resolve(dotted), CALLED[dotted]), (dotted, _parameters(_resolve(dotted)))


def test_model_factory_forwards_the_temperature_keyword():
    # The create_model_and_transforms hook passes init_logit_scale through **model_kwargs into the
    # model constructor.
    from open_clip.model import CLIP

    assert "init_logit_scale" in inspect.signature(CLIP).parameters


@pytest.fixture
def hooked_modules():
    """The modules HOOKS names and a copy of their globals; globals and signal handlers restored afterwards."""
    modules = {name: importlib.import_module(name) for name in {hook.module for hook in HOOKS}}
    before = {name: dict(vars(module)) for name, module in modules.items()}
    handlers = {signum: signal.getsignal(signum) for signum in PREEMPTION_SIGNALS}
    yield modules, before
    for name, module in modules.items():
        for added in vars(module).keys() - before[name].keys():  # a hooked builtin (enumerate)
            delattr(module, added)
        vars(module).update(before[name])
    for signum, handler in handlers.items():
        signal.signal(signum, handler)


def _rebound(modules, before) -> set:
    return {(name, attr) for name, module in modules.items() for attr, value in vars(module).items()
            if before[name].get(attr) is not value}


def test_install_hooks_replaces_exactly_the_listed_names(hooked_modules):
    # --restart-cycles > 1: the cosine_lr hook is installed too.
    install_hooks(parse_args(["--model", "RN50-cloob", "--lr-scheduler", "cosine-restarts", "--restart-cycles", "2"]))
    expected = {(hook.module, hook.name) for hook in HOOKS
                if hook.name not in WHILE_BUILDING_WEBDATASET | WHILE_INITIALISING}
    assert _rebound(*hooked_modules) == expected


def test_webdataset_checks_replace_the_listed_names_while_building_only(hooked_modules):
    modules, before = hooked_modules
    with openclip_hooks._while_building_webdataset(WebdatasetSampleCheck(BadSampleCounter(0)), shuffle_seed=7):
        assert _rebound(modules, before) == {(hook.module, hook.name) for hook in HOOKS
                                             if hook.name in WHILE_BUILDING_WEBDATASET}
        shuffle = modules["webdataset"].shuffle
    assert _rebound(modules, before) == set()
    assert len(WHILE_BUILDING_WEBDATASET) == 4
    # The sample shuffle draws from a generator of that seed, not from the clock.
    assert shuffle.keywords["rng"].random() == random.Random(7).random()


def test_openclip_works_on_the_one_run_configuration(hooked_modules):
    modules, _ = hooked_modules
    args = parse_args(["--model", "RN50-cloob", "--train-data", "train.csv"])
    run = install_hooks(args)
    # OpenCLIP's main() gets the namespace training.main parsed, not a second parse of argv.
    assert run.args is args and modules["open_clip_train.main"].parse_args(["--model", "RN50"]) is args


def test_the_timeouts_reach_init_process_group_only_while_openclip_initialises(hooked_modules):
    modules, before = hooked_modules
    with openclip_hooks._process_group_timeouts(60, 7.5):
        replaced = torch.distributed.init_process_group
        assert _rebound(modules, before) == {("torch.distributed", name) for name in WHILE_INITIALISING}
    assert replaced.func is init_process_group_with_timeouts
    assert replaced.keywords == {"join_timeout": datetime.timedelta(seconds=60),
                                 "timeout": datetime.timedelta(seconds=7.5)}
    assert _rebound(modules, before) == set() and WHILE_INITIALISING == {"init_process_group"}
    with openclip_hooks._process_group_timeouts(None, None):  # neither flag: torch's defaults
        assert torch.distributed.init_process_group.keywords == {"join_timeout": None, "timeout": None}


class _Recorded:
    """Stands in for init_process_group_with_timeouts and PeerWatch; records their arguments."""

    def __init__(self) -> None:
        self.calls = []

    def __call__(self, *args, **kwargs) -> None:
        self.calls.append(kwargs)

    def of_process_group(self, rank: int, world_size: int) -> str:
        self.calls.append({"peers": (rank, world_size)})
        return "watch"


def test_a_slurm_task_initialises_the_process_group_with_ranks_from_slurm_and_the_timeouts(hooked_modules,
                                                                                          monkeypatch):
    # Task 3 of 4, the second on its node, as srun starts it (no torchrun variables).
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    modules, _ = hooked_modules
    recorded = _Recorded()
    monkeypatch.setattr(openclip_hooks, "init_process_group_with_timeouts", recorded)
    monkeypatch.setattr(openclip_hooks, "PeerWatch", recorded)
    args = parse_args(["--model", "RN50-cloob", "--device", "cpu", "--dist-timeout", "12.5",
                       "--dist-join-timeout", "300"])
    run = install_hooks(args)
    modules["open_clip_train.main"].init_distributed_device(args)  # what OpenCLIP's main() calls
    assert recorded.calls == [
        {"backend": "gloo", "init_method": "env://", "world_size": 4, "rank": 3,
         "join_timeout": datetime.timedelta(seconds=300), "timeout": datetime.timedelta(seconds=12.5)},
        {"peers": (3, 4)}]
    assert (args.rank, args.local_rank, args.world_size, args.distributed) == (3, 1, 4, True)
    assert run.peers == "watch"
