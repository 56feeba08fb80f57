"""The one home of CLOOB's facts (:mod:`open_clip_cloob.settings`): torch-free, read by every user,
and its checks of numbers applied by the loss as by the command line."""
import inspect
import math
import subprocess
import sys

import pytest
import torch

import open_clip_cloob
from open_clip_cloob import (CloobLoss, cloob_loss, collapsed_loss, cross_hopfield_retrieval, hopfield_diagnostics,
                             hopfield_retrieval, info_loob, info_nce, list_cloob_models, memory_betas, settings)
from training import monitor, openclip_hooks, params


def test_the_dry_run_parser_loads_the_settings_without_torch():
    code = ("import sys, training.params as p; "
            "p.main(['--model', 'RN50-cloob', '--train-data', 'x.csv']); "
            "loaded = sorted(m for m in ('torch', 'open_clip', 'open_clip_cloob') if m in sys.modules); "
            "print('LOADED', loaded, p.settings.__name__)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert "LOADED [] open_clip_cloob.settings" in result.stdout
    assert "hopfield_beta: 8.0" in result.stderr  # the dry run printed the resolved settings


def test_the_parser_the_loss_the_registry_and_the_monitor_read_one_module():
    assert params.settings is settings is open_clip_cloob.settings
    assert open_clip_cloob.LOSS_VARIANTS is settings.LOSS_VARIANTS is openclip_hooks.LOSS_VARIANTS is monitor.LOSS_VARIANTS
    assert inspect.signature(CloobLoss).parameters["hopfield_beta"].default == settings.DEFAULT_HOPFIELD_BETA
    assert inspect.signature(cloob_loss).parameters["hopfield_beta"].default == settings.DEFAULT_HOPFIELD_BETA
    assert list_cloob_models() and all(name.endswith(settings.CLOOB_MODEL_SUFFIX) for name in list_cloob_models())
    assert params.parse_args(["--model", "RN50-cloob", "--train-data", "x.csv"]).init_inv_tau == settings.DEFAULT_INV_TAU


def test_the_variants_and_their_properties():
    assert settings.CLOOB_LOSSES == ("cloob", "cloob-infonce", "infoloob", "infonce")
    assert settings.HOPFIELD_LOSSES == ("cloob", "cloob-infonce")
    assert settings.LOSSES == settings.CLOOB_LOSSES + ("clip",)
    assert {keywords["objective"] for keywords in settings.LOSS_VARIANTS.values()} == set(settings.OBJECTIVES)
    with pytest.raises(TypeError):
        settings.LOSS_VARIANTS["mine"] = {}  # read-only: one definition


@pytest.mark.parametrize("value", [0.0, -1.0, math.inf, -math.inf, math.nan, "8", None, True])
def test_the_loss_refuses_bad_betas_like_the_command_line(value):
    x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    calls = [lambda: CloobLoss(hopfield_beta=value), lambda: CloobLoss(beta_from_spread=value),
             lambda: cloob_loss(x, x, 30.0, value), lambda: cloob_loss(x, x, 30.0, beta_from_spread=value),
             lambda: hopfield_retrieval(x, x, value), lambda: cross_hopfield_retrieval(x, x, value),
             lambda: memory_betas(x, x, value), lambda: hopfield_diagnostics(x, x, value)]
    if value is None:
        calls = calls[:1] + calls[2:3] + calls[4:]  # None means "off" for beta_from_spread
    for call in calls:
        with pytest.raises(ValueError, match="must be"):
            call()


@pytest.mark.parametrize("value", [0.0, -30.0, math.inf, math.nan])
def test_the_loss_refuses_a_bad_python_inverse_temperature(value):
    x = torch.nn.functional.normalize(torch.randn(4, 3, dtype=torch.float64), dim=-1)
    for call in (lambda: cloob_loss(x, x, value), lambda: info_loob(x, x, value), lambda: info_nce(x, x, value),
                 lambda: collapsed_loss(8, value)):
        with pytest.raises(ValueError, match="inv_tau must be"):
            call()


@pytest.mark.parametrize("keywords,message", [
    ({"world_size": 0}, "world_size must be at least 1, got 0"),
    ({"world_size": 2.0}, "world_size must be an integer, got 2.0"),
    ({"rank": -1}, "rank must be at least 0, got -1"),
    ({"rank": 4, "world_size": 4}, "rank must be below world_size 4, got 4"),
    ({"objective": "InfoLOOB"}, "objective must be one of infoloob, infonce; got 'InfoLOOB'"),
])
def test_the_loss_constructor_refuses_a_bad_data_parallel_setting(keywords, message):
    with pytest.raises(ValueError, match=message):
        CloobLoss(**keywords)


def test_the_checks_return_the_value_and_name_the_setting():
    assert settings.check_positive("hopfield_beta", 8) == 8.0
    assert settings.check_optional_positive("beta_from_spread", None) is None
    assert settings.check_inv_tau("init_inv_tau", 100) == 100.0
    assert settings.check_int_at_least("restart_cycles", 3, 1) == 3
    assert settings.check_objective("infonce") == "infonce"
    for call, message in [(lambda: settings.check_inv_tau("init_inv_tau", 101), "init_inv_tau must lie in [1, 100]"),
                          (lambda: settings.check_int_at_least("batch_size", 1, 2), "batch_size must be at least 2"),
                          (lambda: settings.check_int_at_least("batch_size", 2.0, 2), "batch_size must be an integer"),
                          (lambda: settings.check_objective("nce"), "objective must be one of infoloob, infonce")]:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            call()
