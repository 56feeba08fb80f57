"""training.main's command line and the hook functions, in process (no training loop)."""
import math

import pytest
import torch
from open_clip.loss import ClipLoss, SigLipLoss

from open_clip_cloob import CloobLoss, cloob_loss
from open_clip_cloob.settings import LOSS_VARIANTS
from training.openclip_hooks import add_learnable_beta, create_loss, create_model_and_transforms, validation_loss
from training.params import cloob_settings, parse_args

DATA = ["--train-data", "train.csv"]


def _parse(*flags: str):
    return parse_args([*DATA, *flags])


def test_cloob_models_default_to_the_papers_cloob_settings():
    args = _parse("--model", "RN50-cloob")
    assert cloob_settings(args) == {
        "loss": "cloob", "hopfield_beta": 8.0, "hopfield_beta_from_spread": None, "hopfield_warmin": 0,
        "learnable_hopfield_beta": None, "init_inv_tau": 30.0, "learnable_inv_tau": False, "restart_cycles": 1}
    assert args.hopfield_monitor is True
    assert args.lr_scheduler == "cosine" and args.batch_size == 64  # OpenCLIP's own flags still parse


@pytest.mark.parametrize("flag,value,message", [
    ("--hopfield-beta", "inf", "value must be a finite number, got inf"),
    ("--hopfield-beta", "nan", "value must be a finite number, got nan"),
    ("--hopfield-beta", "-2", "value must be > 0, got -2.0"),
    ("--hopfield-beta", "eight", "not a number: 'eight'"),
    ("--hopfield-beta-from-spread", "inf", "value must be a finite number, got inf"),
    ("--hopfield-beta-from-spread", "0", "value must be > 0, got 0.0"),
    ("--init-inv-tau", "inf", "value must be a finite number, got inf"),
    ("--init-inv-tau", "0.5", "value must lie in [1, 100] (OpenCLIP clamps the scale there), got 0.5"),
    ("--init-inv-tau", "200", "value must lie in [1, 100] (OpenCLIP clamps the scale there), got 200.0"),
    ("--restart-cycles", "0", "value must be at least 1, got 0"),
    ("--restart-cycles", "2.5", "not an integer: '2.5'"),
    ("--save-every-n-steps", "-1", "value must be at least 0, got -1"),
    ("--max-nonfinite-steps", "0", "value must be at least 1, got 0"),
    ("--max-bad-samples", "-5", "value must be at least 0, got -5"),
    ("--hopfield-warmin", "-1", "value must be at least 0, got -1"),
    ("--hopfield-warmin", "0.5", "not an integer: '0.5'"),
])
def test_every_numeric_flag_refuses_bad_values_naming_the_flag(flag, value, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--model", "RN50-cloob", "--lr-scheduler", "cosine-restarts", flag, value)
    assert exit_info.value.code == 2
    last_line = capsys.readouterr().err.splitlines()[-1]
    assert f"error: argument {flag}" in last_line and last_line.endswith(f": {message}")  # e.g. --hopfield-beta/--scale-hopfield


def test_other_models_keep_openclips_loss_and_learnable_temperature():
    args = _parse("--model", "RN50")
    assert (args.loss, args.init_inv_tau, args.learnable_inv_tau) == ("clip", None, True)


def test_explicit_flags_and_the_original_codes_alias():
    args = _parse("--model", "RN50", "--loss", "cloob", "--scale-hopfield", "14.3", "--init-inv-tau", "50",
                  "--learnable-inv-tau")
    assert (args.loss, args.hopfield_beta, args.init_inv_tau, args.learnable_inv_tau) == ("cloob", 14.3, 50.0, True)
    assert _parse("--model", "RN50-cloob", "--no-learnable-inv-tau").learnable_inv_tau is False


def test_cosine_restarts_runs_through_openclips_cosine_branch():
    args = _parse("--model", "RN50-cloob", "--lr-scheduler", "cosine-restarts", "--restart-cycles", "10")
    assert (args.lr_scheduler, args.restart_cycles) == ("cosine", 10)


@pytest.mark.parametrize("flags", [
    ("--model", "RN50-cloob", "--siglip"),
    ("--model", "coca_ViT-B-32", "--loss", "cloob"),
    ("--model", "RN50-cloob", "--distill-model", "RN50", "--distill-pretrained", "openai"),
    ("--model", "RN50-cloob", "--init-inv-tau", "200"),
    ("--model", "RN50-cloob", "--hopfield-beta", "0"),
    ("--model", "RN50-cloob", "--lr-scheduler", "const", "--restart-cycles", "3"),
    ("--model", "RN50-cloob", "--lr-scheduler", "cosine", "--restart-cycles", "3"),
    ("--model", "RN50-cloob", "--restart-cycles", "3"),  # OpenCLIP's default scheduler is cosine
    ("--model", "RN50-cloob", "--restart-cycles", "0"),
    ("--model", "RN50-cloob", "--loss", "nce"),
    ("--model", "RN50-cloob", "--no-such-openclip-flag"),
    ("--model", "RN50-cloob", "--hopfield", "3"),  # no abbreviations of CLOOB flags
    ("--model", "RN50-cloob", "--hopfield-beta-from-spread", "0"),
    ("--model", "RN50-cloob", "--loss", "infoloob", "--hopfield-beta-from-spread", "2"),  # no Hopfield step
    ("--model", "RN50", "--hopfield-beta-from-spread", "2"),
    ("--model", "RN50-cloob", "--learnable-hopfield-beta", "both"),
])
def test_contradictions_and_unknown_flags_are_errors(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse(*flags)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


@pytest.mark.parametrize("flags,message", [
    (("--loss", "infoloob", "--hopfield-warmin", "100"), "--hopfield-warmin needs a loss with a Hopfield step"),
    (("--loss", "clip", "--learnable-hopfield-beta", "shared"),
     "--learnable-hopfield-beta needs a loss with a Hopfield step"),
    (("--learnable-hopfield-beta", "shared", "--hopfield-beta-from-spread", "2"),
     "--learnable-hopfield-beta and --hopfield-beta-from-spread both set β"),
    (("--hopfield-warmin", "100", "--skip-scheduler"), "--hopfield-warmin needs the learning-rate schedule"),
])
def test_remedies_without_a_role_are_refused_with_the_reason(flags, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parse("--model", "RN50-cloob", *flags)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_remedy_flags_are_recorded_in_the_settings():
    args = _parse("--model", "RN50-cloob", "--hopfield-warmin", "600", "--learnable-hopfield-beta", "per-modality")
    assert (cloob_settings(args)["hopfield_warmin"], cloob_settings(args)["learnable_hopfield_beta"]) == (
        600, "per-modality")


@pytest.mark.parametrize("mode,names", [("shared", ["logit_scale_hopfield"]),
                                        ("per-modality", ["logit_scale_hopfield", "logit_scale_hopfield_text"])])
def test_learnable_beta_parameters_join_the_model_at_ln_beta(tiny_model_config, mode, names):
    model, _, _ = create_model_and_transforms(tiny_model_config.stem, init_inv_tau=30.0, learnable_inv_tau=False)
    parameters = add_learnable_beta(model, 8.0, mode)
    assert [name for name, _ in model.named_parameters() if name.startswith("logit_scale_hopfield")] == names
    assert all(p.ndim == 0 and p.requires_grad and p.item() == pytest.approx(math.log(8.0)) for p in parameters)
    assert [model.get_parameter(name) for name in names] == parameters
    assert all(key in model.state_dict() for key in names)  # saved and resumed with the weights


def test_help_lists_cloob_and_openclip_flags(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    out = capsys.readouterr().out
    assert "--hopfield-beta" in out and "--restart-cycles" in out and "--train-data" in out


def _with_world(args, rank=0, world_size=1):
    args.rank, args.world_size, args.distill = rank, world_size, False
    return args


def test_create_loss_is_cloob_for_cloob_and_openclips_choice_otherwise():
    loss = create_loss(_with_world(_parse("--model", "RN50-cloob", "--hopfield-beta", "15", "--local-loss",
                                          "--gather-with-grad"), rank=1, world_size=4))
    assert isinstance(loss, CloobLoss)
    assert (loss.hopfield_beta, loss.local_loss, loss.gather_with_grad, loss.rank, loss.world_size) == (
        15.0, True, True, 1, 4)
    assert type(create_loss(_with_world(_parse("--model", "RN50-cloob", "--loss", "clip")))) is ClipLoss
    for name, kwargs in LOSS_VARIANTS.items():  # the ablations of the paper's grid, CLOOB's scale
        variant = create_loss(_with_world(_parse("--model", "RN50", "--loss", name)))
        assert (variant.objective, variant.hopfield, variant.beta_from_spread) == (
            kwargs["objective"], kwargs["hopfield"], None)
    remedy = create_loss(_with_world(_parse("--model", "RN50-cloob", "--hopfield-beta-from-spread", "2")))
    assert remedy.beta_from_spread == 2.0
    assert type(create_loss(_with_world(_parse("--model", "RN50", "--siglip")))) is SigLipLoss


@pytest.mark.parametrize("learnable", [False, True])
def test_model_factory_hook_sets_and_freezes_the_temperature(tiny_model_config, learnable):
    model, _, _ = create_model_and_transforms(
        tiny_model_config.stem, init_inv_tau=50.0, learnable_inv_tau=learnable, output_dict=True)
    assert model.logit_scale.item() == pytest.approx(math.log(50.0))
    assert model.logit_scale.requires_grad is learnable


def test_model_factory_hook_keeps_the_config_temperature_without_init(tiny_model_config):
    model, _, _ = create_model_and_transforms(tiny_model_config.stem, init_inv_tau=None, learnable_inv_tau=True)
    assert model.logit_scale.item() == pytest.approx(math.log(30.0))  # the config's init_logit_scale


def test_validation_loss_averages_the_loss_of_each_validation_batch():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(10, 8), dim=-1)
    texts = torch.nn.functional.normalize(images + 0.5 * torch.randn(10, 8), dim=-1)
    inv_tau = torch.tensor(30.0)
    loss = CloobLoss(hopfield_beta=8.0)
    # Batches of 4: [0:4], [4:8], [8:10].
    expected = (4 * cloob_loss(images[:4], texts[:4], inv_tau, 8.0) + 4 * cloob_loss(images[4:8], texts[4:8], inv_tau, 8.0)
                + 2 * cloob_loss(images[8:], texts[8:], inv_tau, 8.0)) / 10
    assert validation_loss(loss, images, texts, inv_tau, batch_size=4) == pytest.approx(expected.item(), rel=1e-6)
    # A trailing single row has no negative and is left out.
    assert validation_loss(loss, images[:9], texts[:9], inv_tau, batch_size=4) == pytest.approx(
        validation_loss(loss, images[:8], texts[:8], inv_tau, batch_size=4), rel=1e-6)
