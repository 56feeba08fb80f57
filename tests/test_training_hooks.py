"""The hooks into OpenCLIP still fit the installed version: fail loudly instead of training CLIP."""
import importlib
import inspect

import pytest

from training.openclip_hooks import CALLED, HOOKS


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
    target = obj.__init__ if inspect.isclass(obj) else obj
    return [name for name in inspect.signature(target).parameters if name != "self"]


def _relies_on(obj, expected) -> bool:
    """All ``expected`` parameter names exist, in this order."""
    return [name for name in _parameters(obj) if name in expected] == list(expected)


@pytest.mark.parametrize("hook", HOOKS, ids=lambda hook: f"{hook.module}.{hook.name}")
def test_hooked_name_exists_with_expected_signature_and_is_looked_up_by_its_caller(hook):
    upstream = getattr(importlib.import_module(hook.module), hook.name)
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
