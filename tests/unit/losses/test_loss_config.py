import dataclasses

import pytest

from nemo_craft.losses import PRESETS, LossConfig


def test_presets_encode_the_spec_methods():
    sdar = LossConfig.preset("sdar")
    assert (sdar.clip_eps, sdar.dual_clip, sdar.entropy_coef, sdar.kl_coef, sdar.kl_clamp) == (
        0.2,
        3.0,
        0.001,
        0.01,
        10.0,
    )
    assert (sdar.gate_beta, sdar.sd_coef, sdar.distill) == (5.0, 0.01, "sdar")
    assert not (sdar.counterfactual or sdar.controller or sdar.polarized_kl)
    craft = LossConfig.preset("craft")
    assert craft.counterfactual and craft.controller and craft.polarized_kl
    assert (craft.cti_clip, craft.cti_tau, craft.cti_kappa, craft.align) == (5.0, 1.0, 1.0, "turn_position")
    assert (craft.ema_rho, craft.target_activity, craft.eta_up, craft.eta_down, craft.controller_bound) == (
        0.9,
        0.5,
        2.0,
        1.0,
        10.0,
    )
    assert LossConfig.preset("grpo").distill == "none" and LossConfig.preset("grpo").sd_coef == 0.0
    assert LossConfig.preset("grpo_opsd").gate_beta == 0.0
    rlsd = LossConfig.preset("rlsd")
    assert (rlsd.advantage_shaping, rlsd.rlsd_mix, rlsd.rlsd_eps, rlsd.distill) == ("rlsd", 0.5, 0.2, "none")
    assert LossConfig.preset("skill_sd").skill_sd_coef == 0.001
    cringe = LossConfig.preset("adaptive_cringe")
    assert cringe.distill == "cringe" and cringe.controller and cringe.cringe_k == 5
    assert not (cringe.counterfactual or cringe.polarized_kl)
    assert set(PRESETS) == {"craft", "grpo", "grpo_opsd", "sdar", "adaptive_cringe", "rlsd", "skill_sd"}


def test_every_field_is_documented():
    import inspect

    src = inspect.getsource(LossConfig)
    for f in dataclasses.fields(LossConfig):
        after = src.split(f"    {f.name}:", 1)[1].split("\n", 2)[1]
        assert after.strip().startswith('"""'), f"field {f.name} has no docstring"


def test_overrides_and_switches():
    cfg = LossConfig.preset("craft", counterfactual=False, align="turn_mean")
    assert not cfg.counterfactual and cfg.controller and cfg.align == "turn_mean"
    with pytest.raises(ValueError, match="unknown LossConfig field.*'lamda'"):
        LossConfig.preset("craft", lamda=1.0)


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match=r"unknown loss preset 'crafty'.*adaptive_cringe, craft, grpo"):
        LossConfig.preset("crafty")


@pytest.mark.parametrize(
    "field,value,allowed",
    [
        ("align", "token", "turn_position"),
        ("distill", "kl", "sdar"),
        ("advantage_shaping", "gae", "rlsd"),
        ("counterfactual", 1, "true or false"),
        ("chunk_size", 0, "integer >= 1"),
        ("cringe_k", 2.5, "integer >= 1"),
        ("clip_eps", 1.5, r"\(0.0, 1.0\)"),
        ("cti_tau", 0.0, r"\(0.0, inf\]"),
        ("ema_rho", 1.0, r"\[0.0, 1.0\)"),
        ("kl_coef", float("nan"), "finite"),
        ("controller_bound", 0.5, r"\[1.0, inf\]"),
    ],
)
def test_validation_names_the_value_and_what_is_allowed(field, value, allowed):
    with pytest.raises(ValueError, match=rf"loss\.{field}={value!r}.*{allowed}"):
        LossConfig(**{field: value})
